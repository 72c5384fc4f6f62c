"""The layering the design promises: pipeline/ is a library that never imports Prefect, and only
pipeline/tracking.py talks to MLflow (so training, models and scoring run where neither is installed)."""

from __future__ import annotations

import ast
from pathlib import Path

PIPELINE = Path(__file__).resolve().parents[1] / "pipeline"


def imported_packages(path: Path) -> set[str]:
    """Top-level packages a source file imports anywhere (module level or inside functions)."""
    packages = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            packages |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            packages.add(node.module.split(".")[0])
    return packages


def test_imported_packages_sees_imports_inside_functions(tmp_path: Path):
    source = tmp_path / "m.py"
    source.write_text("import os\n\ndef f():\n    from mlflow.tracking import MlflowClient\n    import prefect.flows\n")
    assert imported_packages(source) == {"os", "mlflow", "prefect"}


def test_pipeline_never_imports_prefect_and_only_tracking_imports_mlflow():
    files = sorted(PIPELINE.rglob("*.py"))
    assert len(files) > 20
    offenders = {p.relative_to(PIPELINE).as_posix(): sorted(imported_packages(p) & {"prefect", "mlflow"})
                 for p in files}
    offenders = {name: packages for name, packages in offenders.items() if packages}
    assert offenders == {"tracking.py": ["mlflow"]}


ROOT = PIPELINE.parent
SOURCES = sorted([*PIPELINE.rglob("*.py"), *(ROOT / "flows").rglob("*.py")])


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The project modules a file imports anywhere (inside functions and TYPE_CHECKING blocks too:
    a cycle hidden there is still a cycle); `from package import module` counts the module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return {name for name in found if name in known}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every cycle reachable in a module graph (depth-first; each reported once, from its smallest name)."""
    cycles, done = set(), set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in graph.get(node, ()):
            if nxt in path:
                loop = path[path.index(nxt):]
                start = loop.index(min(loop))
                cycles.add(tuple(loop[start:] + loop[:start]))
            elif nxt not in done:
                visit(nxt, [*path, nxt])
        done.add(node)

    for node in sorted(graph):
        if node not in done:
            visit(node, [node])
    return sorted(map(list, cycles))


def test_import_cycles_finds_a_cycle_hidden_in_a_function():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_project_modules():
    known = {module_name(p) for p in SOURCES}
    graph = {module_name(p): imported_modules(p, known) - {module_name(p)} for p in SOURCES}
    # a package's __init__ re-exports its modules; importing it is importing them
    graph = {name: {m for m in deps if not name.startswith(m + ".")} for name, deps in graph.items()}
    assert import_cycles(graph) == []


def test_no_two_modules_share_a_name_and_none_is_over_300_lines():
    stems = [p.stem for p in SOURCES if p.stem != "__init__"]
    assert sorted({s for s in stems if stems.count(s) > 1}) == []
    long = {p.relative_to(ROOT).as_posix(): n for p in SOURCES if (n := len(p.read_text().splitlines())) > 300}
    assert long == {}
