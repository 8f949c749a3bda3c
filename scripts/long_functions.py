"""Functions longer than a limit (default 60 lines, decorators and docstring included) in the given trees.

    python scripts/long_functions.py edgemvp bench/paper.py     # exit 1 when any is found
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path


def long_functions(paths: list[Path], limit: int = 60) -> list[tuple[str, int, str, int]]:
    """(file, line, name, lines) of every function over ``limit`` lines."""
    found = []
    files = [f for p in paths for f in (sorted(p.rglob("*.py")) if p.is_dir() else [p])]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                length = node.end_lineno - start + 1
                if length > limit:
                    found.append((str(path), start, node.name, length))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--limit", type=int, default=60)
    args = parser.parse_args()
    found = long_functions(args.paths, args.limit)
    for path, line, name, length in sorted(found, key=lambda f: -f[3]):
        print(f"{path}:{line}: {name} ({length} lines)")
    print(f"{len(found)} functions over {args.limit} lines")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
