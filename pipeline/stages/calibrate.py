"""Calibrate stage: the registry copy of a version scores the labelled val/test crops; the score
and threshold are chosen on val and reported on test; the suspected-defect hint is fitted; the
version is promoted (champion or challenger) by pipeline/promotion.py's policy."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from pipeline import plots, tracking
from pipeline.calibration import Calibration, calibrate_scores
from pipeline.config import PanelConfig
from pipeline.defect_type import DefectTypeClassifier, error_features
from pipeline.device import pick_device
from pipeline.errors import UserError
from pipeline.families import routing_accuracy
from pipeline.files import atomic_write_text
from pipeline.labels import defect_targets
from pipeline.promotion import Promotion, gate, promotion
from pipeline.regions import peak_region
from pipeline.report import heatmap_overlay
from pipeline.score_choice import ScoreChoice, SplitScores, choose_score, score_split, score_val_test
from pipeline.stages.train import latest_trained_version
from pipeline.workspace import REVIEW_PANEL, WorkDirs, dataset_hash, images_per_split, load_crops, load_split


@dataclass(frozen=True)
class CalibrateOutcome:
    calibration: Calibration
    promoted_to: str  # champion | challenger
    reason: str
    path: Path


def calibrate_stage(workdir: Path, cfg: PanelConfig, model_version: str | None = None,
                    rule: str | None = None) -> CalibrateOutcome:
    """Score labelled val/test crops with the registered model, choose score + threshold on val,
    report on test, then promote: champion if it is the first or not worse than the champion on test."""
    dirs = WorkDirs(Path(workdir))
    tracking.configure(cfg.tracking)
    name = cfg.tracking.model_name
    version = model_version or latest_trained_version(workdir)
    model_cfg = tracking.load_config(name, version)
    device = pick_device(cfg.score.device)
    model = tracking.load_model(name, version, device)  # the registry copy: the same path scoring uses
    families = tracking.load_families(name, version)
    val, test = load_split(dirs.manifest, ["val"]), load_split(dirs.manifest, ["test"])
    for split, rows in (("val", val), ("test", test)):
        if rows.empty:
            raise UserError(f"{dirs.manifest}: no labelled {split} crops to calibrate on (labelled images per split: "
                            f"{images_per_split(load_split(dirs.manifest, ['train', 'val', 'test']))}); label more "
                            f"panels (ok and defect) and re-run ingest")
    test_x = load_crops(test, dirs.crops)
    scored = score_val_test(model, val, load_crops(val, dirs.crops), test, test_x, model_cfg, len(families),
                            keep_heatmaps=True)
    choice = choose_score(scored.val, scored.synthetic, max(1, len(families)))
    calibration = calibrate_scores(scored.val, scored.test, choice, rule or model_cfg.calibrate.rule,
                                   model_cfg.calibrate.fallback_quantile, name, version, scored.synthetic, families)
    # inspector-reviewed images (pipeline/review.py) among the val images this calibration chose on
    calibration.val["n_reviewed_images"] = int(val.loc[val["panel_id"].str.startswith(REVIEW_PANEL),
                                                       "source_sha256"].nunique())
    classifier, accuracy = _fit_defect_types(scored.val, scored.test, choice)
    if classifier is not None:
        calibration.test["suspected_defect_accuracy"] = accuracy
    if families and test["family"].isin(families).any():  # every test crop, defects included (fitted on clean ones)
        calibration.test["router_accuracy"] = routing_accuracy(scored.test.crops.family, test["family"].to_numpy(str),
                                                               families)
    calibration = replace(calibration, test_images=dataset_hash(test, "source_sha256"), defect_classifier=classifier,
                          score_scale=scored.scale)
    tracking.log_calibration(calibration, _calibration_figures(scored.test, test, test_x, calibration, model_cfg))
    path = atomic_write_text(dirs.calibration, json.dumps(calibration.to_dict(), indent=2))
    decision = _promote(calibration, scored.test.chosen(choice), test, test_x, model_cfg)
    return CalibrateOutcome(calibration, decision.alias, decision.reason, path)


def _fit_defect_types(val: SplitScores, test: SplitScores, choice: ScoreChoice) -> tuple[dict | None, float]:
    """The suspected-defect hint, fitted on validation defects, its accuracy on test defects."""
    val_defects, test_defects = defect_targets(val.labels), defect_targets(test.labels)
    features = error_features(val.heatmaps(choice)[torch.from_numpy(val_defects)])
    classifier = DefectTypeClassifier.fit(features, val.labels[val_defects])
    if classifier is None:
        return None, float("nan")
    test_features = error_features(test.heatmaps(choice)[torch.from_numpy(test_defects)])
    return classifier.to_dict(), classifier.accuracy(test_features, test.labels[test_defects])


def _promote(candidate: Calibration, new_scores: np.ndarray, test: pd.DataFrame, test_x: torch.Tensor,
             cfg: PanelConfig) -> Promotion:
    """Score the champion on the candidate's test images when both preprocess alike, apply the
    policy, write the alias and its reason on the version."""
    name, version = candidate.model_name, candidate.model_version
    champion_version = tracking.current_version(name, tracking.CHAMPION)
    champion, paired = None, None
    if champion_version is not None and champion_version != version:
        champion = tracking.load_calibration(name, champion_version)
        old_cfg = tracking.load_config(name, champion_version)
        if old_cfg.ingest == cfg.ingest:
            old = score_split(tracking.load_model(name, champion_version, pick_device(cfg.score.device)), test, test_x,
                              old_cfg, champion.score_scale)
            paired = gate(new_scores, old.chosen(champion.choice), old.labels)
    decision = promotion(candidate, champion, paired)
    tracking.set_alias(name, version, decision.alias, decision.reason)
    return decision


def _calibration_figures(test: SplitScores, rows: pd.DataFrame, crops: torch.Tensor, calibration: Calibration,
                         cfg: PanelConfig, per_kind: int = 6) -> dict[str, Figure]:
    """The test split at the chosen score and threshold, as pictures for analysts."""
    choice = calibration.choice
    title, scores, labels = f"test, {calibration.score_label}", test.chosen(choice), test.labels
    figures = {"roc_pr": plots.roc_pr_figure(scores, labels, title),
               "score_histogram": plots.score_histogram_figure(scores, labels, calibration.threshold, title),
               "confusion": plots.confusion_figure(scores, labels, calibration.threshold, f"{title} at the threshold")}
    worst, maps = test.worst(choice), choice.maps(test.crops)
    defect, flagged = defect_targets(labels), scores >= calibration.threshold
    false_pos = [i for i in np.argsort(-scores) if flagged[i] and not defect[i]][:per_kind]
    false_neg = [i for i in np.argsort(scores) if defect[i] and not flagged[i]][:per_kind]
    images, captions = [], []
    for kind, picks in (("false positive", false_pos), ("missed", false_neg)):
        for i in picks:
            heat, crop = maps[worst[i]], crops[worst[i]]
            images.append(heatmap_overlay(crop, heat, peak_region(heat, cfg.score.region_size_frac)))
            source = Path(rows["source_path"].iloc[worst[i]]).name
            captions.append(f"{kind}: {labels[i]}\n{source[:24]} {scores[i]:.3g}")
    figures["worst_errors"] = plots.example_grid_figure(
        images, captions, f"worst false positives ({len(false_pos)}) and missed defects ({len(false_neg)}), {title}")
    return figures
