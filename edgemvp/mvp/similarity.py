"""Task similarity: WordNet (or a user-given class hierarchy) Wu-Palmer, and LEEP.

**Wu-Palmer** (docs/design.md, decision 6): the similarity of tasks A and B is the symmetric average best match

    S(A, B) = 1/2 (mean_a max_b w(a, b) + mean_b max_a w(a, b))

of the Wu-Palmer similarity ``w`` of their classes. ``w`` comes from a class x class matrix computed once over
every class involved, so ranking a large zoo is a few array operations: the zoo's tasks are a ``(tasks,
classes)`` membership matrix. The same class of the same dataset is always 1.0. The taxonomy is WordNet
(through the class -> synset maps shipped per dataset) or a user-given tree (:class:`Hierarchy`) for classes
WordNet does not know (alphabet -> character, product line -> defect type).

**LEEP** (Nguyen et al., 2020; docs/design.md, decision 7): the log expected empirical prediction of a candidate
model's source outputs ``theta(x)`` for the target labels ``y`` on a seeded sample of the target's training
data, in float64 with log-sum-exp::

    P(y, z) = 1/n sum_i theta_z(x_i) [y_i = y];  P(y | z) = P(y, z) / P(z)
    LEEP = 1/n sum_i log sum_z P(y_i | z) theta_z(x_i)

A source class no sample gives any probability (an empty column, ``P(z) = 0``) contributes nothing.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from edgemvp.data.wordnet import synset_map, wup, wup_matrix
from edgemvp.errors import UsageError
from edgemvp.safeload import load_json, load_yaml

ClassKey = tuple[str, str]  # (dataset, class name)
MAX_TREE_DEPTH = 64
CHUNK_ELEMENTS = 1 << 22  # task_similarity's temporary arrays: about this many elements at a time (4 M)


class Hierarchy:
    """A user-given class taxonomy: a tree of named nodes, leaves (or inner nodes) are class names.

    File format (YAML or JSON), nested mappings and lists, e.g.::

        root:
          latin:
            - A
            - B
          greek: [alpha, beta]

    Wu-Palmer on it is ``2 depth(lcs) / (depth(a) + depth(b))`` with the root at depth 1 (WordNet's convention).
    """

    def __init__(self, parent: Mapping[str, str | None], source: str = "hierarchy") -> None:
        self.parent = dict(parent)
        self.source = source
        self._depth: dict[str, int] = {}
        for node in self.parent:
            self.depth(node)

    @classmethod
    def from_tree(cls, tree: Any, source: str = "hierarchy") -> "Hierarchy":
        """Build from nested mappings/lists (a node name maps to its children).

        Raises:
            UsageError: Not a tree, a name used twice, or a non-string name.
        """
        parent: dict[str, str | None] = {}

        def add(name: Any, up: str | None) -> str:
            if not isinstance(name, (str, int)) or isinstance(name, bool) or str(name) == "":
                raise UsageError(f"{source}: node names must be non-empty strings, got {name!r}")
            name = str(name)
            if name in parent:
                raise UsageError(f"{source}: node '{name}' appears twice (a hierarchy is a tree)")
            parent[name] = up
            return name

        def walk(node: Any, up: str | None, depth: int) -> None:
            if depth > MAX_TREE_DEPTH:  # a tree from a file or a request must not exhaust the stack
                raise UsageError(f"{source}: nested deeper than {MAX_TREE_DEPTH} levels")
            if isinstance(node, Mapping):
                for key, children in node.items():
                    walk(children, add(key, up), depth + 1)
            elif isinstance(node, (list, tuple)):
                for child in node:
                    walk(child, up, depth + 1)
            elif node is not None:
                add(node, up)

        if not isinstance(tree, (Mapping, list)) or not tree:
            raise UsageError(f"{source}: a class hierarchy must be a non-empty mapping or list")
        walk(tree, None, 0)
        return cls(parent, source)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "Hierarchy":
        """Read a ``.yaml``/``.yml``/``.json`` hierarchy file.

        Raises:
            UsageError: Missing file, unparsable or not a tree.
        """
        return cls.from_tree(cls.read_tree(path), str(path))

    @staticmethod
    def read_tree(path: str | os.PathLike[str]) -> Any:
        """The parsed content of a ``.yaml``/``.yml``/``.json`` hierarchy file (not yet checked to be a tree),
        read with bounds (size, nesting, alias expansion: :mod:`edgemvp.safeload`).

        Raises:
            UsageError: Missing, unreadable, not UTF-8, unparsable or too large a file.
        """
        source = f"class hierarchy {path}"
        return load_json(path, source) if Path(path).suffix == ".json" else load_yaml(path, source)

    def to_tree(self) -> dict[str, Any]:
        """The tree as nested mappings (a leaf maps to None): ``from_tree(h.to_tree())`` is the same hierarchy."""
        children: dict[str | None, list[str]] = {}
        for node, up in self.parent.items():
            children.setdefault(up, []).append(node)

        def subtree(node: str) -> dict[str, Any] | None:
            kids = children.get(node)
            return {k: subtree(k) for k in kids} if kids else None

        return {root: subtree(root) for root in children.get(None, [])}

    def depth(self, node: str) -> int:
        """Depth of a node (root = 1)."""
        if node not in self._depth:
            chain, cur = [], node
            while cur is not None and cur not in self._depth:
                chain.append(cur)
                cur = self.parent[cur]
            d = 0 if cur is None else self._depth[cur]
            for n in reversed(chain):
                d += 1
                self._depth[n] = d
        return self._depth[node]

    def ancestors(self, node: str) -> list[str]:
        """The node and its ancestors up to the root."""
        out: list[str] = []
        cur: str | None = node
        while cur is not None:
            out.append(cur)
            cur = self.parent[cur]
        return out

    def wup(self, a: str, b: str) -> float:
        """Wu-Palmer similarity of two nodes (0 when they share no root)."""
        if a == b:
            return 1.0
        up = set(self.ancestors(a))
        lcs = next((n for n in self.ancestors(b) if n in up), None)
        return 0.0 if lcs is None else 2.0 * self.depth(lcs) / (self.depth(a) + self.depth(b))

    def __contains__(self, node: object) -> bool:
        return node in self.parent


class Taxonomy:
    """Where classes sit for Wu-Palmer: WordNet synsets (shipped per-dataset maps), or a :class:`Hierarchy`.

    ``synsets`` places classes the shipped maps do not know (a task given with its WordNet synsets); it takes
    precedence over the maps and is ignored with a hierarchy.
    """

    def __init__(self, hierarchy: Hierarchy | None = None, cache: str | os.PathLike[str] | None = None,
                 synsets: Mapping[ClassKey, str] | None = None) -> None:
        self.hierarchy = hierarchy
        self.cache = cache
        self.synsets = dict(synsets or {})

    @property
    def name(self) -> str:
        return "wordnet" if self.hierarchy is None else f"hierarchy ({self.hierarchy.source})"

    def node(self, key: ClassKey) -> str | None:
        """The taxonomy node of a class, or None when the taxonomy does not know it."""
        dataset, cls = key
        if self.hierarchy is not None:
            return cls if cls in self.hierarchy else None
        return self.synsets.get(key) or synset_map(dataset).get(cls)

    def class_matrix(self, keys: Sequence[ClassKey]) -> np.ndarray:
        """Wu-Palmer of every pair of classes (float64, symmetric); unknown classes score 0 except with themselves.

        A pair of WordNet nodes ``a <= b`` (as strings) scores ``wup(a, b)``: the whole matrix is computed from
        the synsets' closures in array operations (:func:`edgemvp.data.wordnet.wup_matrix`).

        Raises:
            UsageError: A node that is not a WordNet 3.0 synset.
        """
        if self.hierarchy is not None:
            return self._pairwise(keys)
        nodes = [self.node(k) for k in keys]
        known = sorted({node for node in nodes if node is not None})
        pairs = wup_matrix(known, self.cache)  # pairs[p, q] = wup(known[p], known[q]); known[p] <= known[q] for p <= q
        where = {node: i for i, node in enumerate(known)}
        index = np.array([-1 if node is None else where[node] for node in nodes], dtype=np.int64)
        lo, hi = np.minimum.outer(index, index), np.maximum.outer(index, index)
        out = np.where(lo >= 0, pairs[np.maximum(lo, 0), hi] if len(known) else 0.0, 0.0)
        same = {k: i for i, k in enumerate(dict.fromkeys(keys))}
        ids = np.array([same[k] for k in keys], dtype=np.int64)
        out[ids[:, None] == ids[None, :]] = 1.0
        return out

    def _pairwise(self, keys: Sequence[ClassKey]) -> np.ndarray:
        """``class_matrix`` pair by pair (the user-hierarchy path)."""
        nodes = [self.node(k) for k in keys]
        n = len(keys)
        out = np.eye(n)
        cache: dict[tuple[str, str], float] = {}
        for i in range(n):
            for j in range(i + 1, n):
                a, b = nodes[i], nodes[j]
                if keys[i] == keys[j]:
                    v = 1.0
                elif a is None or b is None:
                    v = 0.0
                else:
                    pair = (a, b) if a <= b else (b, a)
                    if pair not in cache:
                        cache[pair] = self._wup(*pair)
                    v = cache[pair]
                out[i, j] = out[j, i] = v
        return out

    def _wup(self, a: str, b: str) -> float:
        if self.hierarchy is not None:
            return self.hierarchy.wup(a, b)
        return wup(a, b, self.cache)


@dataclass(frozen=True)
class Candidates:
    """Zoo tasks as arrays: the class vocabulary and a ``(tasks, classes)`` membership matrix."""

    keys: tuple[ClassKey, ...]
    member: np.ndarray  # (tasks, classes) bool

    @classmethod
    def from_tasks(cls, tasks: Sequence[tuple[str, Sequence[str]]], extra: Iterable[ClassKey] = ()
                   ) -> "Candidates":
        """From ``(dataset, classes)`` per task; ``extra`` classes join the vocabulary (the target's)."""
        index: dict[ClassKey, int] = {}
        for key in extra:
            index.setdefault(key, len(index))
        # many zoo tasks share a class set: parse each distinct one once
        distinct: dict[tuple[str, tuple[str, ...]], int] = {}
        which = np.empty(len(tasks), dtype=np.int64)
        for t, (dataset, classes) in enumerate(tasks):
            which[t] = distinct.setdefault((dataset, tuple(classes)), len(distinct))
        for dataset, classes in distinct:
            for c in classes:
                index.setdefault((dataset, c), len(index))
        rows = np.zeros((len(distinct), len(index)), dtype=bool)
        for r, (dataset, classes) in enumerate(distinct):
            rows[r, [index[(dataset, c)] for c in classes]] = True
        return cls(tuple(index), rows[which])


def task_similarity(target: Sequence[ClassKey], candidates: Candidates, matrix: np.ndarray) -> np.ndarray:
    """Symmetric average best-match similarity of the target to every candidate task (vectorised, in chunks).

    The same float64 values as the one-shot formula (``max`` over the candidate's classes and ``mean`` over the
    target's, in the same array layout; ``member @ best / classes``), with the candidate tasks taken in chunks
    of about :data:`CHUNK_ELEMENTS` elements of temporary arrays, so memory stays bounded whatever the zoo size.
    Each task's classes are gathered by index (a task has few) instead of masking the whole vocabulary. Chunks
    start at multiples of 64 tasks (4 when the budget is tight): OpenBLAS sums ``member @ best`` four rows at a
    time from the start of a call, so each row is summed as in one call over all tasks (except next to where
    OpenBLAS splits one call between threads, which depends on the thread count and is no property of the
    formula; there the last bit can differ).

    Args:
        target: The target's classes (each must be in ``candidates.keys``).
        candidates: Zoo tasks.
        matrix: Class x class similarity over ``candidates.keys``.

    Returns:
        ``(tasks,)`` float64 similarities in [0, 1].
    """
    pos = {k: i for i, k in enumerate(candidates.keys)}
    rows = matrix[[pos[k] for k in target]]  # (A, C)
    member = candidates.member
    tasks, vocabulary = member.shape
    n_target = rows.shape[0]
    # candidate -> target: each candidate class's best match among the target's classes
    best = rows.max(axis=0)  # (C,)
    sizes = member.sum(axis=1)
    out = np.empty(tasks, dtype=np.float64)
    if tasks == 0:
        return out
    widest = max(1, int(sizes.max()))  # classes of the largest task
    # the target's similarities by class, with a -inf class that pads the smaller tasks: (C + 1, A)
    by_class = np.ascontiguousarray(np.concatenate([rows, np.full((n_target, 1), -np.inf)], axis=1).T)
    span = max(1, CHUNK_ELEMENTS // widest)  # target classes at a time
    step = max(1, CHUNK_ELEMENTS // max(widest * min(span, n_target), vocabulary, 1))
    step = step // 64 * 64 if step >= 64 else max(4, step // 4 * 4)
    for start in range(0, tasks, step):
        part = member[start:start + step]
        n = len(part)
        # each task's classes, padded with the -inf class: (n, widest)
        task_of, cls = np.nonzero(part)
        first = np.concatenate([[0], np.cumsum(sizes[start:start + n])[:-1]])
        index = np.full((n, widest), vocabulary, dtype=np.int64)
        index[task_of, np.arange(len(cls)) - first[task_of]] = cls
        # target -> candidate: each target class's best match among the candidate's classes
        matched = np.empty((n, n_target), dtype=np.float64)
        for a in range(0, n_target, span):
            matched[:, a:a + span] = by_class[index, a:a + span].max(axis=1)
        ab = matched.mean(axis=1)
        ba = (part @ best) / sizes[start:start + n]
        out[start:start + n] = 0.5 * (ab + ba)
    return out


def wordnet_similarity(target: Sequence[ClassKey], tasks: Sequence[tuple[str, Sequence[str]]],
                       taxonomy: Taxonomy) -> np.ndarray:
    """Wu-Palmer task similarity of the target to each task.

    Raises:
        UsageError: Some target class has no taxonomy node (the caller falls back to LEEP).
    """
    missing = [c for c in target if taxonomy.node(c) is None]
    if missing:
        raise UsageError(f"class '{missing[0][1]}' of dataset '{missing[0][0]}' has no node in {taxonomy.name}")
    cands = Candidates.from_tasks(tasks, extra=target)
    return task_similarity(target, cands, taxonomy.class_matrix(cands.keys))


def leep(source_probs: np.ndarray, labels: np.ndarray, num_labels: int | None = None) -> float:
    """LEEP of source-model probabilities ``(n, Z)`` for target labels ``(n,)`` (float64, log-sum-exp)."""
    theta = np.asarray(source_probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    n, _ = theta.shape
    k = int(num_labels if num_labels is not None else y.max() + 1)
    joint = np.zeros((k, theta.shape[1]))
    np.add.at(joint, y, theta)
    joint /= n
    pz = joint.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_cond = np.where(pz > 0, np.log(joint) - np.log(np.where(pz > 0, pz, 1.0)), -np.inf)  # (k, Z)
        log_theta = np.log(theta)
    terms = log_cond[y] + log_theta  # (n, Z)
    top = terms.max(axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    lse = top[:, 0] + np.log(np.exp(terms - top).sum(axis=1))
    return float(lse.mean())


@torch.no_grad()
def model_probs(model: torch.nn.Module, x: torch.Tensor, batch: int = 256) -> np.ndarray:
    """Softmax outputs of a model in float64 (log-softmax computed in float64 from the logits)."""
    model.eval()
    device = next(model.parameters()).device
    out = [torch.log_softmax(model(x[i:i + batch].to(device)).double(), dim=1).exp().cpu()
           for i in range(0, len(x), batch)]
    return torch.cat(out).numpy()


def leep_similarity(models: Iterable[torch.nn.Module], x: torch.Tensor, y: np.ndarray, num_labels: int
                    ) -> np.ndarray:
    """LEEP of each candidate model on the same target sample ``(x, y)``."""
    return np.array([leep(model_probs(m, x), y, num_labels) for m in models], dtype=np.float64)

