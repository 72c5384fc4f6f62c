"""No mocks: a real `mlflow server` (SQLite backend) and a real `prefect server` on loopback,
the nightly-score deployment from prefect.yaml, a process worker on the `cpu` pool, one
triggered run; then the report on disk and the panel-score run in the MLflow server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest

from pipeline.synth import generate
from tests.conftest import small_config

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.servers, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, process: subprocess.Popen, log: Path, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: server exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not come up in {seconds}s:\n{log.read_text()[-3000:]}")


@contextmanager
def _server(command: list[str], health: str, log: Path, env: dict) -> Iterator[None]:
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        _wait_for(health, process, log)
        yield
    finally:
        os.killpg(process.pid, 15)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)


def _run(command: list[str], env: dict, timeout: float = 300) -> str:
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_nightly_deployment_on_real_mlflow_and_prefect_servers(synth_raw: Path, tmp_path: Path, monkeypatch):
    mlflow_port, prefect_port = _free_port(), _free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}",
           "PREFECT_API_URL": f"http://127.0.0.1:{prefect_port}/api", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}", "PANELSCAN_HOME": str(ROOT)}
    mlflow_cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
                  "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                  "--artifacts-destination", str(tmp_path / "mlflow-artifacts"), "--workers", "1"]
    prefect_cmd = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)]
    with _server(mlflow_cmd, f"http://127.0.0.1:{mlflow_port}/health", tmp_path / "mlflow.log", env), \
            _server(prefect_cmd, f"http://127.0.0.1:{prefect_port}/api/health", tmp_path / "prefect.log", env):
        for key in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PREFECT_HOME"):
            monkeypatch.setenv(key, env[key])
        # a champion, trained and calibrated against the MLflow server
        from pipeline.ingest import ingest
        from pipeline.stages import calibrate_stage, train_stage

        cfg = small_config(epochs=1)
        work = tmp_path / "work"
        ingest(synth_raw, work, synth_raw / "labels.csv", cfg.ingest)
        train_stage(work, cfg, progress=False)
        assert calibrate_stage(work, cfg).promoted_to == "champion"

        inbox = tmp_path / "inbox"
        generate(inbox / "2026-06-01", n=12, seed=8)
        prefect = str(BIN / "prefect")
        _run([prefect, "work-pool", "create", "cpu", "--type", "process"], env)
        _run([prefect, "--no-prompt", "deploy", "--name", "nightly-score"], env)
        _run([prefect, "deployment", "run", "nightly-score/nightly-score", "--param", f"inbox={inbox}",
              "--param", f"workdir={work}", "--param", "day=2026-06-01"], env)
        _run([prefect, "worker", "start", "--pool", "cpu", "--run-once"], env, timeout=600)

        day_dir = work / "reports" / "2026-06-01"
        report = pd.read_csv(day_dir / "scores.csv", keep_default_na=False)
        assert len(report) == 12 and report["image_path"].is_unique and (day_dir / "index.html").exists()
        import mlflow

        runs = mlflow.search_runs(experiment_names=["panel-score"])
        assert len(runs) == 1 and runs["metrics.n_report"].iloc[0] == 12
        assert runs["params.report_date"].iloc[0] == "2026-06-01"
        artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(runs["run_id"].iloc[0], "report")}
        assert {"report/scores.csv", "report/flagged.csv", "report/index.html"} <= artifacts
        runs_table = _run([prefect, "flow-run", "ls", "--flow-name", "nightly-score"], {**env, "COLUMNS": "250"})
        assert "COMPLETED" in runs_table and "FAILED" not in runs_table
