"""Train stage: the clean train/val crops of a workdir -> one model (or one per family) trained,
logged to MLflow and registered as a new version."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pipeline import tracking
from pipeline.checkpoint import Checkpointing, read_checkpoint
from pipeline.config import PanelConfig
from pipeline.defect_head import with_head
from pipeline.ensemble import member_count, train_members
from pipeline.errors import UserError
from pipeline.files import atomic_write_text
from pipeline.images import to_float
from pipeline.training import TrainResult, train_model
from pipeline.workspace import WorkDirs, dataset_hash, load_crops, load_split, why_no_clean_crops


@dataclass(frozen=True)
class TrainOutcome:
    run_id: str
    model_version: str
    model_type: str
    best_epoch: int
    epochs_run: int
    resumed_from: int
    seconds: float
    device: str
    collapsed: bool
    warning: str  # the collapse alarm's message, empty when healthy
    families: tuple[str, ...] = ()  # one model per family (routed by a classifier); () for one shared model
    members: int = 1  # trainings scored as one (train.members)


def checkpoint_path(workdir: Path, cfg: PanelConfig, family: str = "") -> Path:
    return WorkDirs(Path(workdir)).checkpoint(cfg.model.model_type, family)


def _resumed_run_id(workdir: Path, cfg: PanelConfig) -> str | None:
    """The MLflow run an interrupted training wrote its checkpoints for (family models: one each)."""
    main = checkpoint_path(workdir, cfg)
    saved = [read_checkpoint(p) for p in (main, *sorted(main.parent.glob(f"{main.stem}-*.pt")))]
    return next((s["meta"].get("run_id") for s in saved if s), None)


def train_stage(workdir: Path, cfg: PanelConfig, progress: bool = True, resume: bool = False) -> TrainOutcome:
    """Train on the clean train split, log everything to MLflow, register a model version.
    resume=True continues an interrupted run from its checkpoint, in the same MLflow run."""
    dirs = WorkDirs(Path(workdir))
    train_rows = load_split(dirs.manifest, ["train"], trainable_only=True)
    val_rows = load_split(dirs.manifest, ["val"], trainable_only=True)
    for split, rows in (("train", train_rows), ("val", val_rows)):
        if rows.empty:
            raise UserError(why_no_clean_crops(dirs.manifest, split))
    train_x, val_x = load_crops(train_rows, dirs.crops), load_crops(val_rows, dirs.crops)
    if train_x.shape[-1] != cfg.ingest.image_size:
        raise UserError(f"{dirs.manifest}: crops are {train_x.shape[-1]} px but the config says "
                        f"image_size={cfg.ingest.image_size}; re-run ingest with the same config")
    run_id = _resumed_run_id(workdir, cfg) if resume else None
    with tracking.train_run(cfg, dataset_hash(train_rows), len(train_x), len(val_x), run_id) as run_id:

        def fit_one(family: str, tx: torch.Tensor, vx: torch.Tensor, family_cfg: PanelConfig) -> TrainResult:
            checkpointing = Checkpointing(checkpoint_path(workdir, cfg, family), resume, {"run_id": run_id}) \
                if cfg.train.checkpoint else None
            result = train_model(tx, vx, family_cfg, on_epoch=tracking.epoch_logger(family), progress=progress,
                                 checkpoint=checkpointing, family=family)
            tracking.log_latent_report(result.latent, family)
            if result.collapsed:
                warnings.warn(f"{family or 'model'}: {result.latent.warning}", stacklevel=2)
            return result

        trained = train_members(train_x, train_rows["family"].to_numpy(str), val_x, val_rows["family"].to_numpy(str),
                                cfg, fit_one)
        results = list(trained.results.values())
        seconds, best_epoch = sum(r.seconds for r in results), max(r.best_epoch for r in results)
        resumed_from = min(r.resumed_from for r in results)
        tracking.log_families(trained.classifier)
        model, head_seconds = with_head(trained.model, train_x, cfg, progress, on_step=tracking.log_epoch)
        tracking.log_training(best_epoch, seconds + head_seconds, results[0].device,
                              any(r.stopped_early for r in results), resumed_from)
        version = tracking.log_model(model, to_float(val_x[:2]), cfg)
    for family in trained.results:  # registered: nothing left to resume
        checkpoint_path(workdir, cfg, family).unlink(missing_ok=True)
    collapsed = [f"{family or 'model'}: {r.latent.warning}" for family, r in trained.results.items() if r.collapsed]
    outcome = TrainOutcome(run_id, version, cfg.model.model_type, best_epoch, max(len(r.history) for r in results),
                           resumed_from, seconds, results[0].device, bool(collapsed), "; ".join(collapsed),
                           trained.families, member_count(cfg))
    atomic_write_text(dirs.latest_train, json.dumps(asdict(outcome), indent=2))
    return outcome


def latest_trained_version(workdir: Path) -> str:
    path = WorkDirs(Path(workdir)).latest_train
    if not path.exists():
        raise UserError(f"{path}: no trained model yet; run `panelscan train` or pass --model-version")
    return json.loads(path.read_text())["model_version"]
