"""Thresholds and metrics (scikit-learn). Thresholds are chosen on validation, reported on test."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy.stats import mannwhitneyu
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from pipeline.drift import reference_quantiles
from pipeline.errors import UserError
from pipeline.labels import OK, defect_targets, is_defect
from pipeline.score_choice import ScoreChoice, SplitScores


@dataclass(frozen=True)
class ThresholdChoice:
    threshold: float
    rule: str
    fallback: bool = False  # True when validation had no defects and a clean-score quantile was used
    note: str = ""


def _max_f1(scores: np.ndarray, y: np.ndarray) -> float:
    precision, recall, thresholds = precision_recall_curve(y, scores)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    return float(thresholds[int(np.argmax(f1))])


def _roc_threshold(scores: np.ndarray, y: np.ndarray, max_fpr: float | None = None,
                   min_recall: float | None = None) -> float:
    fpr, tpr, thresholds = roc_curve(y, scores, drop_intermediate=False)
    finite = np.isfinite(thresholds)
    if max_fpr is not None:  # highest recall with FPR <= max_fpr; ties -> the higher threshold
        ok = finite & (fpr <= max_fpr)
        best = np.flatnonzero(ok)[np.argmax(tpr[ok])]
    else:  # lowest FPR with recall >= min_recall
        ok = finite & (tpr >= min_recall)
        if not ok.any():
            ok = finite
        best = np.flatnonzero(ok)[np.argmin(fpr[ok])]
    return float(thresholds[best])


def choose_threshold(scores: np.ndarray, labels: np.ndarray, rule: str = "max-f1",
                     fallback_quantile: float = 0.99) -> ThresholdChoice:
    """Apply a threshold rule (max-f1 | fpr:<x> | recall:<x> | fixed:<v>); an image is flagged
    when score >= threshold. Without defect labels, fall back to a clean-score quantile, loudly."""
    scores, y = np.asarray(scores, dtype=float), defect_targets(labels)
    kind, _, value = rule.partition(":")
    if kind == "fixed":
        return ThresholdChoice(float(value), rule)
    if kind not in ("max-f1", "fpr", "recall"):
        raise UserError(f"unknown threshold rule {rule!r}: use max-f1, fpr:<x>, recall:<x> or fixed:<value>")
    if y.all() or not y.any():
        clean = scores[~y]
        if clean.size == 0:
            raise UserError("cannot choose a threshold: validation has no clean images")
        note = (f"validation has no defect labels: threshold is the {fallback_quantile:.3g} quantile "
                f"of {clean.size} clean validation scores, not rule {rule!r}")
        warnings.warn(note, stacklevel=2)
        return ThresholdChoice(float(np.quantile(clean, fallback_quantile)), f"quantile:{fallback_quantile}", True, note)
    if kind == "max-f1":
        return ThresholdChoice(_max_f1(scores, y), rule)
    if kind == "fpr":
        return ThresholdChoice(_roc_threshold(scores, y, max_fpr=float(value)), rule)
    return ThresholdChoice(_roc_threshold(scores, y, min_recall=float(value)), rule)


def evaluate(scores: np.ndarray, labels: np.ndarray, threshold: float | None = None) -> dict[str, float]:
    """ROC-AUC / PR-AUC overall and per defect class (class vs ok), and operating point at threshold."""
    scores, labels = np.asarray(scores, dtype=float), np.asarray(labels).astype(str)
    y = defect_targets(labels)
    metrics: dict[str, float] = {"n": float(len(y)), "n_defect": float(y.sum())}
    if 0 < y.sum() < len(y):
        metrics["roc_auc"] = float(roc_auc_score(y, scores))
        metrics["pr_auc"] = float(average_precision_score(y, scores))
        clean = labels == OK
        for cls in sorted({c for c in labels if is_defect(c)}):
            pick = clean | (labels == cls)
            if clean.any():
                metrics[f"roc_auc_{cls}"] = float(roc_auc_score(labels[pick] == cls, scores[pick]))
    if threshold is not None:
        flagged = scores >= threshold
        tp, fp = int((flagged & y).sum()), int((flagged & ~y).sum())
        fn, tn = int((~flagged & y).sum()), int((~flagged & ~y).sum())
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        metrics.update(threshold=float(threshold), precision=precision, recall=recall,
                       f1=2 * precision * recall / (precision + recall) if precision + recall else 0.0,
                       fpr=fp / (fp + tn) if fp + tn else 0.0, flag_rate=float(flagged.mean()) if len(flagged) else 0.0)
    return metrics


BOOTSTRAP_ROUNDS = 1000
CI_LEVEL = 0.95


def bootstrap_indices(y: np.ndarray, rounds: int, seed: int) -> np.ndarray:
    """(rounds, n) resamples of the images, one per row, stratified (clean and defect resampled
    separately, clean first) so every resample has both classes and an AUC."""
    rng = np.random.default_rng(seed)
    clean, defect = np.flatnonzero(~y), np.flatnonzero(y)
    return np.concatenate([rng.choice(clean, (rounds, clean.size)), rng.choice(defect, (rounds, defect.size))], axis=1)


def resampled_roc_aucs(scores: np.ndarray, y: np.ndarray, resamples: np.ndarray) -> np.ndarray:
    """The ROC-AUC of every resample (a row of bootstrap_indices) at once: the Mann-Whitney U of
    defect over clean scores divided by the pairs is the ROC-AUC, ties counted half, as
    roc_auc_score has it; 1,000 roc_auc_score calls took 7 s of a bench set's 50 s on 2 cores."""
    n_clean = int((~y).sum())
    values = np.asarray(scores, dtype=float)[resamples]
    u = mannwhitneyu(values[:, n_clean:], values[:, :n_clean], axis=1, method="asymptotic").statistic
    return u / (n_clean * (resamples.shape[1] - n_clean))


