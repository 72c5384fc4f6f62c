"""The self-supervised check: how well a model finds defects pasted on clean validation crops.

Clean reconstruction loss is the wrong target for choosing a model (on an unseen real set, better
reconstruction of clean tiles did not mean better detection), and many sets have few labelled
defects. So each clean val crop gets one synthetic defect (seeded, the same every time): an
irregular blob (value noise inside a random window, as DRAEM's Perlin masks) filled with another
clean crop's texture, a flat grey, a darker / brighter copy or noise; or a thin wavy line, dark or
bright, as a crack. Every candidate score's ROC-AUC at telling the pasted copy from the clean one
is the check. Everything is batched tensors on the crops' device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.nn import functional as F

from pipeline.config import PanelConfig
from pipeline.images import to_float, to_uint8
from pipeline.scoring import ScoredBatch, blur, fit_score_scale, scaled_scores, score_crops

BLOB_FILLS = ("texture", "grey", "shade", "noise")


@dataclass(frozen=True)
class Pasted:
    images: torch.Tensor  # (N, 1, S, S) floats in [0, 1], one defect each
    masks: torch.Tensor  # (N, 1, S, S) how much of each pixel is defect, in [0, 1]


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def blob_masks(n: int, size: int, g: torch.Generator, device: torch.device | None = None) -> torch.Tensor:
    """(n, 1, S, S) irregular blobs: smooth value noise plus a Gaussian bump at a random place,
    thresholded, softened at the rim. Radius 4 % to 15 % of the side. Drawn on the CPU (g), drawn
    out on device."""
    masks = []
    yy, xx = torch.meshgrid(torch.arange(size, device=device), torch.arange(size, device=device), indexing="ij")
    for _ in range(n):
        cells = int(torch.randint(6, 20, (1,), generator=g))
        noise = F.interpolate(torch.rand(1, 1, cells + 1, cells + 1, generator=g).to(device), size=(size, size),
                              mode="bicubic", align_corners=True)
        cy, cx = ((torch.rand(2, generator=g) * 0.8 + 0.1) * size).tolist()
        radius = float(_uniform(1, 0.04, 0.15, g)) * size
        bump = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
        masks.append(((bump * (0.3 + 1.4 * noise[0, 0]) > 0.5) | (bump > 0.9)).float())  # noise frays the rim
    return blur(torch.stack(masks)[:, None], 0.7)


def line_masks(n: int, size: int, g: torch.Generator, device: torch.device | None = None) -> torch.Tensor:
    """(n, 1, S, S) thin wavy lines: a random walk with a drifting heading, drawn point by point
    (half-pixel steps), 1 or 3 px wide, softened. The walk on the CPU (g), the canvas on device."""
    steps = int(torch.randint(size // 2, 2 * size, (1,), generator=g))
    turns = torch.cumsum(torch.randn(n, steps, generator=g) * 0.08, 1) + torch.rand(n, 1, generator=g) * 2 * math.pi
    start = (torch.rand(n, 1, 2, generator=g) * 0.6 + 0.2) * size
    points = start + 0.5 * torch.cumsum(torch.stack([torch.sin(turns), torch.cos(turns)], 2), 1)  # (n, steps, y x)
    inside = ((points >= 0) & (points <= size - 1)).all(2)
    ys, xs = points[..., 0].round().long().clamp(0, size - 1), points[..., 1].round().long().clamp(0, size - 1)
    canvas = torch.zeros(n, size * size, device=device)
    canvas.scatter_(1, (ys * size + xs).to(device), inside.float().to(device))
    canvas = canvas.view(n, 1, size, size)
    wide = (torch.rand(n, generator=g) < 0.5).to(device)
    canvas = torch.where(wide[:, None, None, None], F.max_pool2d(canvas, 3, 1, 1), canvas)
    return blur(canvas, 0.5).clamp(0, 1) / blur(torch.ones(1, 1, 5, 5, device=device), 0.5)[0, 0, 2, 2]


def paste_defects(x: torch.Tensor, g: torch.Generator) -> Pasted:
    """One synthetic defect on each float (N, 1, S, S) crop: a third of them lines, the rest blobs
    with a fill drawn from BLOB_FILLS; opacity 0.5 to 1. The random draws come from g on the CPU
    (the same defects on any device); the pixels are made on the crops' device, so a GPU-trained
    defect head does not wait on the CPU for them."""
    n, size, dev = x.shape[0], x.shape[-1], x.device

    def uniform(low: float, high: float) -> torch.Tensor:  # one per crop, broadcast over its pixels
        return _uniform(n, low, high, g)[:, None, None, None].to(dev)

    is_line = (torch.rand(n, generator=g) < 1 / 3).to(dev)[:, None, None, None]
    masks = torch.where(is_line, line_masks(n, size, g, dev), blob_masks(n, size, g, dev))
    fill_kind = torch.randint(0, len(BLOB_FILLS), (n,), generator=g).to(dev)
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)[:, None, None, None].to(dev)
    shift = tuple(int(v) for v in torch.randint(size // 4, 3 * size // 4, (2,), generator=g))
    fills = {
        "texture": torch.roll(x, shifts=(1, *shift), dims=(0, 2, 3)),  # another clean crop, elsewhere
        "grey": uniform(0.0, 1.0).expand_as(x),
        "shade": x * (1 + sign * uniform(0.15, 0.5)),
        "noise": x + torch.randn(x.shape, generator=g).to(dev) * uniform(0.08, 0.25),
    }
    blob_fill = torch.stack([fills[k] for k in BLOB_FILLS])[fill_kind, torch.arange(n, device=dev)]
    line_fill = x + sign * uniform(0.15, 0.5)  # a crack: darker or brighter
    fill = torch.where(is_line, line_fill, blob_fill).clamp(0, 1)
    alpha = masks * uniform(0.5, 1.0)
    return Pasted((x * (1 - alpha) + fill * alpha).clamp(0, 1), masks)


def pasted_copies(clean: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """uint8 copies of the clean uint8 crops with one pasted defect each; the same for a seed."""
    return to_uint8(paste_defects(to_float(clean), torch.Generator().manual_seed(seed)).images)


def synthetic_check(model: nn.Module, clean: torch.Tensor, pasted: torch.Tensor, cfg: PanelConfig,
                    clean_scored: ScoredBatch | None = None) -> dict[str, float]:
    """Every candidate score's ROC-AUC at telling clean uint8 crops from their pasted copies
    (scores scaled as calibration scales them). clean_scored: the clean crops' scores when the
    caller has them already (only the copies are scored then). {} without crops."""
    if len(clean) == 0:
        return {}
    clean_scored = clean_scored or score_crops(model, clean, cfg.score, cfg.model, keep_heatmaps=False)
    copies = score_crops(model, pasted, cfg.score, cfg.model, keep_heatmaps=False)
    family = np.r_[clean_scored.family, copies.family]
    raw = {name: np.r_[clean_scored.scores[name], copies.scores[name]] for name in copies.scores}
    truth = np.r_[np.zeros(len(clean)), np.ones(len(pasted))]
    scores = scaled_scores(raw, family, fit_score_scale(raw, family, truth == 0, int(family.max()) + 1))
    return {name: float(roc_auc_score(truth, values)) for name, values in scores.items()}
