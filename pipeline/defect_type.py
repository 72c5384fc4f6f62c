"""Defect-type hint: which kind of defect a flagged image most likely shows (crack /
loose_connector / other), from the shape and place of its anomaly map.

A small scikit-learn logistic regression over error-map features, fitted on the labelled
validation defects at calibration time. It is stored as plain numbers in calibration.json (no
pickle) and rebuilt for scoring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch.nn import functional as F

from pipeline.labels import CRACK, LOOSE_CONNECTOR, is_defect

KNOWN_TYPES = (CRACK, LOOSE_CONNECTOR)
GRID = 8  # the anomaly map is pooled to GRID x GRID: where on the panel the defect sits
MIN_PER_CLASS = 3  # fewer labelled examples of a type: no classifier (the column stays empty)


def defect_type(label: str) -> str:
    return label if label in KNOWN_TYPES else "other"


def error_features(heatmaps: torch.Tensor) -> np.ndarray:
    """(N, S, S) anomaly maps -> (N, GRID² + 4) features: where the excess error sits (pooled
    share of it per cell) and how it is shaped (share above half its peak, spread along x and
    y, log peak). Independent of the map's overall level, which the score already carries."""
    heat = heatmaps.double()
    excess = (heat - heat.flatten(1).median(dim=1).values[:, None, None]).clamp_min(0)
    total = excess.flatten(1).sum(dim=1).clamp_min(1e-12)
    share = F.adaptive_avg_pool2d(excess[:, None], GRID).flatten(1) * (heat.shape[-1] * heat.shape[-2] / GRID**2)
    share = share / total[:, None]
    peak = excess.flatten(1).amax(dim=1)
    hot = (excess >= 0.5 * peak[:, None, None]).flatten(1).double().mean(dim=1)
    side = heat.shape[-1]
    coords = torch.linspace(0, 1, side, dtype=torch.double)
    px, py = excess.sum(dim=1) / total[:, None], excess.sum(dim=2) / total[:, None]  # marginals over x, y
    spread_x = (px * (coords - (px * coords).sum(1, keepdim=True)) ** 2).sum(1).sqrt()
    spread_y = (py * (coords - (py * coords).sum(1, keepdim=True)) ** 2).sum(1).sqrt()
    shape = torch.stack([hot, spread_x, spread_y, torch.log(peak + 1e-6)], dim=1)
    return torch.cat([share, shape], dim=1).numpy()


@dataclass(frozen=True)
class DefectTypeClassifier:
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[tuple[float, ...], ...]
    intercept: tuple[float, ...]

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray) -> "DefectTypeClassifier | None":
        """Fit on labelled defects; None when fewer than two types have MIN_PER_CLASS examples."""
        types = np.array([defect_type(str(label)) for label in labels])
        keep = np.isin(types, [t for t in set(types) if (types == t).sum() >= MIN_PER_CLASS])
        if len(set(types[keep])) < 2:
            return None
        scaler = StandardScaler().fit(features[keep])
        model = LogisticRegression(C=0.5, max_iter=5000, class_weight="balanced")
        model.fit(scaler.transform(features[keep]), types[keep])
        return cls(tuple(map(str, model.classes_)), tuple(scaler.mean_), tuple(scaler.scale_),
                   tuple(map(tuple, model.coef_)), tuple(model.intercept_))

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Most likely type and its probability per row."""
        if len(features) == 0:
            return np.array([], dtype=str), np.array([])
        model = LogisticRegression()
        model.classes_ = np.array(self.classes)
        model.coef_, model.intercept_ = np.array(self.coef), np.array(self.intercept)
        proba = model.predict_proba((features - np.array(self.mean)) / np.array(self.scale))
        return model.classes_[proba.argmax(axis=1)], proba.max(axis=1)

    def accuracy(self, features: np.ndarray, labels: np.ndarray) -> float:
        """Share of labelled defects (of the types it knows) whose type it names correctly."""
        types = np.array([defect_type(str(label)) for label in labels])
        known = np.isin(types, self.classes) & np.array([is_defect(str(label)) for label in labels], dtype=bool)
        if not known.any():
            return float("nan")
        return float((self.predict(features[known])[0] == types[known]).mean())

    def to_dict(self) -> dict[str, Any]:
        return {"classes": list(self.classes), "mean": list(self.mean), "scale": list(self.scale),
                "coef": [list(row) for row in self.coef], "intercept": list(self.intercept)}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "DefectTypeClassifier | None":
        if not data:
            return None
        return cls(tuple(data["classes"]), tuple(data["mean"]), tuple(data["scale"]),
                   tuple(map(tuple, data["coef"])), tuple(data["intercept"]))
