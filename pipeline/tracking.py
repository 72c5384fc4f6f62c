"""The one place that talks to MLflow: stores, runs, the model registry and aliases.

Embedded default: SQLite at sqlite:///mlruns/mlflow.db with artifacts under mlruns/artifacts;
MLFLOW_TRACKING_URI, when set, points everything at another store (a shared mlflow server).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from matplotlib.figure import Figure
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import Schema, TensorSpec
from torch import nn

from pipeline.calibration import Calibration
from pipeline.config import PanelConfig, TrackingConfig
from pipeline.drift import DriftCheck
from pipeline.errors import UserError
from pipeline.families import FamilyClassifier
from pipeline.models import AsTuple, LatentReport, ModelOutput, conv_channels, exported
from pipeline.plots import latent_figure, precision_in_use_figure
from pipeline.promotion import CHALLENGER, CHAMPION

__all__ = ["CHALLENGER", "CHAMPION"]  # the aliases, re-exported for callers of set_alias / resolve_version
CONFIG_ARTIFACT, CALIBRATION_ARTIFACT, FAMILIES_ARTIFACT = "config.json", "calibration.json", "families.json"


def configure(cfg: TrackingConfig) -> str:
    """Point MLflow at the tracking store; creates the embedded SQLite folder when needed."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def experiment_id(name: str, cfg: TrackingConfig) -> str:
    """Get or create an experiment; with a local store its artifacts live under artifact_root."""
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if mlflow.get_tracking_uri().startswith("sqlite:"):
        location = (Path(cfg.artifact_root).resolve() / name).as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except MlflowException:  # created concurrently
        return mlflow.get_experiment_by_name(name).experiment_id


def train_params(cfg: PanelConfig, data_hash: str, n_train: int, n_val: int) -> dict[str, Any]:
    """Every model and training setting (β, schedule, free bits, codebook, ...) plus the data identity."""
    model = {**cfg.to_dict()["model"], "channels": ",".join(map(str, conv_channels(cfg.model)))}
    return {**model, **cfg.to_dict()["train"], "image_size": cfg.ingest.image_size, "crop": cfg.ingest.crop,
            "dataset_hash": data_hash, "n_train": n_train, "n_val": n_val}


@contextmanager
def train_run(cfg: PanelConfig, data_hash: str, n_train: int, n_val: int, run_id: str | None = None) -> Iterator[str]:
    """The training run, with every setting as params and the model_type tag; run_id continues a
    resumed run. Yields the run id; everything logged inside lands in this run."""
    configure(cfg.tracking)
    experiment = experiment_id(cfg.tracking.train_experiment, cfg.tracking)
    with mlflow.start_run(experiment_id=experiment, run_id=run_id) as run:
        mlflow.log_params(train_params(cfg, data_hash, n_train, n_val))
        mlflow.set_tag("model_type", cfg.model.model_type)
        yield run.info.run_id


def log_training(best_epoch: int, seconds: float, device: str, stopped_early: bool, resumed_from: int) -> None:
    """How the training went, in the active training run."""
    mlflow.log_metrics({"best_epoch": best_epoch, "train_seconds": seconds})
    mlflow.set_tags({"device": device, "stopped_early": str(stopped_early).lower(), "resumed_from_epoch": str(resumed_from)})


def log_score_run(cfg: TrackingConfig, report_date: str, model_version: str, counts: dict[str, float],
                  drift: DriftCheck, report_files: list[Path]) -> None:
    """One panel-score run per scoring run: the version, the counts, the drift check, the report."""
    experiment = experiment_id(cfg.score_experiment, cfg)
    with mlflow.start_run(experiment_id=experiment, run_name=f"score-{report_date}"):
        mlflow.log_params({"model_name": cfg.model_name, "model_version": model_version, "report_date": report_date})
        mlflow.log_metrics(counts)
        mlflow.log_metrics({f"drift_{k}": v for k, v in (("psi", drift.psi), ("ks", drift.ks)) if np.isfinite(v)})
        mlflow.set_tags({"drift": str(drift.drifted).lower(), "drift_message": drift.message[:5000]})
        for path in report_files:
            mlflow.log_artifact(str(path), "report")


def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
    mlflow.log_metrics(metrics, step=epoch)


def epoch_logger(family: str = "") -> Callable[[int, dict[str, float]], None]:
    """Per-epoch metrics; a family model's under <family>/ (mono/train/loss, ...)."""
    prefix = f"{family}/" if family else ""
    return lambda epoch, metrics: log_epoch(epoch, {prefix + k: v for k, v in metrics.items()})


