"""Model types behind one small interface.

Every model maps a float (B, 1, S, S) batch in [0, 1] to a ModelOutput in eval mode (what is
exported to MLflow), offers training_step, latent_metrics and latent_report to the shared training
loop, and knows its own latent score (latent_score_name, latent_score) and default conv widths.
"""

from __future__ import annotations

from torch import nn

from pipeline.config import ModelConfig
from pipeline.errors import UserError
from pipeline.models.blocks import LatentReport, StepOutput, recon_nll
from pipeline.models.convvae import ConvVAE, free_bits_kl, kl_per_dim
from pipeline.models.featvae import FEATURE_MAPS, FeatureVAE
from pipeline.models.output import AsTuple, ModelOutput
from pipeline.models.vqvae import VQVAE, VectorQuantizer, codebook_usage, perplexity

__all__ = ["AsTuple", "ConvVAE", "FEATURE_MAPS", "FeatureVAE", "model_kind", "LatentReport", "ModelOutput", "StepOutput", "VQVAE", "VectorQuantizer",
           "build_model", "codebook_usage", "conv_channels", "free_bits_kl", "kl_per_dim", "latent_score_name",
           "model_class", "perplexity", "recon_nll"]

MODEL_TYPES: dict[str, type[ConvVAE] | type[VQVAE]] = {"convvae": ConvVAE, "vqvae": VQVAE}


def model_class(model_type: str) -> type[ConvVAE] | type[VQVAE]:
    if model_type not in MODEL_TYPES:
        raise UserError(f"unknown model_type {model_type!r} (one of {', '.join(MODEL_TYPES)})")
    return MODEL_TYPES[model_type]


def model_kind(cfg: ModelConfig) -> type[ConvVAE] | type[VQVAE] | type[FeatureVAE]:
    """The class a config builds: the feature-space VAE when it names a backbone, else its model type's."""
    if cfg.backbone != "none":
        if cfg.model_type != "convvae":
            raise UserError(f"model.backbone {cfg.backbone} works with the convvae model type for now "
                            f"(got {cfg.model_type}); use --model convvae or --backbone none")
        return FeatureVAE
    return model_class(cfg.model_type)


def build_model(cfg: ModelConfig, image_size: int) -> nn.Module:
    return model_kind(cfg)(cfg, image_size)


def latent_score_name(model_type: str) -> str | None:
    """Name of the score built from the model's latent output (the VQ-VAE's codebook_dist; the
    ConvVAE has none)."""
    return model_class(model_type).latent_score_name


def conv_channels(cfg: ModelConfig) -> tuple[int, ...]:
    """The conv widths a model of this config has: the config's, or its type's default."""
    return cfg.channels or model_kind(cfg).default_channels
