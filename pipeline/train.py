"""The training loop, shared by every model family: device, AMP, augmentation, early stopping.

It reports through a callback (epoch, metrics) so this module never imports Prefect or MLflow.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torchvision.io import decode_png, read_file
from tqdm.auto import tqdm

from pipeline.config import ModelConfig, PanelConfig, TrainConfig
from pipeline.models import build_model, kl_per_dim, vae_loss_terms
from pipeline.scoring import fit_error_reference

EpochCallback = Callable[[int, dict[str, float]], None]
ACTIVE_UNIT_KL = 0.1  # nats (~0.14 bits): a latent dimension carrying less KL than this is inactive


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but no CUDA device is available")
    return torch.device(requested)


def load_crops(rows: pd.DataFrame, crops_dir: Path) -> torch.Tensor:
    """Stack the manifest rows' crop PNGs into a uint8 (N, 1, S, S) tensor."""
    images = []
    for name in rows["crop_path"]:
        path = Path(crops_dir) / name
        try:
            images.append(decode_png(read_file(str(path))))
        except RuntimeError as exc:
            raise RuntimeError(f"{path}: cannot read crop ({exc}); re-run ingest") from exc
    return torch.stack(images)


def dataset_hash(rows: pd.DataFrame) -> str:
    """Identity of a training set: sha256 over its sorted crop ids."""
    return hashlib.sha256("\n".join(sorted(rows["crop_id"])).encode()).hexdigest()[:16]


def beta_at(epoch: int, cfg: ModelConfig) -> float:
    """β for a 1-based epoch. constant: β. linear: β·min(1, epoch / warmup).
    cyclical (Fu et al. 2019): in each cycle of C epochs, β ramps linearly from β/(C/2)
    to β over the first half, then holds β."""
    if cfg.beta_schedule == "constant":
        return cfg.beta
    if cfg.beta_schedule == "linear":
        return cfg.beta * min(1.0, epoch / max(1, cfg.beta_warmup_epochs))
    if cfg.beta_schedule == "cyclical":
        position = (epoch - 1) % cfg.beta_cycle_epochs + 1
        return cfg.beta * min(1.0, position / max(1.0, cfg.beta_cycle_epochs / 2))
    raise ValueError(f"unknown beta_schedule {cfg.beta_schedule!r} (constant, linear or cyclical)")


def free_bits_kl(kl: torch.Tensor, floor: float) -> torch.Tensor:
    """KL term for the loss, per image: each dimension's batch-mean KL is raised to the floor
    (Kingma et al. 2016), so dimensions under it get no gradient towards the prior."""
    if floor <= 0:
        return kl.sum(dim=1)
    return kl.mean(dim=0).clamp(min=floor).sum().expand(kl.shape[0])


