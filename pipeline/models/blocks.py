"""Building blocks both model families share: the conv stacks, the step/report types, the
reconstruction likelihood and the clean references kept inside a model: the per-pixel error and the
bank of latent codes."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.errors import UserError


def check_size(image_size: int, depth: int) -> int:
    """Side of the latent grid; the crop side must halve cleanly through every conv stage."""
    if image_size % 2**depth:
        raise UserError(f"image_size {image_size} must be divisible by {2**depth} for {depth} conv stages")
    return image_size // 2**depth


def down_stack(widths: tuple[int, ...]) -> list[nn.Module]:
    """Stride-2 conv stages: widths[0] -> widths[1] -> ... (each halves the side)."""
    return [nn.Sequential(nn.Conv2d(a, b, 4, stride=2, padding=1), nn.BatchNorm2d(b), nn.LeakyReLU(0.2))
            for a, b in zip(widths[:-1], widths[1:])]


def up_stack(widths: tuple[int, ...]) -> list[nn.Module]:
    """Mirror of down_stack back to widths[0] channels, ending in a sigmoid (pixels in [0, 1])."""
    rev = widths[::-1]
    ups: list[nn.Module] = [nn.Sequential(nn.ConvTranspose2d(a, b, 4, stride=2, padding=1), nn.BatchNorm2d(b),
                                          nn.LeakyReLU(0.2)) for a, b in zip(rev[:-2], rev[1:-1])]
    return [*ups, nn.ConvTranspose2d(rev[-2], rev[-1], 4, stride=2, padding=1), nn.Sigmoid()]


def error_reference(in_channels: int, image_size: int) -> torch.Tensor:
    """Initial per-pixel clean-error reference (ones); fit_error_reference sets it after training.
    A buffer inside the model, so a registry-loaded model normalises errors exactly as calibration did."""
    return torch.ones(1, in_channels, image_size, image_size)


# The latent codes of clean training crops, kept in the model so a registry copy scores exactly as
# calibration did. A fixed number of rows (an exported program's buffers have fixed shapes); rows
# not filled sit far from every code and are never among the nearest. On ELPV's poly cells, whose
# grain makes clean pixel error high, the distance to the nearest clean codes found defects
# better than any error-map score (README, "How each default was chosen"). One neighbour, not 5:
# validation preferred the nearest code alone on all six ELPV trainings measured (k 1/3/5/10/20).
BANK_ROWS, BANK_NEIGHBOURS, BANK_FAR = 2048, 1, 1.0e4


# The ConvVAE's code is its encoder's last grid (8,192 numbers at 128 px) on its leading principal
# axes over the bank's crops, not μ: on six ELPV trainings validation picked the poly cells' score
# higher (0.835 -> 0.839 mean; the whole grid 0.840, 64 axes 0.837) at an eighth of the grid's bank.
CODE_COMPONENTS = 256


class CodeProjection(nn.Module):
    """A flattened feature grid, centred and projected on principal axes that fit_latent_bank fits on
    clean crops; until then every code is 0. Axes beyond the crops' rank stay 0 and add nothing."""

    def __init__(self, features: int, components: int = CODE_COMPONENTS) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("axes", torch.zeros(features, min(components, features)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (features.flatten(1).float() - self.mean) @ self.axes


def latent_bank(dim: int) -> torch.Tensor:
    """An empty bank (every row far away); fit_latent_bank fills it after training."""
    return torch.full((BANK_ROWS, dim), BANK_FAR)


def bank_distance(codes: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """(B,) mean Euclidean distance from each code to its BANK_NEIGHBOURS nearest bank rows. The
    rows are ranked by one matmul (|b|² - 2c·b) and only the chosen ones measured by summed squared
    differences: the expanded form loses ~1e-4 to cancellation, and a direct (B, rows, dim) difference
    is ten times slower at 256 dimensions. The ranking is in float64, which autocast leaves alone: in
    bf16 near-ties fell differently in the eager model and its exported copy. Not torch.cdist: it
    switches algorithm at 25 rows, which an exported program with a dynamic batch cannot hold."""
    codes, bank = codes.float(), bank.float()
    ranking = bank.double().pow(2).sum(dim=1)[None] - 2 * codes.double() @ bank.double().T
    nearest = ranking.topk(BANK_NEIGHBOURS, dim=1, largest=False).indices  # (B, k)
    return (codes[:, None, :] - bank[nearest]).pow(2).sum(dim=2).sqrt().mean(dim=1)


def recon_nll(x: torch.Tensor, recon: torch.Tensor, kind: str, sigma: float) -> torch.Tensor:
    """Reconstruction negative log-likelihood per image, in nats (up to a constant).

    mse: Gaussian decoder with fixed σ, SSE / (2σ²). bce: Bernoulli decoder, summed binary cross
    entropy. Both are sums over pixels, like the KL is a sum over latent dimensions, so β = 1 is
    the true ELBO and β means the same at every image size.
    """
    x, recon = x.float(), recon.float()
    if kind == "mse":
        return (x - recon).pow(2).flatten(1).sum(dim=1) / (2 * sigma**2)
    if kind == "bce":
        # Written out rather than F.binary_cross_entropy, which refuses to run under CUDA autocast.
        r = recon.clamp(1e-6, 1 - 1e-6)
        return -(x * r.log() + (1 - x) * (1 - r).log()).flatten(1).sum(dim=1)
    raise UserError(f"unknown recon_loss {kind!r} (mse or bce)")


@dataclass
class StepOutput:
    """One training-mode forward pass, in the terms the shared training loop needs."""

    objective: torch.Tensor  # (B,) what the optimiser minimises, per image (nats)
    recon: torch.Tensor  # (B,) reconstruction NLL per image; early stopping watches its val mean
    recon_image: torch.Tensor  # (B, C, H, W)
    terms: dict[str, torch.Tensor]  # (B,) per-image terms to average and log: kl | vq_loss, commitment
    latent_stats: torch.Tensor  # summed over the batch: KL per dimension (VAE) or code counts (VQ)


@dataclass
class LatentReport:
    """What the latent space looks like on clean validation crops, for the analyst."""

    kind: str  # kl_per_dim | codebook_usage
    table: pd.DataFrame
    collapsed: bool
    warning: str = ""
    summary: dict[str, float] = field(default_factory=dict)


def squared_error(x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image (pixels in [0, 1]): the unit-free number shown in progress."""
    return F.mse_loss(recon.float(), x.float(), reduction="none").mean(dim=(1, 2, 3))
