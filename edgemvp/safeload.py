"""Bounded reading of the text, JSON and YAML files edgemvp is given: one clear error line, bounded work.

Every YAML the tool reads (device profiles, class hierarchies) goes through :func:`load_yaml`: PyYAML's safe
loader (no Python objects), with the document's size, nesting depth and *expanded* size bounded while it is
composed. An alias bomb ("billion laughs": anchors whose aliases multiply) stays a small graph in PyYAML but
is exponential for anything that walks it, so the size that counts is the one with every alias expanded;
recursive aliases are refused. JSON files are read with the same size bound and their nesting depth bounded.
A file that is not UTF-8 is one line, as is a device, a FIFO or a symbolic link (:func:`edgemvp.paths.read_regular`).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from edgemvp.errors import UsageError
from edgemvp.paths import read_regular

MAX_TEXT_BYTES = 16 << 20
MAX_DEPTH = 128
MAX_EXPANDED_NODES = 1_000_000


def read_text(path: str | os.PathLike[str], source: str | None = None, limit: int = MAX_TEXT_BYTES) -> str:
    """A UTF-8 text file of at most ``limit`` bytes.

    Raises:
        UsageError: Missing, unreadable, not a regular file, too large, or not UTF-8.
    """
    path = Path(path)
    source = source or str(path)
    try:
        raw = read_regular(path, limit)
    except UsageError as exc:
        raise UsageError(f"{source}: {exc}") from exc
    except OSError as exc:
        raise UsageError(f"{source}: cannot read it ({exc.strerror or exc})") from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{source}: not UTF-8 text (byte {exc.start})") from exc


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of parsed JSON, without recursion (refused past ``limit``)."""
    stack, deepest = [(value, 1)], 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            break
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return deepest


def loads_json(text: str | bytes, source: str, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON, refusing ``NaN``/``Infinity`` literals, nesting deeper than ``max_depth`` and garbage.

    Raises:
        UsageError: One line naming ``source``.
    """
    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    try:
        data = json.loads(text, parse_constant=constant)
    except RecursionError as exc:
        raise UsageError(f"{source}: JSON nested deeper than {max_depth} levels") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{source}: not valid JSON ({str(exc).splitlines()[0][:120]})") from exc
    if _depth(data, max_depth) > max_depth:
        raise UsageError(f"{source}: JSON nested deeper than {max_depth} levels")
    return data


def load_json(path: str | os.PathLike[str], source: str | None = None, limit: int = MAX_TEXT_BYTES) -> Any:
    """A JSON file, bounded (see :func:`read_text`, :func:`loads_json`)."""
    source = source or str(path)
    return loads_json(read_text(path, source, limit), source)


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the nesting depth bounded while nodes are composed."""

    max_depth = MAX_DEPTH

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._nesting = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:  # noqa: D102
        self._nesting += 1
        if self._nesting > self.max_depth:
            raise yaml.YAMLError(f"nested deeper than {self.max_depth} levels")
        try:
            return super().compose_node(parent, index)
        finally:
            self._nesting -= 1


def _expanded_size(root: Node, limit: int) -> int:
    """Nodes of the document with every alias expanded (shared nodes counted each time they are used).

    Raises:
        yaml.YAMLError: A recursive alias (a node inside itself).
    """
    sizes: dict[int, int] = {}
    stack: list[tuple[Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children = _children(node)
        if done:
            open_nodes.discard(key)
            sizes[key] = min(limit + 1, 1 + sum(sizes[id(c)] for c in children))
            continue
        if key in open_nodes:
            raise yaml.YAMLError("a recursive alias (a node that contains itself)")
        open_nodes.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in open_nodes:
                raise yaml.YAMLError("a recursive alias (a node that contains itself)")
            stack.append((child, False))
    return sizes[id(root)]


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def loads_yaml(text: str, source: str, max_nodes: int = MAX_EXPANDED_NODES) -> Any:
    """Parse one YAML document safely: bounded depth and expanded size, no recursive aliases, no objects.

    Raises:
        UsageError: One line naming ``source``.
    """
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, max_nodes) > max_nodes:
            raise yaml.YAMLError(f"expands to more than {max_nodes} nodes (aliases multiply it)")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UsageError(f"{source}: malformed YAML{where} ({str(reason)[:160]})") from exc
    except RecursionError as exc:
        raise UsageError(f"{source}: YAML nested too deeply") from exc
    finally:
        loader.dispose()


def load_yaml(path: str | os.PathLike[str], source: str | None = None, limit: int = MAX_TEXT_BYTES) -> Any:
    """A YAML file, bounded (see :func:`read_text`, :func:`loads_yaml`)."""
    source = source or str(path)
    return loads_yaml(read_text(path, source, limit), source)