def log_latent_report(report: LatentReport, family: str = "") -> None:
    """KL per latent dimension (VAE) or codebook usage (VQ) as a table and a plot; the collapse
    alarm as a tag with its warning. A family model's under latent/<family>/."""
    where = f"latent/{family}/" if family else "latent/"
    mlflow.log_text(report.table.to_csv(index=False), f"{where}{report.kind}.csv")
    mlflow.log_figure(latent_figure(report), f"{where}{report.kind}.png")
    mlflow.log_metrics({f"{where}{k}": v for k, v in report.summary.items()})
    suffix = f".{family}" if family else ""
    mlflow.set_tag(f"collapse{suffix}", str(report.collapsed).lower())
    if report.collapsed:
        mlflow.set_tag(f"collapse.warning{suffix}", report.warning)


def log_families(classifier: FamilyClassifier | None) -> None:
    """families.json (which family each model index is, and how well images are routed) in the
    training run: calibration and the report name families by it."""
    names = list(classifier.names) if classifier else []
    accuracy = classifier.accuracy if classifier else float("nan")
    mlflow.log_dict({"families": names, "router_val_accuracy": accuracy}, FAMILIES_ARTIFACT)
    if classifier:
        mlflow.log_metric("families/router_val_accuracy", accuracy)
        mlflow.set_tag("families", ",".join(names))


def load_families(model_name: str, version: str) -> list[str]:
    """Family name per model index ([] for one shared model). Every trained version logs
    families.json; one without it is not calibrated as if it had one family (its router would be
    ignored): that is one line. An MLflow or disk failure is raised as it is, so a retry can help."""
    run_id = version_run_id(model_name, version)
    if FAMILIES_ARTIFACT not in {a.path for a in MlflowClient().list_artifacts(run_id)}:
        raise UserError(f"{model_name} version {version} has no {FAMILIES_ARTIFACT}: it was not registered by "
                        "`panelscan train`; retrain it")
    return list(load_run_json(run_id, FAMILIES_ARTIFACT)["families"])


def _signature(model: nn.Module, example: torch.Tensor) -> ModelSignature:
    """Input and named outputs (ModelOutput's fields) with their dtypes; -1 for the batch."""
    def spec(t: torch.Tensor, name: str | None = None) -> TensorSpec:
        return TensorSpec(t.detach().numpy().dtype, (-1, *t.shape[1:]), name)

    with torch.inference_mode():
        outputs = ModelOutput.of(model(example))
    return ModelSignature(inputs=Schema([spec(example)]),
                          outputs=Schema([spec(t, name) for name, t in zip(ModelOutput._fields, outputs)
                                          if t is not None]))


def log_model(model: nn.Module, example: torch.Tensor, cfg: PanelConfig) -> str:
    """Log the model (pickle-free pt2 export of its outputs as a plain tuple, + signature) and the
    config it was trained with; register it as a new version. Returns the version."""
    mlflow.log_dict(cfg.to_dict(), CONFIG_ARTIFACT)
    model = model.eval()
    info = mlflow.pytorch.log_model(AsTuple(model), name="model", signature=_signature(model, example),
                                    input_example=example.numpy().astype(np.float32), serialization_format="pt2",
                                    registered_model_name=cfg.tracking.model_name,
                                    pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                                    # the serving check assumes one output tensor; ours returns four
                                    validate_serving_input=False)
    version = str(info.registered_model_version)
    MlflowClient().set_model_version_tag(cfg.tracking.model_name, version, "model_type", cfg.model.model_type)
    return version


def version_run_id(model_name: str, version: str) -> str:
    return MlflowClient().get_model_version(model_name, version).run_id


def resolve_version(model_name: str, ref: str) -> str:
    """A version number from '7', 'champion' or 'models:/name@alias' / 'models:/name/7'."""
    client = MlflowClient()
    ref = ref.removeprefix(f"models:/{model_name}").lstrip("/@") or CHAMPION
    if ref.isdigit():
        return ref
    try:
        return str(client.get_model_version_by_alias(model_name, ref).version)
    except MlflowException as exc:
        raise UserError(f"registered model {model_name!r} has no version with alias {ref!r}: "
                          "run `panelscan pipeline` (or train + calibrate) first") from exc


def load_model(model_name: str, version: str, device: torch.device | None = None, head: bool = True) -> nn.Module:
    """A registered version, ready to run on device (default CPU). MLflow loads it (and checks that
    the pt2 archive is pickle-free); for a GPU the same archive is loaded again with its graph
    moved there (pipeline/models/exported.py). head=False drops a defect head's map and its work."""
    uri = f"models:/{model_name}/{version}"
    model = mlflow.pytorch.load_model(uri)
    if device is not None and device.type != "cpu":
        model = exported.load(Path(mlflow.artifacts.download_artifacts(f"{uri}/data/model.pt2")), device)
    if not head:
        model = exported.without_head(model)
    return model.to(memory_format=torch.channels_last)  # the layout oneDNN and cuDNN convolve fastest (CPU: 1.45x)


