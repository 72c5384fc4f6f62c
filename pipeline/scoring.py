"""Error maps -> image scores and heatmaps. The one inference path for calibration and scoring.

The model is anything that maps a float (B, 1, S, S) batch in [0, 1] to a ModelOutput
(pipeline/models/output.py): a trained ConvVAE / VQ-VAE, the family router, or the same network
loaded back from the MLflow registry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from pipeline.config import ModelConfig, ScoreConfig
from pipeline.images import float_batches
from pipeline.models import FeatureVAE, ModelOutput, latent_score_name, model_kind

# From the error map alone. The dark_* scores keep the residual's sign: how much darker than its
# reconstruction an area is, averaged over a blur before the max, so a crack's or an inactive
# region's missing brightness adds up while speckle of either sign cancels (EL and backlit panel
# images show defects dark). Validation decides whether they beat the unsigned ones.
# dark_norm_area_max is the same signed residual in units of the clean RMS error at each pixel (a
# z-score of darkness): busbars and edges that always reconstruct worse count for less.
MAP_SCORES = ("blur_max", "norm_blur_max", "dark_blur_max", "dark_area_max", "dark_norm_area_max")
# From the model's latent code: its distance to the nearest clean training code (each
# family's model keeps its own bank). It sees what is unlike every clean panel as a whole even
# where clean pixel error is high all over (ELPV's poly cells).
LATENT_KNN = "latent_knn"

# Combined candidates: the mean of two complementary views, each in units of its family's clean
# median. A dark area (missing brightness) with error beyond what clean panels show at that pixel:
# on ELPV validation their mean beat either alone (per-family models: .845 vs .840 / .796). A dark
# area with the latent distance to clean codes: what grainy poly cells pick (README, how each
# default was chosen).
PIXEL_COMBINED: dict[str, tuple[str, str]] = {"dark_norm_mean": ("dark_area_max", "norm_blur_max"),
                                              "dark_knn_mean": ("dark_area_max", LATENT_KNN)}

# A feature-space model's candidates (models/featvae.py): the peak of each of its maps, the mean
# feature error (the ELBO's reconstruction half), its KL and latent distance, and the VAE's
# reconstruction error combined with the nearest-clean-patch distance (two views of one feature map).
FEATURE_SCORES = ("feature_sq_max", "feature_cos_max", "patch_knn_max", "feature_sq_mean")
FEATURE_COMBINED: dict[str, tuple[str, str]] = {"feature_knn_mean": ("feature_sq_max", "patch_knn_max"),
                                                "feature_cos_knn_mean": ("feature_cos_max", "patch_knn_max")}
COMBINED = PIXEL_COMBINED | FEATURE_COMBINED  # scaled_scores adds those whose parts a model has

# From a defect head's map (pipeline/defect_head.py): its peak after a small and a wide blur.
HEAD_SCORES = ("head_blur_max", "head_area_max")


def score_names(model_type: str, head: bool = False, features: bool = False) -> tuple[str, ...]:
    """Candidate scores for a model type: the error-map scores, its latent score, the latent
    code's distance to clean codes, the defect head's scores when it has one, and the combined ones;
    for a feature-space model (features), its feature-map scores, KL, latent distance and combined ones."""
    if features:
        return (*FEATURE_SCORES, FeatureVAE.latent_score_name, LATENT_KNN, *FEATURE_COMBINED)
    latent = latent_score_name(model_type)
    return (*MAP_SCORES, *([latent] if latent else []), LATENT_KNN, *(HEAD_SCORES if head else ()), *PIXEL_COMBINED)


def config_score_names(cfg: ModelConfig) -> tuple[str, ...]:
    """score_names for the model a config builds."""
    return score_names(cfg.model_type, cfg.head_steps > 0 and cfg.backbone == "none", cfg.backbone != "none")


@dataclass
class ScoredBatch:
    """Every candidate score per image, plus the blurred error maps (heatmaps) and, for a model with
    a defect head, the head's blurred maps."""

    scores: dict[str, np.ndarray]  # score name -> (N,), raw (scaled_scores makes families comparable)
    heatmaps: torch.Tensor  # (N, S, S) float, blurred error beyond what clean panels show
    family: np.ndarray  # (N,) index of the family (model) that scored each crop; 0 without families
    head_maps: torch.Tensor | None = None  # (N, S, S) blurred defect-head probability; None without a head

    def maps(self, score_name: str) -> torch.Tensor:
        """The maps that show where `score_name` looks: the head's for a head score, else the error's
        (a flagged image's heatmap and box point at what raised its score)."""
        return self.head_maps if score_name in HEAD_SCORES and self.head_maps is not None else self.heatmaps

    def take(self, pick: np.ndarray) -> "ScoredBatch":
        """The crops where pick (bool, (N,)) is true; maps too when they were kept."""
        mask = torch.from_numpy(np.array(pick, dtype=bool))
        def kept(maps: torch.Tensor | None) -> torch.Tensor | None:
            return maps[mask] if maps is not None and len(maps) else maps
        return ScoredBatch({name: values[pick] for name, values in self.scores.items()}, kept(self.heatmaps),
                           self.family[pick], kept(self.head_maps))


