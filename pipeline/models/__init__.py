"""Model families behind one small interface.

Every model maps a float (B, 1, S, S) batch in [0, 1] to (reconstruction, latent score per image,
clean error reference) in eval mode (what is exported to MLflow), and offers training_step,
latent_metrics and latent_report to the shared training loop.
"""

from __future__ import annotations

from torch import nn

from pipeline.config import ModelConfig
from pipeline.models.blocks import LatentReport, StepOutput, recon_nll
from pipeline.models.convvae import ConvVAE, free_bits_kl, kl_per_dim
from pipeline.models.vqvae import VQVAE, VectorQuantizer, codebook_usage, perplexity

__all__ = ["ConvVAE", "LatentReport", "StepOutput", "VQVAE", "VectorQuantizer", "build_model", "codebook_usage",
           "free_bits_kl", "kl_per_dim", "latent_score_name", "perplexity", "recon_nll"]

FAMILIES: dict[str, type[nn.Module]] = {"convvae": ConvVAE, "vqvae": VQVAE}


def build_model(cfg: ModelConfig, image_size: int) -> nn.Module:
    if cfg.model_type not in FAMILIES:
        raise ValueError(f"unknown model_type {cfg.model_type!r} (one of {', '.join(FAMILIES)})")
    return FAMILIES[cfg.model_type](cfg, image_size)


def latent_score_name(model_type: str) -> str:
    """Name of the score built from the model's latent output: the negative ELBO for the VAE,
    the distance to the codebook for the VQ-VAE."""
    return "codebook_dist" if model_type == "vqvae" else "elbo"