def interval(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def roc_auc_ci(scores: np.ndarray, labels: np.ndarray, rounds: int = BOOTSTRAP_ROUNDS, level: float = CI_LEVEL,
               seed: int = 0) -> tuple[float, float]:
    """Stratified bootstrap confidence interval of the ROC-AUC (NaNs without both classes)."""
    y = defect_targets(labels)
    if y.all() or not y.any():
        return float("nan"), float("nan")
    return interval(resampled_roc_aucs(scores, y, bootstrap_indices(y, rounds, seed)), level)


@dataclass
class Calibration:
    """What calibration decided and why: written to calibration.json and to model-version tags."""

    model_name: str
    model_version: str
    score_name: str  # the score chosen over all families (the deciding one unless family_scores)
    threshold: float
    rule: str
    fallback: bool
    note: str
    val: dict[str, float]
    test: dict[str, float]
    score_table: dict[str, dict[str, float]] = field(default_factory=dict)  # score -> val/test ROC-AUC
    test_images: str = ""  # sha256 over the test split's source images: which versions can be compared
    defect_classifier: dict[str, Any] | None = None  # the suspected-defect hint (DefectTypeClassifier.to_dict)
    clean_reference: list[float] = field(default_factory=list)  # quantiles of clean val scores, for drift
    # raw score -> each family's clean val median (scoring.scaled_scores); {}: raw scores (older versions)
    score_scale: dict[str, list[float]] = field(default_factory=dict)
    families: list[str] = field(default_factory=list)  # family name per model index; [] for one shared model
    family_scores: list[str] = field(default_factory=list)  # deciding score per family index; []: score_name

    @property
    def choice(self) -> ScoreChoice:
        return ScoreChoice(self.score_name, tuple(self.family_scores))

    @property
    def score_label(self) -> str:
        """The deciding score as people read it: "norm_blur_max" or "mono: dark_norm_area_max, poly: dark_knn_mean"."""
        return self.choice.describe(self.families)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Calibration":
        return cls(**data)


def score_table(val: SplitScores, test: SplitScores, choice: ScoreChoice, synthetic: dict[str, float],
                families: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Every candidate score's val, pasted-defect and test ROC-AUC, and a per-family choice's as a
    row of its own: what the choice saw (val only) and, beside it, what it cost or gained on test."""
    def row(val_scores: np.ndarray, test_scores: np.ndarray, pasted: float) -> dict[str, float]:
        return {"val_roc_auc": evaluate(val_scores, val.labels).get("roc_auc", float("nan")),
                "test_roc_auc": evaluate(test_scores, test.labels).get("roc_auc", float("nan")),
                "val_synthetic_auc": pasted}
    table = {name: row(val.scores[name], test.scores[name], synthetic.get(name, float("nan"))) for name in val.scores}
    if choice.per_family:  # the pasted-defect check scores every crop alike: no figure for a mix
        table[choice.describe(families or ())] = row(val.chosen(choice), test.chosen(choice), float("nan"))
    return table


def calibrate_scores(val: SplitScores, test: SplitScores, choice: ScoreChoice, rule: str, fallback_quantile: float,
                     model_name: str, model_version: str, synthetic: dict[str, float] | None = None,
                     families: list[str] | None = None) -> Calibration:
    """The threshold for the score chosen on val (choose_score), chosen on val; val and
    test metrics at it. synthetic: each candidate's self-supervised check on clean val crops,
    reported beside its labelled figures. families: family name per model index."""
    synthetic = synthetic or {}
    val_scores, test_scores = val.chosen(choice), test.chosen(choice)
    threshold = choose_threshold(val_scores, val.labels, rule, fallback_quantile)
    test_metrics = evaluate(test_scores, test.labels, threshold.threshold)
    if "roc_auc" in test_metrics:
        test_metrics["roc_auc_ci_low"], test_metrics["roc_auc_ci_high"] = roc_auc_ci(test_scores, test.labels)
    clean = val_scores[np.asarray(val.labels).astype(str) == OK]
    val_metrics = evaluate(val_scores, val.labels, threshold.threshold)
    if choice.name in synthetic and not choice.per_family:
        val_metrics["synthetic_auc"] = synthetic[choice.name]
    return Calibration(model_name, str(model_version), choice.name, threshold.threshold, threshold.rule,
                       threshold.fallback, threshold.note, val_metrics, test_metrics,
                       score_table(val, test, choice, synthetic, families),
                       clean_reference=reference_quantiles(clean) if len(clean) else [],
                       families=list(families or []), family_scores=list(choice.per_family))