def blur(error: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (B, C, H, W) maps with reflected borders, as torchvision's gaussian_blur,
    but as two 1-D passes of a depthwise convolution (every map its own channel): on CPU that ran
    7x faster than a one-channel convolution over the batch (0.08 vs 0.74 ms per 128 px map)."""
    if sigma <= 0:
        return error
    size = 2 * min(math.ceil(3 * sigma), min(error.shape[-2:]) - 1) + 1  # reflection needs pad < side
    taps = torch.exp(-0.5 * (torch.arange(size, dtype=error.dtype, device=error.device) - size // 2).pow(2) / sigma**2)
    taps = taps / taps.sum()
    pad, (b, c, h, w) = size // 2, error.shape
    maps = F.pad(error, (pad, pad, pad, pad), mode="reflect").reshape(1, b * c, h + 2 * pad, w + 2 * pad)
    maps = F.conv2d(maps, taps.view(1, 1, 1, size).expand(b * c, 1, 1, size), groups=b * c)
    maps = F.conv2d(maps, taps.view(1, 1, size, 1).expand(b * c, 1, size, 1), groups=b * c)
    return maps.reshape(b, c, h, w)


def _score_blur(maps: torch.Tensor, shown: torch.Tensor | None, cfg: ScoreConfig) -> torch.Tensor:
    """maps blurred for a score (score.blur_sigma); the heatmap, when one was made, if the sigmas agree."""
    return shown if shown is not None and cfg.blur_sigma == cfg.heatmap_sigma else blur(maps, cfg.blur_sigma)


def _member_max(maps: torch.Tensor) -> torch.Tensor:
    """(B, members, S, S) maps -> (B,): each member's largest value, averaged over the members.
    Not the peak of the members' mean map: on five set-splits (session 27, benchmarks/HISTORY.md)
    that was level on val overall and lower on both ELPV splits."""
    return maps.flatten(2).amax(dim=2).mean(dim=1)


def _floored(error_ref: torch.Tensor, eps: float) -> torch.Tensor:
    """The clean squared error per pixel plus eps of its mean: a pixel clean crops happen to
    reconstruct perfectly must not turn any error there into a huge ratio."""
    return error_ref + eps * error_ref.mean(dim=(2, 3), keepdim=True)


def score_maps(x: torch.Tensor, out: ModelOutput, cfg: ScoreConfig, model_cfg: ModelConfig,
               keep_heatmaps: bool = True, only: frozenset[str] | None = None) -> ScoredBatch:
    """The candidate scores from one batch of inputs and the model's outputs: all of them, or those
    in `only` (ScoreChoice.needs: nightly scoring computes what decides and nothing else). The
    heatmap is the normalised blurred error: where this image's error exceeds what clean panels
    show at that pixel (connector edges always reconstruct worse)."""
    if out.feature_maps is not None:
        return _feature_scores(x, out, cfg, model_cfg, keep_heatmaps, only)
    # One channel per ensemble member (pipeline/ensemble.py; one for a single model): each score is
    # taken per member, then averaged over the members.
    residual = x - out.recon
    error = residual.pow(2)  # (B, members, S, S)
    normalised = error / _floored(out.error_ref, cfg.norm_eps)
    # the same error as norm_blur_max, smoothed to show areas; not made when no map is kept
    heat = blur(normalised, cfg.heatmap_sigma) if keep_heatmaps else None
    kind = model_kind(model_cfg)
    makers: dict[str, Callable[[], torch.Tensor]] = {
        "blur_max": lambda: _member_max(blur(error, cfg.blur_sigma)),
        "norm_blur_max": lambda: _member_max(_score_blur(normalised, heat, cfg)),
        "dark_blur_max": lambda: _member_max(blur(-residual, cfg.blur_sigma)),
        "dark_area_max": lambda: _member_max(blur(-residual, cfg.area_sigma)),
        # the residual in units of the clean RMS error at that pixel
        "dark_norm_area_max": lambda: _member_max(blur(-residual / _floored(out.error_ref, cfg.dark_norm_eps).sqrt(),
                                                       cfg.dark_norm_sigma)),
    }
    if kind.latent_score_name:
        makers[kind.latent_score_name] = lambda: kind.latent_score(x, out, model_cfg)
    if out.latent_knn is not None:
        makers[LATENT_KNN] = lambda: out.latent_knn
    head_heat = None
    if out.anomaly_map is not None:  # the head says where defects are better than raw error does
        head_heat = blur(out.anomaly_map, cfg.heatmap_sigma) if keep_heatmaps else None
        makers["head_blur_max"] = lambda: _member_max(_score_blur(out.anomaly_map, head_heat, cfg))
        makers["head_area_max"] = lambda: _member_max(blur(out.anomaly_map, cfg.area_sigma))
    names = [name for name in makers if only is None or name in only]
    # One copy to the host per batch: every score, the maps (only if kept) and the family index.
    host = torch.stack([makers[n]().double() for n in names]).cpu().numpy() if names else np.zeros((0, len(x)))
    def kept(maps: torch.Tensor | None) -> torch.Tensor:  # the members' mean; none kept: an empty stack
        return maps.mean(dim=1).cpu() if maps is not None else torch.zeros(0, *x.shape[-2:])
    return ScoredBatch(dict(zip(names, host)), kept(heat), out.family.long().cpu().numpy(),
                       None if out.anomaly_map is None else kept(head_heat))


def _feature_scores(x: torch.Tensor, out: ModelOutput, cfg: ScoreConfig, model_cfg: ModelConfig,
                    keep_heatmaps: bool, only: frozenset[str] | None) -> ScoredBatch:
    """score_maps for a feature-space model: the peaks of its (already smooth) maps; the heatmap is
    the feature reconstruction error, so region, defect-type hint and pixel ROC-AUC read the VAE."""
    sq, cos, knn = out.feature_maps[:, 0], out.feature_maps[:, 1], out.feature_maps[:, 2]
    makers: dict[str, Callable[[], torch.Tensor]] = {
        "feature_sq_max": lambda: sq.flatten(1).amax(dim=1), "feature_cos_max": lambda: cos.flatten(1).amax(dim=1),
        "patch_knn_max": lambda: knn.flatten(1).amax(dim=1), "feature_sq_mean": lambda: sq.flatten(1).mean(dim=1),
        FeatureVAE.latent_score_name: lambda: FeatureVAE.latent_score(x, out, model_cfg),
        LATENT_KNN: lambda: out.latent_knn}
    names = [name for name in makers if only is None or name in only]
    host = torch.stack([makers[n]().double() for n in names]).cpu().numpy() if names else np.zeros((0, len(x)))
    heat = blur(sq[:, None], cfg.heatmap_sigma)[:, 0].cpu() if keep_heatmaps else torch.zeros(0, *x.shape[-2:])
    return ScoredBatch(dict(zip(names, host)), heat, out.family.long().cpu().numpy())


@torch.inference_mode()
def score_crops(model: nn.Module, crops: torch.Tensor, cfg: ScoreConfig, model_cfg: ModelConfig,
                keep_heatmaps: bool = True, only: frozenset[str] | None = None) -> ScoredBatch:
    """Score uint8 (N, 1, S, S) crops in batches on the model's device (every score computed there,
    one copy back per batch); deterministic (the model's μ path)."""
    parts: list[ScoredBatch] = []
    device = model_device(model)
    for x in float_batches(crops, cfg.batch_size, device):
        out = ModelOutput.of(model(x.contiguous(memory_format=torch.channels_last)))
        out = ModelOutput(*(None if t is None else t.float() for t in out[:3]), out.family,
                          *(None if t is None else t.float() for t in (out.anomaly_map, out.latent_knn,
                                                                       out.feature_maps)))
        parts.append(score_maps(x, out, cfg, model_cfg, keep_heatmaps, only))
    if not parts:
        size = crops.shape[-1] if crops.ndim == 4 else 0
        names = [n for n in config_score_names(model_cfg) if n not in COMBINED and (only is None or n in only)]
        return ScoredBatch({name: np.zeros(0) for name in names}, torch.zeros(0, size, size), np.zeros(0, dtype=int))
    return ScoredBatch({name: np.concatenate([p.scores[name] for p in parts]) for name in parts[0].scores},
                       torch.cat([p.heatmaps for p in parts]), np.concatenate([p.family for p in parts]),
                       None if parts[0].head_maps is None else torch.cat([p.head_maps for p in parts]))


def clean_medians(values: np.ndarray, family: np.ndarray, clean: np.ndarray, n_families: int) -> list[float]:
    """Each family's median of values over its clean crops; 1.0 where a family has no clean crop
    or a non-positive median."""
    medians = [np.median(values[clean & (family == k)]) if (clean & (family == k)).any() else 1.0
               for k in range(n_families)]
    return [float(m) if m > 0 else 1.0 for m in medians]


def fit_score_scale(scores: dict[str, np.ndarray], family: np.ndarray, clean: np.ndarray,
                    n_families: int) -> dict[str, list[float]]:
    """Per raw score, each family's median over clean (validation) crops: the unit that makes
    families comparable (clean grainy poly cells score higher than clean mono ones)."""
    return {name: clean_medians(values, family, clean, n_families) for name, values in scores.items()}


def scaled_scores(scores: dict[str, np.ndarray], family: np.ndarray,
                  scale: dict[str, list[float]]) -> dict[str, np.ndarray]:
    """Every raw score over its family's clean median, plus the combined scores whose parts are
    there: the candidates calibration chooses from. A score the scale lacks (added to panelscan
    after that calibration, so never its choice) is left out."""
    out = {name: values / np.asarray(scale[name])[family] for name, values in scores.items() if name in scale}
    for name, parts in COMBINED.items():
        if all(part in out for part in parts):
            out[name] = np.mean([out[part] for part in parts], axis=0)
    return out


def per_image_max(scores: dict[str, np.ndarray], image_keys: Sequence[str]) -> tuple[list[str], dict[str, np.ndarray]]:
    """Crop scores -> image scores: each image's max over its crops (tiles), per candidate score.
    Images come out in first-seen order; with one crop per image this is the identity."""
    table = pd.DataFrame(scores).assign(_image=list(image_keys)).groupby("_image", sort=False).max()
    return list(table.index), {name: table[name].to_numpy() for name in scores}


def worst_crop(values: np.ndarray, image_keys: Sequence[str]) -> np.ndarray:
    """Position of each image's highest-scoring crop, images in first-seen order (as per_image_max)."""
    return pd.Series(np.asarray(values)).groupby(list(image_keys), sort=False).idxmax().to_numpy()


def model_device(model: nn.Module) -> torch.device:
    """Where the model's weights are (CPU for a module without any)."""
    return next(iter(model.parameters()), torch.empty(0)).device
