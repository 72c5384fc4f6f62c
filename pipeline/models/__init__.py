"""Model families behind one small interface: build_model(cfg, image_size)."""

from __future__ import annotations

from torch import nn

from pipeline.config import ModelConfig
from pipeline.models.convvae import ConvVAE, VAEOutput, kl_per_dim, vae_loss_terms

__all__ = ["ConvVAE", "VAEOutput", "build_model", "kl_per_dim", "vae_loss_terms"]


def build_model(cfg: ModelConfig, image_size: int) -> nn.Module:
    if cfg.model_type == "convvae":
        return ConvVAE(cfg, image_size)
    raise ValueError(f"unknown model_type {cfg.model_type!r}")
