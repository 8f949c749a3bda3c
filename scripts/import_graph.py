"""edgemvp's own import graph, module-level and function-level imports alike, and its cycles.

    python scripts/import_graph.py            # cycles (strongly connected groups) and counts
    python scripts/import_graph.py --local    # also list every function-level import of an edgemvp module

Reads the source with ``ast`` (nothing is imported). An import inside a function counts as an edge too:
it hides a cycle from Python's import machinery, not from the design. ``TYPE_CHECKING`` blocks are left out
(they never run). Exit code 1 when there is a cycle.
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "edgemvp"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(path: Path, modules: set[str]) -> list[tuple[str, bool, int]]:
    """(imported edgemvp module, inside a function, line) for every import in a file."""
    name = module_name(path)
    is_package = path.name == "__init__.py"
    found: list[tuple[str, bool, int]] = []

    def resolve(target: str) -> str | None:
        while target and target not in modules:  # `from edgemvp.zoo import ZooStore` -> edgemvp.zoo
            target = target.rpartition(".")[0]
        return target or None

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other, in_function)
                continue
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == PACKAGE and (target := resolve(alias.name)):
                        found.append((target, in_function, child.lineno))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = name if is_package else name.rpartition(".")[0]
                    for _ in range(child.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    base = f"{anchor}.{base}" if base else anchor
                if base.split(".")[0] != PACKAGE:
                    continue
                for alias in child.names:  # `from edgemvp.zoo import store` names a module
                    target = resolve(f"{base}.{alias.name}") or resolve(base)
                    if target:
                        found.append((target, in_function, child.lineno))
            visit(child, inner)

    visit(ast.parse(path.read_text(), str(path)), False)
    return [(t, f, line) for t, f, line in found if t != name]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    groups: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            connect(v)
    return groups


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--local", action="store_true", help="list function-level imports of edgemvp modules")
    args = parser.parse_args()
    files = sorted((ROOT / PACKAGE).rglob("*.py"))
    modules = {module_name(p) for p in files}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    local = []
    for path in files:
        for target, in_function, line in imports(path, modules):
            graph[module_name(path)].add(target)
            if in_function:
                local.append(f"{path.relative_to(ROOT)}:{line}: {target}")
    # a package's __init__ that imports a submodule which imports the package back is a cycle too
    groups = cycles(graph)
    print(f"{len(modules)} modules, {sum(map(len, graph.values()))} edges, {len(local)} function-level imports "
          f"of edgemvp modules, {len(groups)} cycles")
    for group in groups:
        print("cycle:", " <-> ".join(group))
    if args.local:
        print("\n".join(local))
    return 1 if groups else 0


if __name__ == "__main__":
    raise SystemExit(main())
