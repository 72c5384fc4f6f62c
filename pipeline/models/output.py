"""What every model returns in eval mode: the one output spec for scoring, calibration and export."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

FEATURE_CHANNELS = 3  # channels of feature_maps (models/featvae.py FEATURE_MAPS); a head's map has one


class ModelOutput(NamedTuple):
    """A ConvVAE, a VQ-VAE or the family router on a float (B, 1, S, S) batch in [0, 1]."""

    # (B, 1, S, S) reconstruction in [0, 1], from the deterministic path (μ / codes); an ensemble's
    # (pipeline/ensemble.py) has one channel per member, and so has its error_ref
    recon: torch.Tensor
    latent_score: torch.Tensor  # (B,) KL per image (VAE) or farthest encoder vector from its code (VQ)
    error_ref: torch.Tensor  # (B, 1 or members, S, S) mean squared error of clean crops per pixel
    family: torch.Tensor  # (B,) int64 index of the family model that scored the image; 0 without families
    anomaly_map: torch.Tensor | None = None  # (B, 1, S, S) defect probability from a defect head; None without
    # (B,) distance of the latent code to the nearest clean training code (models/blocks.py:
    # bank_distance); every model has one, None only in a hand-built output
    latent_knn: torch.Tensor | None = None
    # (B, 3, S, S) a feature-space model's maps (models/featvae.py FEATURE_MAPS: squared error,
    # 1 - cosine, nearest clean patch), upsampled to the crop; None from a pixel model
    feature_maps: torch.Tensor | None = None

    @property
    def mean_recon(self) -> torch.Tensor:
        """(B, 1, S, S): the reconstruction as one image (an ensemble's members averaged)."""
        return self.recon.mean(dim=1, keepdim=True)

    @classmethod
    def of(cls, outputs: Sequence[torch.Tensor]) -> "ModelOutput":
        """Any model's outputs, named: ours, or the registry copy's plain tuple (recon, latent score,
        error reference, family, then the optional ones present: the head's map (4-D, one channel),
        latent_knn (1-D) and the feature maps (4-D, FEATURE_CHANNELS channels))."""
        if isinstance(outputs, cls):
            return outputs
        recon, latent, error_ref, family, *optional = outputs
        maps = [t for t in optional if t.ndim == 4 and t.shape[1] != FEATURE_CHANNELS]
        features = [t for t in optional if t.ndim == 4 and t.shape[1] == FEATURE_CHANNELS]
        per_image = [t for t in optional if t.ndim == 1]
        return cls(recon, latent, error_ref, family, maps[0] if maps else None, per_image[0] if per_image else None,
                   features[0] if features else None)


class AsTuple(nn.Module):
    """The exported form of a model: the same outputs as a plain tuple in ModelOutput's field order,
    absent ones left out (torch.export serialises a NamedTuple output only through a private registry)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t for t in self.model(x) if t is not None)


def single_family(x: torch.Tensor) -> torch.Tensor:
    """The family output of a model trained on one family: 0 for every image."""
    return torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
