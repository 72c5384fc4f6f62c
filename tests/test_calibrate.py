import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score, roc_auc_score

from pipeline.calibration import (
    bootstrap_indices,
    calibrate_scores,
    choose_threshold,
    evaluate,
    resampled_roc_aucs,
    roc_auc_ci,
)
from pipeline.promotion import gate
from pipeline.score_choice import HEAD_MARGIN, SplitScores, choose_score, select_score
from pipeline.scoring import ScoredBatch


@pytest.fixture()
def scored():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(0, 1, 300), rng.normal(2.5, 1, 60), rng.normal(1.5, 1, 40)])
    labels = np.array(["ok"] * 300 + ["crack"] * 60 + ["loose_connector"] * 40)
    return scores, labels


def test_max_f1_threshold_maximises_f1(scored):
    scores, labels = scored
    y = labels != "ok"
    t = choose_threshold(scores, labels, "max-f1").threshold
    best = max(f1_score(y, scores >= c) for c in np.unique(scores))
    assert f1_score(y, scores >= t) == pytest.approx(best)


@pytest.mark.parametrize("max_fpr", [0.01, 0.05, 0.2])
def test_fpr_rule_meets_its_bound_with_best_recall(scored, max_fpr):
    scores, labels = scored
    t = choose_threshold(scores, labels, f"fpr:{max_fpr}").threshold
    m = evaluate(scores, labels, t)
    assert m["fpr"] <= max_fpr
    clean = np.sort(scores[labels == "ok"])
    lower = evaluate(scores, labels, clean[clean < t].max())  # admit one more clean image
    assert lower["fpr"] > max_fpr or lower["recall"] <= m["recall"]  # no better threshold within the bound


def test_recall_rule_reaches_recall(scored):
    scores, labels = scored
    m = evaluate(scores, labels, choose_threshold(scores, labels, "recall:0.9").threshold)
    assert m["recall"] >= 0.9


def test_fixed_rule_and_unknown_rule(scored):
    scores, labels = scored
    assert choose_threshold(scores, labels, "fixed:1.25").threshold == 1.25
    with pytest.raises(ValueError, match="unknown threshold rule"):
        choose_threshold(scores, labels, "magic")


def test_no_defect_labels_fall_back_loudly_to_clean_quantile(scored):
    scores, labels = scored
    clean = scores[labels == "ok"]
    with pytest.warns(UserWarning, match="no defect labels"):
        choice = choose_threshold(clean, np.array(["ok"] * len(clean)), "max-f1", fallback_quantile=0.95)
    assert choice.fallback and choice.rule == "quantile:0.95"
    assert choice.threshold == pytest.approx(np.quantile(clean, 0.95))


def test_evaluate_reports_per_class_auc_and_operating_point(scored):
    scores, labels = scored
    m = evaluate(scores, labels, 1.0)
    assert {"roc_auc", "pr_auc", "roc_auc_crack", "roc_auc_loose_connector", "precision", "recall", "fpr"} <= set(m)
    assert m["roc_auc_crack"] > m["roc_auc_loose_connector"]  # crack scores are further from clean


def _split_scores(scores: dict[str, np.ndarray], labels: np.ndarray) -> SplitScores:
    """One crop per image, one family."""
    family = np.zeros(len(labels), dtype=int)
    return SplitScores(scores, labels, ScoredBatch(scores, torch.zeros(0, 8, 8), family),
                       pd.Series([f"img{i}" for i in range(len(labels))]), family)


def test_calibration_picks_score_on_validation_and_reports_test(scored):
    scores, labels = scored
    noise = np.random.default_rng(1).normal(0, 1, len(scores))
    val = _split_scores({"good": scores, "bad": noise}, labels)
    test = _split_scores({"good": scores[::-1], "bad": noise}, labels[::-1])
    choice = choose_score(val, {}, n_families=1)
    calibration = calibrate_scores(val, test, choice, "max-f1", 0.99, "panel-anomaly", "3")
    assert calibration.score_name == "good" and calibration.family_scores == []
    assert calibration.test["threshold"] == calibration.threshold
    assert calibration.test["roc_auc"] == pytest.approx(evaluate(scores, labels)["roc_auc"])
    assert set(calibration.score_table) == {"good", "bad"}


