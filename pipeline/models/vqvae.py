"""VQ-VAE: conv encoder -> a spatial grid of vectors, each snapped to its nearest codebook entry
(straight-through gradient) -> conv decoder. Codebook learned by loss or by EMA, with dead-code
restart. A crack or a loose connector has no clean code to snap to, so it reconstructs badly."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.config import ModelConfig
from pipeline.errors import UserError
from pipeline.images import float_batches
from pipeline.models.blocks import (
    LatentReport,
    StepOutput,
    bank_distance,
    check_size,
    down_stack,
    error_reference,
    latent_bank,
    recon_nll,
    up_stack,
)
from pipeline.models.output import ModelOutput, single_family

USAGE_DECAY = 0.9  # EMA over batches of each code's share of assignments; ~10 batches of memory
CODEBOOK_COLLAPSE_WARNING = ("codebook collapse: clean crops use fewer than 2 codes (perplexity < 2); "
                             "the decoder sees one vector everywhere. Enable dead-code restart or use EMA updates.")


def perplexity(counts: torch.Tensor) -> float:
    """exp(entropy) of the code-assignment distribution: the effective number of codes in use."""
    p = counts.double() / counts.sum().clamp(min=1)
    return float(torch.special.entr(p).sum().exp())


def codebook_usage(counts: torch.Tensor) -> float:
    """Fraction of codes assigned at least once."""
    return float((counts > 0).double().mean())


@dataclass
class Quantized:
    quantized: torch.Tensor  # (B, D, h, w) straight-through: forward = code, backward = identity to z
    indices: torch.Tensor  # (B, h, w)
    codebook_loss: torch.Tensor  # (B,) ||sg[z] - e||², mean over the grid (0 with EMA updates)
    commitment: torch.Tensor  # (B,) ||z - sg[e]||², mean over the grid
    distance: torch.Tensor  # (B, h, w) squared distance from z to its code
    counts: torch.Tensor  # (K,) assignments in this batch


class VectorQuantizer(nn.Module):
    """Nearest-neighbour codebook (van den Oord et al. 2017). update="ema" moves codes to the
    running mean of their assigned vectors (Razavi et al. 2019); update="loss" learns them by
    gradient. Codes whose running share of assignments falls under dead_code_threshold / K are
    re-seeded from random encoder outputs of the current batch (0 disables)."""

    def __init__(self, num_codes: int, dim: int, update: str = "ema", decay: float = 0.99,
                 dead_code_threshold: float = 0.05) -> None:
        super().__init__()
        if update not in ("ema", "loss"):
            raise UserError(f"unknown codebook_update {update!r} (ema or loss)")
        self.update, self.decay, self.dead_code_threshold = update, decay, dead_code_threshold
        init = torch.randn(num_codes, dim) * 0.1
        if update == "ema":
            self.register_buffer("codebook", init)
            self.register_buffer("ema_count", torch.ones(num_codes))
            self.register_buffer("ema_sum", init.clone())
        else:
            self.codebook = nn.Parameter(init)
        # Starts at zero: codes the first batch does not use are seeded from it (data-dependent init).
        self.register_buffer("usage", torch.zeros(num_codes))

    @property
    def num_codes(self) -> int:
        return self.codebook.shape[0]

    def nearest(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Index of and squared distance to the nearest code for each row of flat (N, D)."""
        cb = self.codebook.detach()
        d = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ cb.t() + cb.pow(2).sum(1)
        dist, idx = d.min(dim=1)
        return idx, dist.clamp(min=0)

    def forward(self, z: torch.Tensor) -> Quantized:
        b, d, h, w = z.shape
        with torch.autocast(z.device.type, enabled=False):  # distances need float32
            z = z.float()
            flat = z.permute(0, 2, 3, 1).reshape(-1, d)
            idx, dist = self.nearest(flat.detach())
            q = F.embedding(idx, self.codebook).view(b, h, w, d).permute(0, 3, 1, 2)
            commitment = (z - q.detach()).pow(2).mean(dim=(1, 2, 3))
            codebook_loss = (q - z.detach()).pow(2).mean(dim=(1, 2, 3)) if self.update == "loss" else torch.zeros_like(commitment)
            # index_add, not bincount: a fixed output shape keeps the model exportable (torch.export)
            counts = torch.zeros(self.num_codes, device=z.device).index_add_(0, idx, torch.ones_like(dist))
            if self.training:
                self._learn(flat.detach(), idx, counts)
            quantized = z + (q - z).detach()
        return Quantized(quantized, idx.view(b, h, w), codebook_loss, commitment, dist.view(b, h, w), counts)

    @torch.no_grad()
    def _learn(self, flat: torch.Tensor, idx: torch.Tensor, counts: torch.Tensor) -> None:
        if self.update == "ema":
            self.ema_count.mul_(self.decay).add_(counts, alpha=1 - self.decay)
            sums = torch.zeros_like(self.ema_sum).index_add_(0, idx, flat)
            self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            total = self.ema_count.sum()
            smoothed = (self.ema_count + 1e-5) / (total + self.num_codes * 1e-5) * total  # Laplace: no /0
            self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(1))
        self.usage.mul_(USAGE_DECAY).add_(counts / counts.sum(), alpha=1 - USAGE_DECAY)
        if self.dead_code_threshold > 0:
            self._restart_dead(flat)

    @torch.no_grad()
    def _restart_dead(self, flat: torch.Tensor) -> None:
        dead = torch.nonzero(self.usage < self.dead_code_threshold / self.num_codes).flatten()
        if len(dead) == 0:
            return
        picks = flat[torch.randint(len(flat), (len(dead),), device=flat.device)]
        self.codebook.data[dead] = picks
        if self.update == "ema":
            self.ema_sum[dead] = picks
            self.ema_count[dead] = 1.0
        self.usage[dead] = 1.0 / self.num_codes  # a grace period before it can be declared dead again