def load_run_json(run_id: str, artifact: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=tmp)
        return json.loads(Path(path).read_text())


def load_config(model_name: str, version: str) -> PanelConfig:
    return PanelConfig.from_dict(load_run_json(version_run_id(model_name, version), CONFIG_ARTIFACT))


def load_calibration(model_name: str, version: str) -> Calibration:
    try:
        data = load_run_json(version_run_id(model_name, version), CALIBRATION_ARTIFACT)
    except (MlflowException, OSError) as exc:
        raise UserError(f"{model_name} version {version} has no {CALIBRATION_ARTIFACT}: run `panelscan calibrate`") from exc
    return Calibration.from_dict(data)


def log_review(cfg: TrackingConfig, report_date: str, precision: dict[str, dict[str, float]],
               daily: dict[str, dict[str, dict[str, float]]], log_file: Path) -> None:
    """One panel-score run per imported review and model version: reviewed flags, confirmed ones
    and their share (precision in use), the plot of it over every reviewed day, and the review log."""
    experiment = experiment_id(cfg.score_experiment, cfg)
    for version, counts in precision.items():
        with mlflow.start_run(experiment_id=experiment, run_name=f"review-{report_date}"):
            mlflow.log_params({"model_name": cfg.model_name, "model_version": version, "report_date": report_date})
            mlflow.log_metrics({f"review_{k}": v for k, v in counts.items()})
            mlflow.log_figure(precision_in_use_figure(daily), "review/precision_in_use.png")
            mlflow.log_artifact(str(log_file), "review")


def log_calibration(calibration: Calibration, figures: dict[str, Figure] | None = None) -> None:
    """Log eval/* metrics, calibration.json, the score-function table and the figures
    (calibration/<name>.png) into the version's training run; tag the version."""
    name, version = calibration.model_name, calibration.model_version
    run_id = version_run_id(name, version)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"eval/{k}": v for k, v in calibration.test.items() if k not in ("n", "n_defect")})
        mlflow.log_metrics({f"eval_val/{k}": v for k, v in calibration.val.items() if k not in ("n", "n_defect")})
        mlflow.log_dict(calibration.to_dict(), CALIBRATION_ARTIFACT)
        mlflow.log_dict(calibration.score_table, "score_functions.json")
        mlflow.log_text(score_table_markdown(calibration), "calibration/score_functions.md")
        for figure_name, figure in (figures or {}).items():
            mlflow.log_figure(figure, f"calibration/{figure_name}.png")
        mlflow.set_tags({"calibration.score": calibration.score_label, "calibration.rule": calibration.rule,
                         "calibration.fallback": str(calibration.fallback).lower()})
    client = MlflowClient()
    for key, value in {"score": calibration.score_label, "threshold": f"{calibration.threshold:.6g}",
                       "threshold_rule": calibration.rule, "threshold_fallback": str(calibration.fallback).lower(),
                       "test_roc_auc": f"{calibration.test.get('roc_auc', float('nan')):.4f}"}.items():
        client.set_model_version_tag(name, version, key, value)


def score_table_markdown(calibration: Calibration) -> str:
    """Every candidate score's val, self-supervised (pasted defects on clean val) and test
    ROC-AUC; the chosen one marked (a per-family choice is a row of its own)."""
    lines = ["| score | val ROC-AUC | val pasted-defect ROC-AUC | test ROC-AUC | chosen |", "|---|---|---|---|---|"]
    for name, row in calibration.score_table.items():
        mark = "yes" if name == calibration.score_label else ""
        lines.append(f"| {name} | {row['val_roc_auc']:.3f} | {row.get('val_synthetic_auc', float('nan')):.3f} | "
                     f"{row['test_roc_auc']:.3f} | {mark} |")
    return "\n".join(lines) + "\n"


def current_version(model_name: str, alias: str) -> str | None:
    try:
        return str(MlflowClient().get_model_version_by_alias(model_name, alias).version)
    except MlflowException as exc:  # no such model or alias: none yet; anything else (a store down) is raised
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def set_alias(model_name: str, version: str, alias: str, reason: str) -> None:
    client = MlflowClient()
    client.set_registered_model_alias(model_name, alias, version)
    client.set_model_version_tag(model_name, version, "promotion", f"{alias}: {reason}")
    client.update_model_version(model_name, version, description=f"{alias}: {reason}")