def _two_models(shift_new: float, shift_old: float, n: int = 300, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.array(["ok"] * n + ["crack"] * (n // 2))
    y = labels != "ok"
    base = rng.normal(0, 1, len(labels))
    return base + shift_new * y + rng.normal(0, 0.3, len(labels)), base + shift_old * y, labels


def test_roc_auc_ci_brackets_the_auc_and_narrows_with_more_images():
    small_new, _, small_labels = _two_models(1.0, 1.0, n=60)
    big_new, _, big_labels = _two_models(1.0, 1.0, n=600)
    auc = evaluate(big_new, big_labels)["roc_auc"]
    low, high = roc_auc_ci(big_new, big_labels)
    small_low, small_high = roc_auc_ci(small_new, small_labels)
    assert low < auc < high and (high - low) < (small_high - small_low)


def test_every_bootstrap_resample_has_the_roc_auc_sklearn_gives_it_ties_included():
    rng = np.random.default_rng(3)
    y = np.array([False] * 40 + [True] * 15)
    scores = np.round(rng.normal(0, 1, len(y)) + y, 1)  # rounded: many ties, within and across classes
    resamples = bootstrap_indices(y, 50, seed=1)
    assert all(y[row].sum() == y.sum() for row in resamples)  # stratified: every resample has both classes
    expected = [roc_auc_score(y[row], scores[row]) for row in resamples]
    np.testing.assert_allclose(resampled_roc_aucs(scores, y, resamples), expected, rtol=0, atol=1e-12)


def test_gate_keeps_the_champion_when_the_challenger_is_worse_and_promotes_when_better():
    worse, champion, labels = _two_models(0.6, 1.5)
    decision = gate(worse, champion, labels)
    assert not decision.promote and decision.diff_high < 0 and "paired-bootstrap CI" in decision.describe()
    better, champion, labels = _two_models(2.0, 1.0)
    decision = gate(better, champion, labels)
    assert decision.promote and decision.diff_low > 0 and decision.new_auc > decision.old_auc
    same, champion, labels = _two_models(1.0, 1.0)  # within the noise: not worse beyond the CI
    assert gate(same, champion, labels).promote
    with pytest.raises(ValueError, match="clean and defect"):
        gate(same[:10], champion[:10], labels[:10])


def test_with_few_labelled_defects_the_pasted_defect_check_chooses_the_score():
    rng = np.random.default_rng(2)
    for n_defects, expected in ((3, "pasted_favourite"), (0, "pasted_favourite"), (40, "labelled_favourite")):
        labels = np.array(["ok"] * 100 + ["crack"] * n_defects)
        y = labels != "ok"
        scores = {"labelled_favourite": rng.normal(0, 1, len(y)) + 2.0 * y, "pasted_favourite": rng.normal(0, 1, len(y))}
        synthetic = {"labelled_favourite": 0.6, "pasted_favourite": 0.9}
        assert select_score(scores, labels, synthetic) == expected, n_defects
    assert select_score(scores, np.array(["ok"] * 140)) == "blur_max"  # neither: the documented default


def test_the_pasted_defect_check_never_picks_a_defect_heads_score_but_labelled_validation_may():
    rng = np.random.default_rng(3)
    labels = np.array(["ok"] * 100 + ["crack"] * 40)
    y = labels != "ok"
    scores = {"head_blur_max": rng.normal(0, 1, len(y)) + 3.0 * y, "norm_blur_max": rng.normal(0, 1, len(y)) + 1.0 * y}
    synthetic = {"head_blur_max": 0.97, "norm_blur_max": 0.62}  # the head learned the pasted defects
    few = {name: values[:103] for name, values in scores.items()}
    assert select_score(few, labels[:103], synthetic) == "norm_blur_max"  # 3 labelled defects: the check decides
    assert select_score(scores, labels, synthetic) == "head_blur_max"  # 40: labelled validation decides


def test_a_defect_heads_score_is_chosen_only_when_it_wins_validation_by_more_than_the_margin():
    labels = np.array(["ok"] * 100 + ["crack"] * 40)
    y = labels != "ok"
    ranks = np.arange(len(y), dtype=float)  # the clean images first: a perfect score
    perfect = np.where(y, ranks + 100, ranks)
    near = perfect.copy()
    near[100] = 50.0  # one defect among the clean: val ROC-AUC 0.995, within the margin of 1.0
    head_wins_by_little = {"head_blur_max": perfect, "norm_blur_max": near}
    assert roc_auc_score(y, perfect) - roc_auc_score(y, near) <= HEAD_MARGIN
    assert select_score(head_wins_by_little, labels) == "norm_blur_max"  # not worth a member's scoring time
    far = perfect.copy()
    far[100:120] = 10.0 + np.arange(20)  # half the defects among the clean: far behind
    assert select_score({"head_blur_max": perfect, "norm_blur_max": far}, labels) == "head_blur_max"
    assert select_score({"head_blur_max": perfect}, labels) == "head_blur_max"  # nothing else offered
