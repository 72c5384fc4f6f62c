"""The training loop, shared by every model family: device, AMP, data loading, augmentation,
early stopping, checkpoint + resume.

It reports through a callback (epoch, metrics) so this module never imports Prefect or MLflow.
"""

from __future__ import annotations

import copy
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pipeline.batching import device_batch, fits_on, loader, resident_batches
from pipeline.checkpoint import (
    Checkpointing,
    read_checkpoint,
    restore_streams,
    run_identity,
    save_checkpoint,
    stream_states,
)
from pipeline.clean_references import fit_error_reference, fit_latent_bank
from pipeline.config import ModelConfig, PanelConfig, TrainConfig
from pipeline.device import pick_device
from pipeline.errors import UserError
from pipeline.images import float_batches, to_float
from pipeline.models import LatentReport, build_model
from pipeline.models.blocks import squared_error
from pipeline.selfcheck import pasted_copies, synthetic_check

EpochCallback = Callable[[int, dict[str, float]], None]
BN_CALIBRATION_CROPS = 256  # clean crops that set BatchNorm statistics before each validation pass


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
    raise UserError(f"unknown beta_schedule {cfg.beta_schedule!r} (constant, linear or cyclical)")


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
    resumed_from: int = 0  # last finished epoch of the checkpoint this run continued (0: fresh)
    device: str = "cpu"
    seconds: float = 0.0
    latent: LatentReport | None = None  # KL per dim (VAE) or codebook usage (VQ) on clean val, best model

    @property
    def collapsed(self) -> bool:
        return bool(self.latent and self.latent.collapsed)


def _epoch_pass(model: nn.Module, loader: DataLoader | torch.Tensor, n_images: int, cfg: PanelConfig, beta: float,
                device: torch.device, optimizer: torch.optim.Optimizer | None, generator: torch.Generator,
                order: torch.Generator | None = None, batch_size: int = 0, step: Callable | None = None
                ) -> dict[str, float]:
    """One pass over the loader (or a tensor resident on the device, in batches drawn with order);
    trains when an optimizer is given. Returns mean per-image terms. Sums stay on the device
    (float64): one host sync per pass, not one per metric per step."""
    training = optimizer is not None
    model.train(training)
    step = step or model.training_step
    sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), dtype=torch.float64, device=device))
    latent = None
    batches = resident_batches(loader, batch_size, order) if isinstance(loader, torch.Tensor) else loader
    for (batch,) in batches:
        x = batch.to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        if x.dtype == torch.uint8:  # pixels; a feature model's cached features come as they are
            x = to_float(x)
            if training:
                x = augment(x, cfg.train, generator)
        with torch.set_grad_enabled(training), torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            out = step(x, beta)
            # Per-pixel scale keeps the learning rate meaningful at any image size.
            loss = out.objective.mean() / x[0].numel()
        if training:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        sums["loss"] += out.objective.detach().double().sum()
        sums["recon"] += out.recon.detach().double().sum()
        sums["mse"] += squared_error(x, out.recon_image.detach()).double().sum()
        for name, values in out.terms.items():
            sums[name] += values.detach().double().sum()
        stats = out.latent_stats.detach().float()
        latent = stats if latent is None else latent + stats
    names = list(sums)
    totals = torch.stack([sums[n] for n in names]).tolist() if names else []  # the one sync
    return {**{n: v / n_images for n, v in zip(names, totals)}, **model.latent_metrics(latent.cpu(), n_images)}


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, clean: torch.Tensor, batch_size: int = 64,
                          device: torch.device = torch.device("cpu")) -> None:
    """Recompute every BatchNorm's running statistics as the exact average over clean, unaugmented
    crops through the inference path. Running averages from training lag the weights and carry the
    augmentation; eval-mode errors on clean panels are what scores are measured against. Only the
    BatchNorm layers switch to train mode, so nothing else (e.g. a VQ codebook) learns here."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    model.eval()
    if not norms:  # nothing to recompute (a feature model: its frozen backbone's norms are fixed maps)
        return
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches below
        norm.train()
    for x in float_batches(clean, batch_size, device):
        model(x)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    model.eval()


def _selection(cfg: PanelConfig, train_x: torch.Tensor, val_x: torch.Tensor,
               device: torch.device) -> Callable[[nn.Module], dict[str, float]]:
    """What model selection measures after each epoch besides the val loss. select_by="synthetic":
    the self-supervised check (pipeline/selfcheck.py) on the clean val crops, its best candidate
    score's ROC-AUC, with the clean error reference refitted first (the normalised scores need it)."""
    if cfg.train.select_by in ("last", "recon"):
        return lambda model: {}
    if cfg.train.select_by != "synthetic":
        raise UserError(f"unknown select_by {cfg.train.select_by!r} (last, recon or synthetic)")

    pasted = pasted_copies(val_x, cfg.train.seed)

    def check(model: nn.Module) -> dict[str, float]:
        fit_error_reference(model, train_x[:BN_CALIBRATION_CROPS], device=device)
        return {"val/synthetic_auc": max(synthetic_check(model, val_x, pasted, cfg).values())}
    return check


