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
