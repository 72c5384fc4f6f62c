"""The baselines an inspection team would otherwise use, fitted on the same clean training crops
as panelscan (scikit-learn): PCA reconstruction error (32 components), mean distance to the 5
nearest clean crops on 32x32 pixels, isolation forest on PCA features. Per family, each is
fitted on one family's crops and scaled by its clean val median, as panelscan's models are."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.neighbors import NearestNeighbors
from torch.nn import functional as F

from pipeline.images import to_float
from pipeline.scoring import clean_medians

BASELINES = ("pca_recon", "knn5_pixels", "iforest_pca")


def _flat(x: torch.Tensor, side: int | None = None) -> np.ndarray:
    x = to_float(x)
    if side and x.shape[-1] != side:
        x = F.interpolate(x, size=(side, side), mode="area")
    return x.flatten(1).numpy()


def baseline_scores(train: torch.Tensor, crops: dict[str, torch.Tensor], seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """baseline -> split -> crop scores; each fitted on the clean training crops only."""
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
    return out


def per_family_baseline_scores(train: torch.Tensor, train_families: np.ndarray, val: torch.Tensor,
                               val_families: np.ndarray, clean_val: np.ndarray, test: torch.Tensor,
                               test_families: np.ndarray, names: tuple[str, ...], seed: int = 0) -> dict[str, np.ndarray]:
    """baseline -> test crop scores with the treatment panelscan's families get: each baseline
    fitted on one family's clean training crops, scores divided by that family's clean val
    median. Test crops go by their metadata family (panelscan routes by its classifier)."""
    out = {name: np.full(len(test), np.nan) for name in BASELINES}
    for family in names:
        in_val, in_test = val_families == family, test_families == family
        scores = baseline_scores(train[torch.from_numpy(train_families == family)],
                                 {"val": val[torch.from_numpy(in_val)], "test": test[torch.from_numpy(in_test)]}, seed)
        for name in BASELINES:
            unit = clean_medians(scores[name]["val"], np.zeros(in_val.sum(), dtype=int), clean_val[in_val], 1)[0]
            out[name][in_test] = scores[name]["test"] / unit
    return out