def augment(x: torch.Tensor, cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """Shifts and brightness changes that keep a clean panel clean (no flips: layouts are fixed)."""
    if cfg.max_shift:
        dx, dy = torch.randint(-cfg.max_shift, cfg.max_shift + 1, (2,), generator=generator).tolist()
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    if cfg.brightness:
        gain = 1 + (torch.rand(x.shape[0], 1, 1, 1, generator=generator) * 2 - 1) * cfg.brightness
        x = (x * gain.to(x.device)).clamp(0, 1)
    return x


@dataclass
class TrainResult:
    model: nn.Module  # best weights, eval mode, on CPU
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    device: str = "cpu"
    seconds: float = 0.0
    kl_per_dim: list[float] = field(default_factory=list)  # mean KL per latent dim on val, best model
    collapsed: bool = False  # posterior collapse: no latent dimension carries information


@torch.inference_mode()
def validation_kl_per_dim(model: nn.Module, val_x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Mean KL per latent dimension over clean validation crops (model on CPU, eval mode)."""
    total = None
    for start in range(0, len(val_x), batch_size):
        mu, logvar = model.encode(val_x[start:start + batch_size].float() / 255.0)
        part = kl_per_dim(mu, logvar).sum(dim=0)
        total = part if total is None else total + part
    return total / len(val_x)


def _epoch_pass(model: nn.Module, data: torch.Tensor, cfg: PanelConfig, beta: float, device: torch.device,
                optimizer: torch.optim.Optimizer | None, generator: torch.Generator) -> dict[str, float]:
    """One pass over data; trains when an optimizer is given. Returns mean per-image terms."""
    training = optimizer is not None
    model.train(training)
    order = torch.randperm(len(data), generator=generator) if training else torch.arange(len(data))
    sums = {"recon": 0.0, "kl": 0.0, "mse": 0.0}
    kl_dims = torch.zeros(cfg.model.latent_dim)
    n_pixels = data[0].numel()
    for start in range(0, len(data), cfg.train.batch_size):
        x = data[order[start:start + cfg.train.batch_size]].to(device, non_blocking=True).float() / 255.0
        if training:
            x = augment(x, cfg.train, generator)
        with torch.set_grad_enabled(training), torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            out = model.sample_forward(x)
            recon, kl = vae_loss_terms(x, out, cfg.model.recon_sigma)
            # Per-pixel scale keeps the learning rate meaningful at any image size.
            loss = (recon + beta * free_bits_kl(kl, cfg.model.free_bits)).mean() / n_pixels
        if training:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sums["recon"] += recon.sum().item()
        sums["kl"] += kl.sum().item()
        sums["mse"] += (x - out.recon.float()).pow(2).mean(dim=(1, 2, 3)).sum().item()
        kl_dims += kl.detach().float().sum(dim=0).cpu()
    metrics = {k: v / len(data) for k, v in sums.items()}
    metrics["active_units"] = float((kl_dims / len(data) > ACTIVE_UNIT_KL).sum())
    return metrics


def train_model(train_x: torch.Tensor, val_x: torch.Tensor, cfg: PanelConfig,
                on_epoch: EpochCallback | None = None, progress: bool = True) -> TrainResult:
    """Fit a model on clean uint8 crops; early stopping on clean validation reconstruction."""
    if len(train_x) == 0 or len(val_x) == 0:
        raise ValueError(f"need clean train and val crops, got {len(train_x)} train and {len(val_x)} val")
    tc = cfg.train
    torch.manual_seed(tc.seed)
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    generator = torch.Generator().manual_seed(tc.seed)
    device = pick_device(tc.device)
    model = build_model(cfg.model, cfg.ingest.image_size).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=tc.epochs)
    best, best_state, result = float("inf"), None, TrainResult(model=model, device=str(device))
    start, stale = time.perf_counter(), 0
    bar = tqdm(range(1, tc.epochs + 1), desc=f"train {cfg.model.model_type} on {device}", unit="epoch", disable=not progress)
    for epoch in bar:
        beta = beta_at(epoch, cfg.model)
        train_m = _epoch_pass(model, train_x, cfg, beta, device, optimizer, generator)
        with torch.no_grad():
            val_m = _epoch_pass(model, val_x, cfg, beta, device, None, generator)
        scheduler.step()
        metrics = {"train/loss": train_m["recon"] + beta * train_m["kl"], "train/recon": train_m["recon"],
                   "train/kl": train_m["kl"], "train/beta": beta, "train/mse": train_m["mse"],
                   "val/recon": val_m["recon"], "val/kl": val_m["kl"], "val/mse": val_m["mse"],
                   "active_units": val_m["active_units"], "lr": scheduler.get_last_lr()[0]}
        result.history.append({"epoch": epoch, **metrics})
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        bar.set_postfix(recon=f"{metrics['train/recon']:.1f}", kl=f"{metrics['train/kl']:.1f}",
                        val_recon=f"{metrics['val/recon']:.1f}")
        if metrics["val/recon"] < best * (1 - tc.min_delta):
            best, best_state, result.best_epoch, stale = metrics["val/recon"], copy.deepcopy(model.state_dict()), epoch, 0
        else:
            stale += 1
            if stale >= tc.patience:
                result.stopped_early = True
                break
    model.load_state_dict(best_state)
    result.model = model.cpu().eval()
    fit_error_reference(result.model, train_x)
    kl_dims = validation_kl_per_dim(result.model, val_x)
    result.kl_per_dim = kl_dims.tolist()
    result.collapsed = bool((kl_dims <= ACTIVE_UNIT_KL).all())
    result.seconds = time.perf_counter() - start
    return result
