"""Shared fixtures: small synthetic data sets and throwaway Prefect / MLflow stores."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from pipeline.config import PanelConfig
from pipeline.synth import generate

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # pytest -n N: the cores shared out, not each worker taking all
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture(scope="session", autouse=True)
def prefect_server():
    """One temporary Prefect server (own SQLite database) for the whole test session: flows run in
    tests and `panelscan` processes that tests start (PREFECT_API_URL) report to it, instead of each
    process starting and migrating a temporary server of its own (10-15 s each)."""
    import prefect.settings
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=300):
        before = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = prefect.settings.PREFECT_API_URL.value()
        yield
        if before is None:
            os.environ.pop("PREFECT_API_URL")
        else:
            os.environ["PREFECT_API_URL"] = before


@pytest.fixture(autouse=True)
def isolated_stores(tmp_path, monkeypatch):
    """Never write into the user's ~/.prefect or the repo's mlruns/."""
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / ".prefect"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def synth_raw(tmp_path_factory) -> Path:
    """120 synthetic frames with labels.csv and panels.csv (read-only for tests)."""
    out = tmp_path_factory.mktemp("raw")
    generate(out, n=120, seed=11)
    return out


@pytest.fixture(scope="session")
def two_family_raw(synth_raw: Path, tmp_path_factory) -> Path:
    """The synthetic frames as family `plain` and the same frames inverted as family `negative`,
    named in the labels file's `family` column (read-only for tests)."""
    import pandas as pd
    from PIL import Image, ImageOps

    out = tmp_path_factory.mktemp("two_family_raw")
    rows = []
    for row in pd.read_csv(synth_raw / "labels.csv", dtype=str, keep_default_na=False).itertuples():
        image = Image.open(synth_raw / row.path).convert("L")
        for family, picture in (("plain", image), ("negative", ImageOps.invert(image))):
            picture.save(out / f"{family}_{row.path}")
            rows.append(dict(path=f"{family}_{row.path}", label=row.label, panel_id=f"{family}-{row.panel_id}",
                             family=family))
    pd.DataFrame(rows).to_csv(out / "labels.csv", index=False)
    return out


def tree_digest(root: Path) -> dict[str, str]:
    """Path -> sha256 of every file under root (to prove a folder is byte-identical)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


def small_config(**train) -> PanelConfig:
    """Fast settings for tests: 64 px crops, a few epochs."""
    # a defect head as by default, but a few narrow steps (tests/test_defect_head.py trains a real one)
    cfg = PanelConfig().replace("ingest", image_size=64).replace("model", latent_dim=16, channels=(16, 32, 32),
                                                                  head_steps=3, head_width=4)
    # one member (train.members): half the training time; tests/test_ensemble.py trains two
    return cfg.replace("train", **({"epochs": 3, "batch_size": 32, "members": 1} | train))


@pytest.fixture()
def champion(synth_raw: Path, tmp_path: Path):
    """A calibrated champion (1 epoch, 64 px) in a temp workdir and store; scoring one image per batch."""
    from pipeline.ingest import ingest
    from pipeline.stages import calibrate_stage, train_stage

    cfg = small_config(epochs=1).replace("score", batch_images=1)
    work = tmp_path / "work"
    ingest(synth_raw, work, synth_raw / "labels.csv", cfg.ingest)
    train_stage(work, cfg, progress=False)
    calibrate_stage(work, cfg)
    return work, cfg


@pytest.fixture()
def small_patchcore(monkeypatch):
    """PatchCore at a test's scale: 128 px backbone input, a 256-row coreset from 4,000 patches
    (what the tests check holds at that scale; `panelscan bench` runs the full size)."""
    from pipeline import baselines

    monkeypatch.setattr(baselines, "PATCHCORE_SIDE", 128)
    monkeypatch.setattr(baselines, "PATCH_BANK_ROWS", 256)
    monkeypatch.setattr(baselines, "CORESET_POOL", 4000)
