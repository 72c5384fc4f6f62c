"""The promotion policy: does a newly calibrated version replace the champion? Pure numbers in,
an alias and its reason out; the calibrate stage scores the champion and sets the alias.

The new version becomes champion unless it is worse beyond the noise: the paired-bootstrap CI of
(new - champion ROC-AUC) on the same test images lies wholly below zero. With other
preprocessing, recorded AUCs are compared only when both were tested on the same source images
(the candidate's own CI against the champion's AUC); otherwise the candidate waits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

from pipeline.calibration import (
    BOOTSTRAP_ROUNDS,
    CI_LEVEL,
    Calibration,
    bootstrap_indices,
    interval,
    resampled_roc_aucs,
)
from pipeline.errors import UserError
from pipeline.labels import defect_targets

CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    new_auc: float
    old_auc: float
    diff_low: float  # CI of new - old ROC-AUC
    diff_high: float

    def describe(self) -> str:
        return (f"ROC-AUC {self.new_auc:.4f} vs champion {self.old_auc:.4f}, difference "
                f"{self.new_auc - self.old_auc:+.4f} ({CI_LEVEL:.0%} paired-bootstrap CI {self.diff_low:+.4f} .. {self.diff_high:+.4f})")


def gate(new_scores: np.ndarray, old_scores: np.ndarray, labels: np.ndarray, rounds: int = BOOTSTRAP_ROUNDS,
         level: float = CI_LEVEL, seed: int = 0) -> GateDecision:
    """Champion gate on one test set scored by both models: the new model may replace the old one
    unless it is worse beyond the noise, i.e. unless the whole paired-bootstrap CI of
    (new AUC - old AUC) lies below zero. Paired: each resample scores the same images with both."""
    new_scores, old_scores, y = np.asarray(new_scores, float), np.asarray(old_scores, float), defect_targets(labels)
    if y.all() or not y.any():
        raise UserError("the promotion gate needs clean and defect test images")
    new_auc, old_auc = roc_auc_score(y, new_scores), roc_auc_score(y, old_scores)
    resamples = bootstrap_indices(y, rounds, seed)
    low, high = interval(resampled_roc_aucs(new_scores, y, resamples) - resampled_roc_aucs(old_scores, y, resamples),
                         level)
    return GateDecision(bool(high >= 0), float(new_auc), float(old_auc), low, high)


@dataclass(frozen=True)
class Promotion:
    alias: str  # champion | challenger
    reason: str  # written on the version (tag `promotion`, description)


def promotion(candidate: Calibration, champion: Calibration | None, paired: GateDecision | None) -> Promotion:
    """The candidate's alias. champion: the current champion's calibration (None: there is none,
    or it is the candidate itself). paired: the gate on the candidate's test images scored by both
    models, when both use the same preprocessing (None otherwise)."""
    version, new_auc = candidate.model_version, candidate.test.get("roc_auc", float("nan"))
    n_images = int(candidate.test.get("n", 0))
    if champion is None:
        return Promotion(CHAMPION, f"first calibrated version (test ROC-AUC {new_auc:.4f})")
    if paired is not None:
        better, numbers, basis = paired.promote, paired.describe(), f"the same {n_images} test images"
    elif champion.test_images and champion.test_images == candidate.test_images:
        old_auc = champion.test.get("roc_auc", float("nan"))
        high = candidate.test.get("roc_auc_ci_high", new_auc)
        better = not np.isnan(new_auc) and (np.isnan(old_auc) or high >= old_auc)
        numbers = f"ROC-AUC {new_auc:.4f} (CI up to {high:.4f}) vs champion {old_auc:.4f}"
        basis = f"the same {n_images} test images (recorded, other preprocessing)"
    else:
        return Promotion(CHALLENGER, f"v{version} (test ROC-AUC {new_auc:.4f}) is not comparable with champion "
                                     f"v{champion.model_version}: other preprocessing and other test images; set the "
                                     "alias by hand if intended")
    verdict = "replaces" if better else "is worse beyond the noise than"
    return Promotion(CHAMPION if better else CHALLENGER,
                     f"v{version} {verdict} champion v{champion.model_version} on {basis}: {numbers}")
