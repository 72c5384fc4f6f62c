"""Training checkpoints: the full state after every epoch, written atomically, and what a resumed
run must match (the data and every setting that shapes the run). weights_only loading: a
checkpoint never unpickles code."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.config import PanelConfig
from pipeline.errors import UserError
from pipeline.files import atomic_write


@dataclass(frozen=True)
class Checkpointing:
    """Where to save the state after every epoch, and whether to continue from it."""

    path: Path
    resume: bool = False
    meta: dict[str, str] = field(default_factory=dict)  # caller's notes kept with it (e.g. the MLflow run id)


def run_identity(train_x: torch.Tensor, val_x: torch.Tensor, cfg: PanelConfig) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the data and every setting that shapes the run."""
    digest = hashlib.sha256(train_x.numpy().tobytes() + val_x.numpy().tobytes()).hexdigest()
    train = {k: v for k, v in cfg.to_dict()["train"].items() if k not in ("device", "num_threads", "loader_workers", "checkpoint")}
    return {"data_sha256": digest, "image_size": cfg.ingest.image_size, "model": cfg.to_dict()["model"], "train": train}


def read_checkpoint(path: Path) -> dict[str, Any] | None:
    """A saved training state, or None when there is none (weights_only: never unpickles code)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which and why
        raise UserError(f"{path}: unreadable checkpoint ({exc}); delete it or run without --resume") from exc


def stream_states(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, order_rng: torch.Generator,
                   augment_rng: torch.Generator, device: torch.device) -> dict[str, Any]:
    """Everything that decides the next epoch: weights, optimiser, schedule, every random stream."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(), "augment_rng": augment_rng.get_state(),
            "order_rng": order_rng.get_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None}


def restore_streams(saved: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                     order_rng: torch.Generator, augment_rng: torch.Generator, device: torch.device) -> None:
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    augment_rng.set_state(saved["augment_rng"])
    order_rng.set_state(saved["order_rng"])
    if device.type == "cuda" and saved.get("cuda_rng") is not None:
        torch.cuda.set_rng_state_all(saved["cuda_rng"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomic: a crash while saving leaves the previous epoch's checkpoint intact."""
    atomic_write(path, partial(torch.save, state))