def train_model(train_x: torch.Tensor, val_x: torch.Tensor, cfg: PanelConfig, on_epoch: EpochCallback | None = None,
                progress: bool = True, checkpoint: Checkpointing | None = None, family: str = "") -> TrainResult:
    """Fit a model on clean uint8 crops; early stopping on clean validation reconstruction.
    With checkpoint, the full state is saved after every epoch; resume=True continues from it
    (same weights, optimiser, schedule, random streams: the loss curve carries on unchanged)."""
    if len(train_x) == 0 or len(val_x) == 0:
        raise UserError(f"need clean train and val crops, got {len(train_x)} train and {len(val_x)} val")
    tc = cfg.train
    torch.manual_seed(tc.seed)
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    # Separate streams for batch order and augmentation: a loader that prefetches indices (workers)
    # must not shift the augmentation draws.
    order_rng, generator = torch.Generator().manual_seed(tc.seed), torch.Generator().manual_seed(tc.seed + 1)
    device = pick_device(tc.device)
    model = build_model(cfg.model, cfg.ingest.image_size).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    # A feature model (models/featvae.py) trains on its frozen backbone's features of the crops,
    # computed once here, not on pixels: every epoch is a pass over these cached tensors.
    pixels = getattr(model, "pixel_inputs", True)
    train_in = train_x if pixels else model.feature_inputs(train_x, fit=True)
    val_in = val_x if pixels else model.feature_inputs(val_x)
    if not pixels and tc.select_by == "synthetic":
        raise UserError("train.select_by synthetic pastes defects on pixels: with model.backbone use recon or last")
    batch_size, lr = device_batch(tc, len(train_x), device)
    steps_per_epoch = math.ceil(len(train_x) / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=tc.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=tc.epochs)
    if fits_on(device, train_in, val_in):  # crops (or features) kept on the GPU: batches by index
        train_loader, val_loader = train_in.to(device), val_in.to(device)
    else:
        train_loader = loader(train_in, batch_size, order_rng, device, tc.loader_workers)
        val_loader = loader(val_in, batch_size, None, device, tc.loader_workers)
    step = torch.compile(model.training_step) if tc.compile else model.training_step
    identity = run_identity(train_x, val_x, cfg) if checkpoint else {}
    best, best_state, result, stale = float("inf"), None, TrainResult(model=model, device=str(device)), 0
    select = _selection(cfg, train_x, val_x, device)
    saved = read_checkpoint(checkpoint.path) if checkpoint and checkpoint.resume else None
    if saved is not None:
        if saved["identity"] != identity:
            raise UserError(f"{checkpoint.path}: checkpoint was written for other data or settings; "
                            "run without --resume to start over")
        try:
            restore_streams(saved, model, optimizer, scheduler, order_rng, generator, device)
        except (RuntimeError, KeyError) as exc:  # e.g. written by a panelscan whose model had other buffers
            raise UserError(f"{checkpoint.path}: checkpoint holds another model layout ({str(exc).splitlines()[0]}); "
                            "run without --resume to start over") from exc
        best, best_state, stale = saved["best"], saved["best_state"], saved["stale"]
        result.history, result.best_epoch, result.resumed_from = saved["history"], saved["best_epoch"], saved["epoch"]
    start = time.perf_counter()
    first = result.resumed_from + 1
    what = f"{cfg.model.model_type} ({family})" if family else cfg.model.model_type
    bar = tqdm(range(first, tc.epochs + 1), desc=f"train {what} on {device}", unit="epoch",
               disable=not progress, initial=first - 1, total=tc.epochs)
    for epoch in bar:
        if stale >= tc.patience and epoch > tc.min_epochs:  # a resumed run that had already stopped early
            result.stopped_early = True
            break
        beta = beta_at(epoch, cfg.model) if model.uses_beta else 0.0
        train_m = _epoch_pass(model, train_loader, len(train_x), cfg, beta, device, optimizer, generator, order_rng,
                              batch_size, step)
        # Validate the model as it will be exported: exact clean BatchNorm statistics, not the lagging
        # running averages (those made clean val loss jump 3x between epochs and stopped runs early).
        recalibrate_batchnorm(model, train_x[:BN_CALIBRATION_CROPS], device=device)
        with torch.no_grad():
            val_m = _epoch_pass(model, val_loader, len(val_x), cfg, beta, device, None, generator, None, batch_size,
                                step)
        scheduler.step()
        metrics = {**{f"train/{k}": v for k, v in train_m.items()}, **{f"val/{k}": v for k, v in val_m.items()},
                   "lr": scheduler.get_last_lr()[0], "train/steps": epoch * steps_per_epoch, **select(model)}
        if model.uses_beta:
            metrics["train/beta"] = beta
            metrics["active_units"] = val_m["active_units"]  # the headline name analysts know
        result.history.append({"epoch": epoch, **metrics})
        criterion = 1 - metrics["val/synthetic_auc"] if tc.select_by == "synthetic" else metrics["val/recon"]
        # "last" keeps every epoch as it comes: the whole schedule, no early stop
        if tc.select_by == "last" or criterion < best * (1 - tc.min_delta):
            best, best_state, result.best_epoch, stale = criterion, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            stale += 1
        if checkpoint:
            save_checkpoint(checkpoint.path, {
                "identity": identity, "meta": checkpoint.meta, "epoch": epoch, "best": best, "best_state": best_state,
                "best_epoch": result.best_epoch, "stale": stale, "history": result.history,
                **stream_states(model, optimizer, scheduler, order_rng, generator, device)})
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        bar.set_postfix({k.replace("train/", ""): f"{metrics[k]:.4g}"
                         for k in ("train/recon", "train/kl", "train/vq_loss", "val/recon", "val/synthetic_auc")
                         if k in metrics})
        if stale >= tc.patience and epoch >= tc.min_epochs:
            result.stopped_early = True
            break
    model.load_state_dict(best_state)
    model = model.to(memory_format=torch.contiguous_format).eval()
    # Three passes over every training crop: on the training device (on an H100 they had made
    # 3 epochs of 12,800 crops take 54 s, run on the CPU after the model had left the GPU).
    if pixels:
        recalibrate_batchnorm(model, train_x, device=device)
        fit_error_reference(model, train_x, device=device)
        fit_latent_bank(model, train_x, cfg.train.seed)
    else:  # from the cached features: no second backbone pass
        model.fit_banks(train_in, cfg.train.seed)
    result.model = model.cpu().eval()
    result.latent = result.model.latent_report(val_in.cpu())
    result.seconds = time.perf_counter() - start
    return result
