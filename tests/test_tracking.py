"""MLflow reads that must not turn a failure into a plausible answer."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.config import TrackingConfig
from pipeline.errors import UserError


def _version_without_families() -> str:
    tracking.configure(TrackingConfig())
    with mlflow.start_run() as run:
        mlflow.log_dict({"x": 1}, "other.json")
    client = MlflowClient()
    client.create_registered_model("bare")
    return str(client.create_model_version("bare", f"runs:/{run.info.run_id}/model", run.info.run_id).version)


def test_a_version_without_families_json_is_one_clear_error_not_one_family():
    version = _version_without_families()
    with pytest.raises(UserError, match=r"bare version \d+ has no families.json"):
        tracking.load_families("bare", version)


def test_no_champion_yet_is_none_for_an_unknown_model_or_an_unset_alias():
    version = _version_without_families()
    assert tracking.current_version("bare", tracking.CHAMPION) is None
    assert tracking.current_version("never-registered", tracking.CHAMPION) is None
    tracking.set_alias("bare", version, tracking.CHAMPION, "test")
    assert tracking.current_version("bare", tracking.CHAMPION) == version