class VQVAE(nn.Module):
    """VQ-VAE for square grayscale crops whose side is divisible by 2**len(channels);
    latent_dim is the code vector size, codebook_size the number of codes."""

    uses_beta = False
    # A 16x16 grid at 128 px: at 8x8 clean reconstructions were too coarse.
    default_channels = (32, 64, 128)
    latent_score_name = "codebook_dist"

    def __init__(self, cfg: ModelConfig, image_size: int, in_channels: int = 1) -> None:
        super().__init__()
        self.cfg = cfg
        channels = cfg.channels or self.default_channels
        check_size(image_size, len(channels))
        widths = (in_channels, *channels)
        self.encoder = nn.Sequential(*down_stack(widths), nn.Conv2d(channels[-1], cfg.latent_dim, 1))
        self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.latent_dim, cfg.codebook_update, cfg.ema_decay,
                                         cfg.dead_code_threshold)
        self.decoder = nn.Sequential(nn.Conv2d(cfg.latent_dim, channels[-1], 1), *up_stack(widths))
        self.register_buffer("error_ref", error_reference(in_channels, image_size))
        self.register_buffer("latent_bank", latent_bank(cfg.latent_dim))

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim) the code latent_knn compares: the encoder's vectors averaged over the grid."""
        return self.encoder(x).mean(dim=(2, 3))

    def training_step(self, x: torch.Tensor, beta: float = 0.0) -> StepOutput:
        """objective = recon NLL + (codebook + commitment_cost · commitment) / (2σ²) per latent
        element times the pixel count: the VQ-VAE paper's balance, in the recon term's units."""
        q = self.quantizer(self.encoder(x))
        recon_image = self.decoder(q.quantized)
        recon = recon_nll(x, recon_image, self.cfg.recon_loss, self.cfg.recon_sigma)
        vq_loss = q.codebook_loss + self.cfg.commitment_cost * q.commitment
        scale = x[0].numel() / (2 * self.cfg.recon_sigma**2)
        terms = {"vq_loss": vq_loss, "commitment": q.commitment}
        return StepOutput(recon + scale * vq_loss, recon, recon_image, terms, q.counts)

    @staticmethod
    def latent_metrics(latent_stats: torch.Tensor, n_images: int) -> dict[str, float]:
        return {"perplexity": perplexity(latent_stats), "codebook_usage": codebook_usage(latent_stats)}

    @torch.inference_mode()
    def latent_report(self, clean: torch.Tensor, batch_size: int = 64) -> LatentReport:
        """How often each code is used on clean uint8 crops (model in eval mode)."""
        counts = torch.zeros(self.cfg.codebook_size)
        for x in float_batches(clean, batch_size):
            counts += self.quantizer(self.encoder(x)).counts
        table = pd.DataFrame({"code": range(len(counts)), "count": counts.long().tolist()})
        table["share"] = table["count"] / max(1, int(table["count"].sum()))
        ppl = perplexity(counts)
        collapsed = ppl < 2.0
        return LatentReport("codebook_usage", table, collapsed, CODEBOOK_COLLAPSE_WARNING if collapsed else "",
                            {"perplexity": ppl, "codebook_usage": codebook_usage(counts)})

    @staticmethod
    def latent_score(x: torch.Tensor, out: ModelOutput, cfg: ModelConfig) -> torch.Tensor:
        """The farthest encoder vector from its nearest code: how far off the clean codebook it sits."""
        return out.latent_score

    def forward(self, x: torch.Tensor) -> ModelOutput:
        """Inference pass (what the logged model exports): reconstruction, the largest distance
        from an encoder vector to its code per image, the clean per-pixel error reference and the
        family index (0) and the grid-averaged code's distance to the nearest clean training codes."""
        z = self.encoder(x)
        q = self.quantizer(z)
        return ModelOutput(self.decoder(q.quantized), q.distance.flatten(1).amax(dim=1),
                           self.error_ref.expand(x.shape[0], -1, -1, -1), single_family(x),
                           latent_knn=bank_distance(z.mean(dim=(2, 3)), self.latent_bank))
