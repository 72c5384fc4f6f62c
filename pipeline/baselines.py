"""The baselines an inspection team would otherwise use, fitted on the same clean training crops
as panelscan: PCA reconstruction error (32 components), mean distance to the 5 nearest clean
crops on 32x32 pixels, isolation forest on PCA features (scikit-learn), and PatchCore (Roth et
al. 2022, as anomalib runs it): a greedy coreset of the clean crops' pretrained-backbone patch
features, an image scored by its patch farthest from that bank. Per family, each is fitted on
one family's crops and scaled by its clean val median, as panelscan's models are."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import NearestNeighbors
from torch.nn import functional as F

from pipeline.backbone import LITE0, Backbone, load_backbone
from pipeline.images import float_batches, to_float
from pipeline.models.featvae import CORESET_POOL, FEATURE_BATCH, PATCH_BANK_ROWS, greedy_coreset, nearest_patch_distance
from pipeline.scoring import clean_medians

BASELINES = ("pca_recon", "knn5_pixels", "iforest_pca", "patchcore")
PATCHCORE_SIDE = 256  # smaller crops are enlarged to this side (anomalib's PatchCore input) for the backbone


def _flat(x: torch.Tensor, side: int | None = None) -> np.ndarray:
    x = to_float(x)
    if side and x.shape[-1] != side:
        x = F.interpolate(x, size=(side, side), mode="area")
    return x.flatten(1).numpy()


@torch.inference_mode()
def _patches(backbone: Backbone, crops: torch.Tensor) -> torch.Tensor:
    """(N, h * w, C) raw backbone features of uint8 crops (PatchCore does not standardise)."""
    out = []
    for x in float_batches(crops, FEATURE_BATCH):
        if x.shape[-1] < PATCHCORE_SIDE:
            x = F.interpolate(x, size=(PATCHCORE_SIDE, PATCHCORE_SIDE), mode="bilinear", align_corners=False)
        out.append(backbone(x).flatten(2).transpose(1, 2))
    return torch.cat(out)


def patchcore_scores(train: torch.Tensor, crops: dict[str, torch.Tensor], seed: int = 0,
                     backbone: str = LITE0, weights: str = "") -> dict[str, np.ndarray]:
    """split -> crop scores: the largest distance of any patch of the crop to its nearest row
    of a PATCH_BANK_ROWS greedy coreset drawn from CORESET_POOL random clean training patches."""
    net = load_backbone(backbone, weights)
    patches = _patches(net, train).flatten(0, 1)
    pool = patches[torch.randperm(len(patches), generator=torch.Generator().manual_seed(seed))[:CORESET_POOL]]
    bank = pool[greedy_coreset(pool, PATCH_BANK_ROWS, seed)]
    out = {}
    for split, x in crops.items():
        scores = [nearest_patch_distance(p, bank).max() for p in _patches(net, x)] if len(x) else []
        out[split] = torch.stack(scores).numpy() if scores else np.zeros(0)
    return out


def baseline_scores(train: torch.Tensor, crops: dict[str, torch.Tensor], seed: int = 0,
                    backbone: str = LITE0, weights: str = "") -> dict[str, dict[str, np.ndarray]]:
    """baseline -> split -> crop scores; each fitted on the clean training crops only (PatchCore on
    `backbone`, the feature VAE's when it has one, so both read the same pretrained features)."""
    flat_train = _flat(train)
    pca = PCA(n_components=min(32, len(flat_train) - 1), random_state=seed).fit(flat_train)
    knn = NearestNeighbors(n_neighbors=min(5, len(train))).fit(_flat(train, 32))
    forest = IsolationForest(n_estimators=200, random_state=seed).fit(pca.transform(flat_train))
    out: dict[str, dict[str, np.ndarray]] = {name: {} for name in BASELINES}
    for split, x in crops.items():
        flat = _flat(x)
        projected = pca.transform(flat)
        out["pca_recon"][split] = ((flat - pca.inverse_transform(projected)) ** 2).mean(axis=1)
        out["knn5_pixels"][split] = knn.kneighbors(_flat(x, 32))[0].mean(axis=1)
        out["iforest_pca"][split] = -forest.score_samples(projected)
    out["patchcore"] = patchcore_scores(train, crops, seed, backbone, weights)
    return out


def per_family_baseline_scores(train: torch.Tensor, train_families: np.ndarray, val: torch.Tensor,
                               val_families: np.ndarray, clean_val: np.ndarray, test: torch.Tensor,
                               test_families: np.ndarray, names: tuple[str, ...], seed: int = 0,
                               backbone: str = LITE0, weights: str = "") -> dict[str, np.ndarray]:
    """baseline -> test crop scores with the treatment panelscan's families get: each baseline
    fitted on one family's clean training crops, scores divided by that family's clean val
    median. Test crops go by their metadata family (panelscan routes by its classifier)."""
    out = {name: np.full(len(test), np.nan) for name in BASELINES}
    for family in names:
        in_val, in_test = val_families == family, test_families == family
        scores = baseline_scores(train[torch.from_numpy(train_families == family)],
                                 {"val": val[torch.from_numpy(in_val)], "test": test[torch.from_numpy(in_test)]}, seed,
                                 backbone, weights)
        for name in BASELINES:
            unit = clean_medians(scores[name]["val"], np.zeros(in_val.sum(), dtype=int), clean_val[in_val], 1)[0]
            out[name][in_test] = scores[name]["test"] / unit
    return out
