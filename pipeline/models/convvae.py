"""Convolutional β-VAE: conv encoder -> (μ, log σ²) -> reparameterised z -> conv decoder."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.config import ModelConfig


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) || N(0, 1)) for each latent dimension, closed form: ½(μ² + σ² − log σ² − 1)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0)


@dataclass
class VAEOutput:
    """Named outputs of one training forward pass."""

    recon: torch.Tensor  # (B, C, H, W) in [0, 1]
    mu: torch.Tensor  # (B, D)
    logvar: torch.Tensor  # (B, D)


def _down(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2))


def _up(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2))


class ConvVAE(nn.Module):
    """β-VAE for square grayscale crops whose side is divisible by 2**len(channels)."""

    def __init__(self, cfg: ModelConfig, image_size: int, in_channels: int = 1) -> None:
        super().__init__()
        depth = len(cfg.channels)
        if image_size % 2**depth:
            raise ValueError(f"image_size {image_size} must be divisible by {2**depth} for {depth} conv stages")
        self.latent_dim, self.recon_sigma = cfg.latent_dim, cfg.recon_sigma
        self.grid = image_size // 2**depth
        widths = (in_channels, *cfg.channels)
        self.encoder = nn.Sequential(*[_down(a, b) for a, b in zip(widths[:-1], widths[1:])], nn.Flatten())
        flat = cfg.channels[-1] * self.grid**2
        self.to_stats = nn.Linear(flat, 2 * cfg.latent_dim)
        self.from_latent = nn.Linear(cfg.latent_dim, flat)
        rev = widths[::-1]
        ups = [_up(a, b) for a, b in zip(rev[:-2], rev[1:-1])]
        self.decoder = nn.Sequential(*ups, nn.ConvTranspose2d(rev[-2], in_channels, 4, stride=2, padding=1), nn.Sigmoid())
        # Mean squared error per pixel on clean training crops, set after training. Part of the
        # exported model, so a registry-loaded model normalises errors exactly as calibration did.
        self.register_buffer("error_ref", torch.ones(1, in_channels, image_size, image_size))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.to_stats(self.encoder(x)).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.from_latent(z).view(z.shape[0], -1, self.grid, self.grid)
        return self.decoder(h)

    def sample_forward(self, x: torch.Tensor) -> VAEOutput:
        """Training pass: reparameterised sample z = μ + σ·ε."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return VAEOutput(self.decode(z), mu, logvar)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inference pass (what the logged model exports): reconstruction from μ, KL per image,
        and the clean per-pixel error reference (broadcast to the batch)."""
        mu, logvar = self.encode(x)
        return self.decode(mu), kl_per_dim(mu, logvar).sum(dim=1), self.error_ref.expand(x.shape[0], -1, -1, -1)


def vae_loss_terms(x: torch.Tensor, out: VAEOutput, recon_sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image reconstruction NLL (Gaussian, fixed σ; nats up to a constant) and KL per dim."""
    recon = (x - out.recon).pow(2).flatten(1).sum(dim=1) / (2 * recon_sigma**2)
    return recon, kl_per_dim(out.mu, out.logvar)
