"""The layout's rules (docs/design.md, "Layout"): no import cycle, function-level imports of edgemvp's own
modules only to avoid a heavy optional dependency, no function over 60 lines, nothing pointing outside the
repository. Read from the source with ``ast`` (nothing is imported), by the scripts a developer runs too."""
from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = ("FastAPI", "uvicorn", "Ray")  # the heavy optional dependencies a function-level import may avoid


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


graph_script = _script("import_graph")


def _graph() -> tuple[dict[str, set[str]], list[tuple[Path, str, int]]]:
    files = sorted((ROOT / "edgemvp").rglob("*.py"))
    modules = {graph_script.module_name(p) for p in files}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    local = []
    for path in files:
        for target, in_function, line in graph_script.imports(path, modules):
            graph[graph_script.module_name(path)].add(target)
            if in_function:
                local.append((path, target, line))
    return graph, local


def test_cycle_finder_finds_a_cycle_and_a_package_edge() -> None:
    assert graph_script.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert graph_script.cycles({"p": {"p.x"}, "p.x": {"p"}}) == [["p", "p.x"]]  # __init__ <-> its submodule
    assert graph_script.cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_counting_function_level_imports() -> None:
    graph, _ = _graph()
    assert graph_script.cycles(graph) == []


def test_the_method_imports_nothing_from_the_zoo() -> None:
    graph, _ = _graph()
    edges = [(m, t) for m, ts in graph.items() if m.startswith("edgemvp.mvp") or m == "edgemvp.manifest"
             for t in ts if t.startswith("edgemvp.zoo")]
    assert edges == []


def test_function_level_imports_only_avoid_optional_dependencies() -> None:
    _, local = _graph()
    bad = []
    for path, target, line in local:
        lines = path.read_text().splitlines()
        said = lines[line - 1] + (lines[line - 2] if line >= 2 else "")
        if not any(name in said for name in OPTIONAL):
            bad.append(f"{path.relative_to(ROOT)}:{line}: {target}")
    assert bad == [], "function-level imports without a reason: " + ", ".join(bad)


def test_no_function_over_60_lines() -> None:
    found = _script("long_functions").long_functions([ROOT / "edgemvp", ROOT / "bench" / "paper.py"], 60)
    assert found == [], [f"{Path(p).relative_to(ROOT)}:{line} {name} ({n} lines)" for p, line, name, n in found]


def test_long_function_finder_counts_decorators_and_docstrings(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(58))
    (tmp_path / "m.py").write_text(f"@decorator\ndef f():\n    '''doc'''\n{body}\n")
    found = _script("long_functions").long_functions([tmp_path], 60)
    assert [(name, n) for _, _, name, n in found] == [("f", 61)]


def test_nothing_refers_outside_the_repository() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    bad = []
    for name in tracked:
        path = ROOT / name
        if path.suffix not in (".py", ".md", ".toml", ".sh", ".yaml", ".cfg", ".txt") and name != "Makefile":
            continue
        if path.is_symlink() or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if "../shared" in text or "DESIGN.md" in text or "STYLE.md" in text:
            bad.append(name)
    bad = [b for b in bad if b != "tests/test_layout.py"]
    assert bad == [], f"files that refer to files outside the repository: {bad}"
