"""Panel families (e.g. mono / poly solar cells): one model per family, images routed by a small
classifier, scores made comparable across families.

A family comes from metadata: the labels file's `family` column (config `ingest.family_column`).
When the clean training crops hold two or more families with enough images, each family gets its
own model, trained on its crops alone: on ELPV a mono-only ConvVAE reached mono ROC-AUC 0.88 where
the shared model reached 0.84, because grain textures no longer have to share capacity with plain
cells. New images carry no metadata, so a logistic regression on pooled pixels and texture (99 %
right on ELPV test cells) routes each image; it and the family models are one exported module, so
calibration, nightly scoring and the benchmark route identically.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.nn import functional as F

from pipeline.config import PanelConfig
from pipeline.images import to_float
from pipeline.models import ModelOutput
from pipeline.scoring import blur
from pipeline.training import TrainResult

MIN_FAMILY_CROPS = 20  # a family with fewer clean training crops gets no model of its own
POOL, TEXTURE_POOL = 16, 8  # pixels pooled to 16x16 (layout), |high-pass| to 8x8 (grain texture)


def family_features(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, S, S) floats in [0, 1] -> (B, 16² + 8²) features: the pooled image (layout, cut
    corners, busbars) and the pooled high-pass magnitude (grain texture, which pooled pixels lose)."""
    texture = (x - blur(x, 2.0)).abs()
    return torch.cat([F.adaptive_avg_pool2d(x, POOL).flatten(1), F.adaptive_avg_pool2d(texture, TEXTURE_POOL).flatten(1)], 1)


def training_families(families: pd.Series, val_families: pd.Series | None = None) -> tuple[str, ...]:
    """The families of the clean training crops, sorted, when each gets a model of its own: two
    or more, every crop has one, each has at least MIN_FAMILY_CROPS crops and (when val_families
    is given) at least one clean val crop to validate its model on. Otherwise () (one shared
    model, no crop left out)."""
    counts = families.value_counts()
    if len(counts) < 2 or "" in counts.index or counts.min() < MIN_FAMILY_CROPS:
        return ()
    if val_families is not None and not set(counts.index) <= set(val_families):
        return ()
    return tuple(sorted(counts.index))


class FamilyModels(nn.Module):
    """Family classifier + one model per family, behind the common model interface. Every
    model runs on the whole batch and each image keeps its family's outputs: routing without
    data-dependent shapes, so the module exports (pt2) like a single model."""

    def __init__(self, models: list[nn.Module], mean: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor,
                 bias: torch.Tensor) -> None:
        super().__init__()
        self.models = nn.ModuleList(models)
        self.register_buffer("mean", mean.float())
        self.register_buffer("scale", scale.float())
        self.register_buffer("weight", weight.float())  # (families, features)
        self.register_buffer("bias", bias.float())

    def family(self, x: torch.Tensor) -> torch.Tensor:
        logits = ((family_features(x) - self.mean) / self.scale) @ self.weight.T + self.bias
        return logits.argmax(dim=1)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        family = self.family(x)
        outputs = [model(x) for model in self.models]
        recon, latent, error_ref = outputs[0].recon, outputs[0].latent_score, outputs[0].error_ref
        knn, features = outputs[0].latent_knn, outputs[0].feature_maps
        for k, out in enumerate(outputs[1:], start=1):
            pick = family == k
            recon = torch.where(pick[:, None, None, None], out.recon, recon)
            latent = torch.where(pick, out.latent_score, latent)
            error_ref = torch.where(pick[:, None, None, None], out.error_ref, error_ref)
            knn = torch.where(pick, out.latent_knn, knn)  # each family's own bank: its own clean codes
            if features is not None:
                features = torch.where(pick[:, None, None, None], out.feature_maps, features)
        return ModelOutput(recon, latent, error_ref, family, latent_knn=knn, feature_maps=features)


@dataclass(frozen=True)
class FamilyClassifier:
    mean: torch.Tensor
    scale: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    names: tuple[str, ...]  # family of each index
    accuracy: float  # on the crops it was not fitted on (validation)


def fit_family_classifier(train: torch.Tensor, train_families: np.ndarray, val: torch.Tensor,
                          val_families: np.ndarray, names: tuple[str, ...]) -> FamilyClassifier:
    """Logistic regression from family_features of uint8 crops to the index of their family in
    names; accuracy measured on the validation crops of those families."""
    features = family_features(to_float(train)).numpy()
    target = np.array([names.index(f) for f in train_families])
    scaler = StandardScaler().fit(features)
    model = LogisticRegression(C=0.1, max_iter=5000).fit(scaler.transform(features), target)
    weight, bias = model.coef_, model.intercept_
    if len(names) == 2:  # binary: sklearn keeps one row (class 1 vs 0); as two rows argmax picks the same
        weight, bias = np.vstack([np.zeros_like(weight), weight]), np.concatenate([[0.0], bias])
    parts = [torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in (scaler.mean_, scaler.scale_, weight, bias)]
    routed = FamilyModels([], *parts).family(to_float(val)).numpy()
    return FamilyClassifier(*parts, names, routing_accuracy(routed, val_families, names))


def routing_accuracy(routed: np.ndarray, families: np.ndarray, names: tuple[str, ...] | list[str]) -> float:
    """Share of crops whose metadata family is one of names that were routed to it (NaN: none)."""
    known = np.isin(families, names)
    if not known.any():
        return float("nan")
    return float((routed[known] == np.array([list(names).index(f) for f in families[known]])).mean())


@dataclass
class Trained:
    model: nn.Module  # one model, or FamilyModels routing to one per family
    results: dict[str, TrainResult]  # family ("" for one shared model) -> how its training went
    classifier: FamilyClassifier | None  # the router's classifier, with families

    @property
    def families(self) -> tuple[str, ...]:
        """The family of each model index; () for one shared model."""
        return self.classifier.names if self.classifier else ()


FitOne = Callable[[str, torch.Tensor, torch.Tensor, PanelConfig], TrainResult]


def train_models(train: torch.Tensor, train_families: np.ndarray, val: torch.Tensor, val_families: np.ndarray,
                 cfg: PanelConfig, fit_one: FitOne) -> Trained:
    """One shared model, or (training_families says so) one per family plus the router.
    fit_one(family, clean train crops, clean val crops, config) trains one model. Family models
    run the whole schedule: with a family's smaller set, early stopping on its val recon ended
    the ELPV poly model at epoch 20, where its test ROC-AUC was 0.45; at 40 epochs, 0.81. Under
    the default select_by="recon" they keep the last epoch's weights: the lowest val recon still
    kept poly epochs 17-27 of 40 on the bench's ELPV splits, and the last weights (with the
    dark_knn_mean candidate) won validation out of fold on all three (README, how each default
    was chosen)."""
    names = training_families(pd.Series(train_families, dtype=str), pd.Series(val_families, dtype=str))
    if not names:
        result = fit_one("", train, val, cfg)
        return Trained(result.model, {"": result}, None)
    select_by = "last" if cfg.train.select_by == "recon" else cfg.train.select_by
    family_cfg = cfg.replace("train", min_epochs=cfg.train.epochs, select_by=select_by)
    results = {name: fit_one(name, train[torch.from_numpy(train_families == name)],
                             val[torch.from_numpy(val_families == name)], family_cfg) for name in names}
    classifier = fit_family_classifier(train, train_families, val, val_families, names)
    router = FamilyModels([results[name].model for name in names], classifier.mean, classifier.scale,
                          classifier.weight, classifier.bias)
    return Trained(router.eval(), results, classifier)
