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


def test_nightly_score_runs_at_two_in_the_sites_timezone_on_the_cpu_pool():
    nightly = next(d for d in DEPLOYMENTS if d["name"] == "nightly-score")
    assert nightly["work_pool"]["name"] == "cpu"
    assert nightly["schedules"] == [{"cron": "0 2 * * *", "timezone": "UTC"}]
    assert nightly["parameters"]["timezone"] == nightly["schedules"][0]["timezone"]


def test_serve_builds_the_sites_deployments_with_the_given_schedule():
    from flows.prefect_flows import site_deployments

    nightly, calibrate, train = site_deployments("inbox", "work", "Europe/Berlin", "30 1 * * *")
    assert [d.name for d in (nightly, calibrate, train)] == ["nightly-score", "calibrate", "train"]
    schedule = nightly.schedules[0].schedule
    assert (schedule.cron, schedule.timezone) == ("30 1 * * *", "Europe/Berlin")
    assert nightly.parameters["inbox"] == "inbox" and nightly.parameters["timezone"] == "Europe/Berlin"
    assert not calibrate.schedules and not train.schedules
