"""The defect head: DRAEM's discriminative half on top of the VAE (Zavrtanik et al. 2021).

A small U-Net reads the input and the (frozen) model's reconstruction and says, per pixel, how
likely a defect is. It learns from clean training crops with synthetic defects pasted on half of
them (pipeline/selfcheck.py, a stream of its own), the target being where the paste went; focal
loss, as DRAEM, because defect pixels are rare. Its map is exported with the model (WithHead), so
calibration, nightly scoring and the benchmark read it the same way: the candidate scores
head_blur_max / head_area_max come from it, and so does the heatmap when one of them is chosen.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from pipeline.config import PanelConfig
from pipeline.device import pick_device
from pipeline.images import to_float
from pipeline.models import ModelOutput
from pipeline.selfcheck import paste_defects


def _block(a: int, b: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(a, b, 3, stride=stride, padding=1), nn.BatchNorm2d(b), nn.ReLU(inplace=True))


class DefectHead(nn.Module):
    """A light U-Net (sized for CPU training): (input, reconstruction, |residual|) -> a stride-2
    stem -> three stages down and up with skips -> defect logits, upsampled to the input size."""

    def __init__(self, width: int = 16, in_channels: int = 1) -> None:
        super().__init__()
        w = (width, 2 * width, 4 * width, 4 * width)
        self.stem = _block(3 * in_channels, w[0], stride=2)
        self.down = nn.ModuleList([_block(w[0], w[1], 2), _block(w[1], w[2], 2), _block(w[2], w[3], 2)])
        self.up = nn.ModuleList([_block(w[3] + w[2], w[2]), _block(w[2] + w[1], w[1]), _block(w[1] + w[0], w[0])])
        self.out = nn.Conv2d(w[0], 1, 1)

    def forward(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        h = self.stem(torch.cat([x, recon, (x - recon).abs()], 1))
        skips = [h]
        for block in self.down:
            h = block(h)
            skips.append(h)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            h = block(torch.cat([F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], 1))
        return F.interpolate(self.out(h), size=x.shape[-2:], mode="bilinear", align_corners=False)


class WithHead(nn.Module):
    """A trained model (single or family router) plus its defect head, behind the model interface."""

    def __init__(self, model: nn.Module, head: DefectHead) -> None:
        super().__init__()
        self.model, self.head = model, head

    def forward(self, x: torch.Tensor) -> ModelOutput:
        out = ModelOutput.of(self.model(x))
        return out._replace(anomaly_map=torch.sigmoid(self.head(x, out.mean_recon)))


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Mean focal loss (Lin et al. 2017): cross entropy weighted by (1 - p_true)^gamma."""
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_true = torch.exp(-ce)
    return ((1 - p_true) ** gamma * ce).mean()


StepCallback = Callable[[int, dict[str, float]], None]


def train_head(model: nn.Module, train_x: torch.Tensor, cfg: PanelConfig, progress: bool = True,
               on_step: StepCallback | None = None, log_every: int = 100) -> tuple[WithHead, float]:
    """Fit a defect head on clean uint8 training crops for cfg.model.head_steps steps; the model
    stays frozen (eval mode). Returns the model with its head (eval, on CPU) and the seconds taken.
    Trains where the model trained (cfg.train.device): training hands the model back on the CPU,
    and a head left there on a GPU worker ran at CPU speed."""
    mc, tc = cfg.model, cfg.train
    device = pick_device(tc.device)
    model = model.to(device).eval()
    head = DefectHead(mc.head_width).to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=mc.head_lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=mc.head_steps)
    g = torch.Generator().manual_seed(tc.seed + 2)  # its own stream: the check's pastes stay unseen
    # The loss is summed on the device and read once per log_every steps: no host sync per step.
    start, running = time.perf_counter(), torch.zeros((), dtype=torch.float64, device=device)
    for step in tqdm(range(1, mc.head_steps + 1), desc="train defect head", unit="step", disable=not progress):
        x = to_float(train_x[torch.randint(len(train_x), (mc.head_batch,), generator=g)].to(device))
        pasted = paste_defects(x, g)  # made on the device
        # Half stay clean: the head must also learn to say "nothing".
        keep_clean = (torch.rand(len(x), generator=g) < 0.5).to(device)
        images = torch.where(keep_clean[:, None, None, None], x, pasted.images)
        target = torch.where(keep_clean[:, None, None, None], 0.0, (pasted.masks > 0.5).float())
        with torch.no_grad():
            recon = ModelOutput.of(model(images)).mean_recon
        loss = focal_loss(head(images, recon), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        running += loss.detach().double()
        if on_step is not None and step % log_every == 0:
            on_step(step, {"head/loss": running.item() / log_every})
            running.zero_()
    return WithHead(model, head.eval()).cpu().eval(), time.perf_counter() - start


def with_head(model: nn.Module, train_x: torch.Tensor, cfg: PanelConfig, progress: bool = True,
              on_step: StepCallback | None = None) -> tuple[nn.Module, float]:
    """The model with a defect head trained for it (cfg.model.head_steps > 0), or the model as it is
    (also a feature-space model: the head reads a pixel reconstruction, which it has not)."""
    if cfg.model.head_steps <= 0 or cfg.model.backbone != "none":
        return model, 0.0
    return train_head(model, train_x, cfg, progress, on_step)
