"""prefect.yaml: every deployment points at a real flow with parameters that flow accepts."""

from importlib import import_module
from pathlib import Path

import pytest
import yaml
from prefect import Flow

ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENTS = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_deployment_entrypoint_and_parameters_are_valid(deployment):
    path, _, name = deployment["entrypoint"].partition(":")
    flow = getattr(import_module(path.removesuffix(".py").replace("/", ".")), name)
    assert isinstance(flow, Flow)
    flow.validate_parameters(deployment.get("parameters", {}))  # raises on unknown or mistyped parameters


def test_training_runs_on_the_gpu_pool_and_everything_else_on_cpu():
    pools = {d["name"]: d["work_pool"]["name"] for d in DEPLOYMENTS}
    assert pools.pop("train") == "gpu" and set(pools.values()) == {"cpu"}
