"""Convolutional β-VAE: conv encoder -> (μ, log σ²) -> reparameterised z -> conv decoder."""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from pipeline.config import ModelConfig
from pipeline.images import float_batches
from pipeline.models.blocks import (
    CodeProjection,
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

ACTIVE_UNIT_KL = 0.1  # nats (~0.14 bits): a latent dimension carrying less KL than this is inactive
COLLAPSE_WARNING = ("posterior collapse: every latent dimension's KL is below the active-unit floor; "
                    "the decoder ignores z. Lower beta, use a warm-up/cyclical schedule or free bits.")


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) || N(0, 1)) for each latent dimension, closed form: ½(μ² + σ² − log σ² − 1)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0)


def free_bits_kl(kl: torch.Tensor, floor: float) -> torch.Tensor:
    """KL term for the loss, per image: each dimension's batch-mean KL is raised to the floor
    (Kingma et al. 2016), so dimensions under it get no gradient towards the prior."""
    if floor <= 0:
        return kl.sum(dim=1)
    return kl.mean(dim=0).clamp(min=floor).sum().expand(kl.shape[0])


def kl_report(kl: list[float]) -> LatentReport:
    """The analyst's table of mean KL per latent dimension: which are active, and collapse."""
    table = pd.DataFrame({"dim": range(len(kl)), "kl": kl})
    table["active"] = table["kl"] > ACTIVE_UNIT_KL
    collapsed = not table["active"].any()
    return LatentReport("kl_per_dim", table, collapsed, COLLAPSE_WARNING if collapsed else "",
                        {"active_units": float(table["active"].sum())})


class ConvVAE(nn.Module):
    """β-VAE for square grayscale crops whose side is divisible by 2**len(channels)."""

    uses_beta = True
    default_channels = (32, 64, 128, 128)  # an 8x8 grid at 128 px before the dense latent
    latent_score_name = None  # its ELBO was a candidate no data set picked (benchmarks/HISTORY.md)

    def __init__(self, cfg: ModelConfig, image_size: int, in_channels: int = 1) -> None:
        super().__init__()
        self.cfg = cfg
        channels = cfg.channels or self.default_channels
        self.grid = check_size(image_size, len(channels))
        widths = (in_channels, *channels)
        self.encoder = nn.Sequential(*down_stack(widths), nn.Flatten())
        flat = channels[-1] * self.grid**2
        self.to_stats = nn.Linear(flat, 2 * cfg.latent_dim)
        self.from_latent = nn.Linear(cfg.latent_dim, flat)
        self.decoder = nn.Sequential(*up_stack(widths))
        self.register_buffer("error_ref", error_reference(in_channels, image_size))
        self.code_projection = CodeProjection(flat)
        self.register_buffer("latent_bank", latent_bank(self.code_projection.axes.shape[1]))

    def code_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, flat) the encoder's last grid, flattened: what code_projection's axes are fitted on."""
        return self.encoder(x)

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """(B, components) the code latent_knn compares: the last grid on its principal axes."""
        return self.code_projection(self.encoder(x))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.stats(self.encoder(x))

    def stats(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """μ and the clamped log-variance from the encoder's flattened grid."""
        mu, logvar = self.to_stats(features).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.from_latent(z).view(z.shape[0], -1, self.grid, self.grid)
        return self.decoder(h)

    def training_step(self, x: torch.Tensor, beta: float) -> StepOutput:
        """Reparameterised sample z = μ + σ·ε; objective = recon NLL + β·KL (free bits applied)."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        recon_image = self.decode(z)
        recon = recon_nll(x, recon_image, self.cfg.recon_loss, self.cfg.recon_sigma)
        kl = kl_per_dim(mu.float(), logvar.float())
        objective = recon + beta * free_bits_kl(kl, self.cfg.free_bits)
        return StepOutput(objective, recon, recon_image, {"kl": kl.sum(dim=1)}, kl.detach().sum(dim=0))

    @staticmethod
    def latent_metrics(latent_stats: torch.Tensor, n_images: int) -> dict[str, float]:
        return {"active_units": float((latent_stats / n_images > ACTIVE_UNIT_KL).sum())}

    @torch.inference_mode()
    def latent_report(self, clean: torch.Tensor, batch_size: int = 64) -> LatentReport:
        """Mean KL per latent dimension over clean uint8 crops (model in eval mode)."""
        total = torch.zeros(self.cfg.latent_dim)
        for x in float_batches(clean, batch_size):
            mu, logvar = self.encode(x)
            total += kl_per_dim(mu, logvar).sum(dim=0)
        return kl_report((total / max(1, len(clean))).tolist())

    def forward(self, x: torch.Tensor) -> ModelOutput:
        """Inference pass (what the logged model exports): reconstruction from μ, KL per image,
        the clean per-pixel error reference (broadcast to the batch), the family index (0) and
        the code's distance to the nearest clean training codes."""
        features = self.encoder(x)
        mu, logvar = self.stats(features)
        return ModelOutput(self.decode(mu), kl_per_dim(mu, logvar).sum(dim=1),
                           self.error_ref.expand(x.shape[0], -1, -1, -1), single_family(x),
                           latent_knn=bank_distance(self.code_projection(features), self.latent_bank))
