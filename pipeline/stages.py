"""The pipeline's stages as plain functions: ingest -> train -> calibrate (+ promote) -> score.

Each stage takes paths and a config and returns a small result; flows/ wraps them in Prefect
tasks. They are usable without Prefect (the benchmark and GPU boxes call them directly).
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, replace
from datetime import date, datetime, timezone
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from matplotlib.figure import Figure

from pipeline import plots, tracking
from pipeline.calibrate import Calibration, calibrate_scores, defect_targets, gate
from pipeline.config import PanelConfig
from pipeline.defect_type import DefectTypeClassifier, error_features
from pipeline.files import atomic_write_text, sha256_file
from pipeline.drift import DriftCheck, check_drift
from pipeline.ingest import (QUARANTINE_COLUMNS, Progress, Rejected, WorkDirs, list_inputs, load_split,
                             prepare_many, quarantine_rows, record_quarantine)
from pipeline.ledger import Ledger
from pipeline.report import heatmap_overlay, save_heatmap, write_gallery, write_report
from pipeline.scoring import (ScoredBatch, fit_score_scale, per_image_max, scaled_scores, score_crops,
                              strongest_region, worst_crop)
from pipeline.families import routing_accuracy, train_models
from pipeline.train import Checkpointing, TrainResult, dataset_hash, load_crops, read_checkpoint, train_model

LATEST_TRAIN = "latest_train.json"


@dataclass(frozen=True)
class TrainOutcome:
    run_id: str
    model_version: str
    model_type: str
    best_epoch: int
    epochs_run: int
    resumed_from: int
    seconds: float
    device: str
    collapsed: bool
    warning: str  # the collapse alarm's message, empty when healthy
    families: tuple[str, ...] = ()  # one model per family (routed by a classifier); () for one shared model


def checkpoint_path(workdir: Path, cfg: PanelConfig) -> Path:
    return Path(workdir) / "checkpoints" / f"{cfg.model.model_type}.pt"


def train_stage(workdir: Path, cfg: PanelConfig, progress: bool = True, resume: bool = False) -> TrainOutcome:
    """Train on the clean train split, log everything to MLflow, register a model version.
    resume=True continues an interrupted run from its checkpoint, in the same MLflow run."""
    dirs = WorkDirs(Path(workdir))
    train_rows = load_split(dirs.manifest, ["train"], trainable_only=True)
    val_rows = load_split(dirs.manifest, ["val"], trainable_only=True)
    train_x, val_x = load_crops(train_rows, dirs.crops), load_crops(val_rows, dirs.crops)
    if train_x.shape[-1] != cfg.ingest.image_size:
        raise ValueError(f"{dirs.manifest}: crops are {train_x.shape[-1]} px but the config says "
                         f"image_size={cfg.ingest.image_size}; re-run ingest with the same config")
    tracking.configure(cfg.tracking)
    experiment = tracking.experiment_id(cfg.tracking.train_experiment, cfg.tracking)
    ckpt = checkpoint_path(workdir, cfg)
    saved = [read_checkpoint(p) for p in (ckpt, *sorted(ckpt.parent.glob(f"{ckpt.stem}-*.pt")))] if resume else []
    run_id = next((s["meta"].get("run_id") for s in saved if s), None)  # family models: one checkpoint each
    with mlflow.start_run(experiment_id=experiment, run_id=run_id) as run:
        mlflow.log_params(tracking.train_params(cfg, dataset_hash(train_rows), len(train_x), len(val_x)))
        mlflow.set_tag("model_type", cfg.model.model_type)

        def fit_one(family: str, tx: torch.Tensor, vx: torch.Tensor, family_cfg: PanelConfig) -> TrainResult:
            path = ckpt.with_name(f"{ckpt.stem}-{family}.pt") if family else ckpt
            checkpointing = Checkpointing(path, resume, {"run_id": run.info.run_id}) if cfg.train.checkpoint else None
            result = train_model(tx, vx, family_cfg, on_epoch=tracking.epoch_logger(family), progress=progress,
                                 checkpoint=checkpointing, family=family)
            tracking.log_latent_report(result.latent, family)
            if result.collapsed:
                warnings.warn(f"{family or 'model'}: {result.latent.warning}", stacklevel=2)
            return result

        trained = train_models(train_x, train_rows["family"].to_numpy(str), val_x, val_rows["family"].to_numpy(str),
                               cfg, fit_one)
        results = list(trained.results.values())
        seconds, best_epoch = sum(r.seconds for r in results), max(r.best_epoch for r in results)
        mlflow.log_metrics({"best_epoch": best_epoch, "train_seconds": seconds})
        mlflow.set_tags({"device": results[0].device, "stopped_early": str(any(r.stopped_early for r in results)).lower(),
                         "resumed_from_epoch": str(min(r.resumed_from for r in results))})
        tracking.log_families(trained.classifier)
        version = tracking.log_model(trained.model, val_x[:2].float() / 255.0, cfg)
    for family in trained.results:  # registered: nothing left to resume
        (ckpt.with_name(f"{ckpt.stem}-{family}.pt") if family else ckpt).unlink(missing_ok=True)
    collapsed = [f"{family or 'model'}: {r.latent.warning}" for family, r in trained.results.items() if r.collapsed]
    outcome = TrainOutcome(run.info.run_id, version, cfg.model.model_type, best_epoch, max(len(r.history) for r in results),
                           min(r.resumed_from for r in results), seconds, results[0].device, bool(collapsed),
                           "; ".join(collapsed), tuple(trained.results) if trained.classifier else ())
    atomic_write_text(Path(workdir) / LATEST_TRAIN, json.dumps(outcome.__dict__, indent=2))
    return outcome


def latest_trained_version(workdir: Path) -> str:
    path = Path(workdir) / LATEST_TRAIN
    if not path.exists():
        raise LookupError(f"{path}: no trained model yet; run `panelscan train` or pass --model-version")
    return json.loads(path.read_text())["model_version"]


@dataclass(frozen=True)
class SplitScores:
    """A split scored per source image (max over its crops), with what the hint needs."""

    scores: dict[str, np.ndarray]  # score name -> per image
    labels: np.ndarray  # per image
    crops: ScoredBatch  # per crop, heatmaps kept when asked for
    image_keys: pd.Series  # per crop: its source image

    def worst(self, score_name: str) -> np.ndarray:
        """Position (among the crops) of each image's highest-scoring crop under score_name."""
        return worst_crop(self.crops.scores[score_name], self.image_keys)

    def heatmaps(self, score_name: str) -> torch.Tensor:
        """Each image's anomaly map from its highest-scoring crop under score_name."""
        return self.crops.heatmaps[torch.as_tensor(self.worst(score_name).copy())]


def _score_images(model: torch.nn.Module, rows: pd.DataFrame, dirs: WorkDirs, cfg: PanelConfig,
                  keep_heatmaps: bool = False, scale: dict[str, list[float]] | None = None) -> SplitScores:
    scored = score_crops(model, load_crops(rows, dirs.crops), cfg.score, cfg.model, keep_heatmaps=keep_heatmaps)
    return _split_scores(scored, rows, scale or {})


def _split_scores(scored: ScoredBatch, rows: pd.DataFrame, scale: dict[str, list[float]]) -> SplitScores:
    """Crop scores scaled per family (the candidates), then per image (max over its crops)."""
    crops = replace(scored, scores=scaled_scores(scored.scores, scored.family, scale))
    _, scores = per_image_max(crops.scores, rows["source_sha256"])
    labels = rows.groupby("source_sha256", sort=False)["label"].first().to_numpy()
    return SplitScores(scores, labels, crops, rows["source_sha256"])


def _fit_defect_types(val: SplitScores, test: SplitScores, score_name: str) -> tuple[dict | None, float]:
    """The suspected-defect hint, fitted on validation defects, its accuracy on test defects."""
    val_defects, test_defects = defect_targets(val.labels), defect_targets(test.labels)
    features = error_features(val.heatmaps(score_name)[torch.from_numpy(val_defects)])
    classifier = DefectTypeClassifier.fit(features, val.labels[val_defects])
    if classifier is None:
        return None, float("nan")
    test_features = error_features(test.heatmaps(score_name)[torch.from_numpy(test_defects)])
    return classifier.to_dict(), classifier.accuracy(test_features, test.labels[test_defects])


@dataclass(frozen=True)
class CalibrateOutcome:
    calibration: Calibration
    promoted_to: str  # champion | challenger
    reason: str
    path: Path


def calibrate_stage(workdir: Path, cfg: PanelConfig, model_version: str | None = None,
                    rule: str | None = None) -> CalibrateOutcome:
    """Score labelled val/test crops with the registered model, choose score + threshold on val,
    report on test, then promote: champion if it is the first or beats the champion on test."""
    dirs = WorkDirs(Path(workdir))
    tracking.configure(cfg.tracking)
    name = cfg.tracking.model_name
    version = model_version or latest_trained_version(workdir)
    model_cfg = tracking.load_config(name, version)
    model = tracking.load_model(name, version)  # the registry copy: the same path scoring uses
    val = load_split(dirs.manifest, ["val"])
    test = load_split(dirs.manifest, ["test"])
    families = tracking.load_families(name, version)
    val_raw = score_crops(model, load_crops(val, dirs.crops), model_cfg.score, model_cfg.model)
    scale = fit_score_scale(val_raw.scores, val_raw.family, (val["label"] == "ok").to_numpy(), max(1, len(families)))
    val_s, test_s = _split_scores(val_raw, val, scale), _score_images(model, test, dirs, model_cfg, True, scale)
    calibration = calibrate_scores(val_s.scores, val_s.labels, test_s.scores, test_s.labels,
                                   rule or model_cfg.calibrate.rule, model_cfg.calibrate.fallback_quantile, name, version)
    classifier, accuracy = _fit_defect_types(val_s, test_s, calibration.score_name)
    if classifier is not None:
        calibration.test["suspected_defect_accuracy"] = accuracy
    if families and test["family"].isin(families).any():  # every test crop, defects included (fitted on clean ones)
        calibration.test["router_accuracy"] = routing_accuracy(test_s.crops.family, test["family"].to_numpy(str), families)
    calibration = replace(calibration, test_images=dataset_hash(test, "source_sha256"), defect_classifier=classifier,
                          score_scale=scale, families=families)
    tracking.log_calibration(calibration, _calibration_figures(test_s, test, calibration, dirs, model_cfg))
    path = atomic_write_text(Path(workdir) / "calibration.json", json.dumps(calibration.to_dict(), indent=2))
    promoted_to, reason = promote(calibration, test_s.scores[calibration.score_name], test, dirs, model_cfg)
    return CalibrateOutcome(calibration, promoted_to, reason, path)


def _calibration_figures(test: SplitScores, rows: pd.DataFrame, calibration: Calibration, dirs: WorkDirs,
                         cfg: PanelConfig, per_kind: int = 6) -> dict[str, Figure]:
    """The test split at the chosen score and threshold, as pictures for analysts."""
    title, scores, labels = f"test, {calibration.score_name}", test.scores[calibration.score_name], test.labels
    figures = {"roc_pr": plots.roc_pr_figure(scores, labels, title),
               "score_histogram": plots.score_histogram_figure(scores, labels, calibration.threshold, title),
               "confusion": plots.confusion_figure(scores, labels, calibration.threshold, f"{title} at the threshold")}
    worst = test.worst(calibration.score_name)
    defect, flagged = defect_targets(labels), scores >= calibration.threshold
    false_pos = [i for i in np.argsort(-scores) if flagged[i] and not defect[i]][:per_kind]
    false_neg = [i for i in np.argsort(scores) if defect[i] and not flagged[i]][:per_kind]
    images, captions = [], []
    for kind, picks in (("false positive", false_pos), ("missed", false_neg)):
        for i in picks:
            row = rows.iloc[[worst[i]]]
            heat, crop = test.crops.heatmaps[worst[i]], load_crops(row, dirs.crops)[0]
            side = heat.shape[-1]
            images.append(heatmap_overlay(crop, heat, strongest_region(heat, (0, 0, side, side), cfg.score.region_size_frac)))
            captions.append(f"{kind}: {labels[i]}\n{Path(row['source_path'].iloc[0]).name[:24]} {scores[i]:.3g}")
    figures["worst_errors"] = plots.example_grid_figure(
        images, captions, f"worst false positives ({len(false_pos)}) and missed defects ({len(false_neg)}), {title}")
    return figures


def promote(candidate: Calibration, new_scores: np.ndarray, test: pd.DataFrame, dirs: WorkDirs,
            cfg: PanelConfig) -> tuple[str, str]:
    """Champion gate: the candidate (trained with cfg) replaces the champion unless its test
    ROC-AUC is worse beyond the noise: the paired-bootstrap CI of (new - old) on the same test
    images, each model with its own score function, lies wholly below zero. With other
    preprocessing, the recorded AUCs are compared only when both were tested on the same source
    images (the candidate's own CI against the champion's AUC); otherwise the candidate waits."""
    name, version = candidate.model_name, candidate.model_version
    new_auc = candidate.test.get("roc_auc", float("nan"))
    n_images = int(candidate.test.get("n", 0))
    champion = tracking.current_version(name, tracking.CHAMPION)
    if champion is None or champion == version:
        reason = f"first calibrated version (test ROC-AUC {new_auc:.4f})"
        tracking.set_alias(name, version, tracking.CHAMPION, reason)
        return tracking.CHAMPION, reason
    old_cfg = tracking.load_config(name, champion)
    old_cal = tracking.load_calibration(name, champion)
    if old_cfg.ingest == cfg.ingest:
        old = _score_images(tracking.load_model(name, champion), test, dirs, old_cfg, scale=old_cal.score_scale)
        decision = gate(new_scores, old.scores[old_cal.score_name], old.labels)
        better, numbers = decision.promote, decision.describe()
        basis = f"the same {n_images} test images"
    elif old_cal.test_images and old_cal.test_images == candidate.test_images:
        old_auc = old_cal.test.get("roc_auc", float("nan"))
        high = candidate.test.get("roc_auc_ci_high", new_auc)
        better = not np.isnan(new_auc) and (np.isnan(old_auc) or high >= old_auc)
        numbers = f"ROC-AUC {new_auc:.4f} (CI up to {high:.4f}) vs champion {old_auc:.4f}"
        basis = f"the same {n_images} test images (recorded, other preprocessing)"
    else:
        reason = (f"v{version} (test ROC-AUC {new_auc:.4f}) is not comparable with champion v{champion}: "
                  "other preprocessing and other test images; set the alias by hand if intended")
        tracking.set_alias(name, version, tracking.CHALLENGER, reason)
        return tracking.CHALLENGER, reason
    alias = tracking.CHAMPION if better else tracking.CHALLENGER
    verdict = "replaces" if better else "is worse beyond the noise than"
    reason = f"v{version} {verdict} champion v{champion} on {basis}: {numbers}"
    tracking.set_alias(name, version, alias, reason)
    return alias, reason


@dataclass(frozen=True)
class ScoreOutcome:
    report_dir: Path
    model_version: str
    n_scored: int  # images scored by this run (earlier runs' images are in the report, not here)
    n_skipped: int  # images the ledger says this version already scored for the date
    n_flagged: int  # flagged images in the whole report
    n_report: int  # images in the whole report
    n_quarantined: int
    images_per_s: float  # this run's images, end to end (read, decode, crop, score, write)
    drift: DriftCheck


@dataclass(frozen=True)
class ScoringPlan:
    """What a scoring run will do, decided once before any image is scored: the model version
    (pinned for the whole run, every shard), the date, and the images still to score."""

    raw: str
    model_version: str
    report_date: str
    todo: list[str]  # image paths, unique content, not yet in the ledger for this date + version
    n_skipped: int  # already in the ledger
    quarantine: list[dict]  # symlinks out of raw, duplicate content: rejected before scoring


@dataclass(frozen=True)
class ShardResult:
    n_scored: int
    quarantine: list[dict]  # rows for quarantine.csv, recorded once by whoever finishes the run


def plan_scoring(raw: Path, workdir: Path, cfg: PanelConfig, model_ref: str = "champion", day: date | None = None,
                 paths: list[Path] | None = None) -> ScoringPlan:
    """Pin the model version, list the images (all under raw, or just `paths`), drop what the
    ledger already holds and reject duplicate content (each image path is reported once)."""
    tracking.configure(cfg.tracking)
    version = tracking.resolve_version(cfg.tracking.model_name, model_ref)
    ingest_cfg = tracking.load_config(cfg.tracking.model_name, version).ingest
    raw = Path(raw).resolve()
    report_date = (day or date.today()).isoformat()
    inputs, rejected = list_inputs(raw, ingest_cfg)
    if paths is not None:
        wanted = {Path(p).resolve() for p in paths}
        inputs = [p for p in inputs if p.resolve() in wanted]
    done = Ledger(WorkDirs(Path(workdir)).ledger).done(report_date, version)
    todo, seen, skipped = [], {}, 0
    for path in inputs:
        sha = sha256_file(path)
        if sha in done:
            skipped += 1
        elif sha and sha in seen:
            rejected.append(Rejected(path, sha, f"duplicate of {seen[sha].relative_to(raw)}"))
        else:
            seen[sha] = path
            todo.append(str(path))
    return ScoringPlan(str(raw), version, report_date, todo, skipped, quarantine_rows(rejected, raw).to_dict("records"))


def score_shard(plan: ScoringPlan, paths: list[str], workdir: Path, cfg: PanelConfig, out: Path | None = None,
                progress: Progress | None = None) -> ShardResult:
    """Score some of a plan's images (one shard, or all of them) in batches of score.batch_images;
    each batch's rows are committed to the ledger before the next batch starts."""
    tracking.configure(cfg.tracking)
    name, version = cfg.tracking.model_name, plan.model_version
    model_cfg, calibration = tracking.load_config(name, version), tracking.load_calibration(name, version)
    model = tracking.load_model(name, version)
    raw, dirs = Path(plan.raw), WorkDirs(Path(workdir))
    day_dir = Path(out or dirs.reports) / plan.report_date
    ledger = Ledger(dirs.ledger)
    n_scored, quarantine = 0, []
    for first in range(0, len(paths), model_cfg.score.batch_images):
        batch = [Path(p) for p in paths[first:first + model_cfg.score.batch_images]]
        crops, rejected = prepare_many(batch, model_cfg.ingest)
        quarantine += quarantine_rows(rejected, raw).to_dict("records")
        if crops:
            scored = score_crops(model, torch.stack([c.pixels for c in crops]), model_cfg.score, model_cfg.model)
            rows = _report_rows(crops, scored, calibration, raw, day_dir, model_cfg)
            ledger.add(plan.report_date, version, rows, [row["source_sha256"] for row in rows])
            n_scored += len(rows)
        if progress is not None:
            progress(first + len(batch), len(paths))
    return ShardResult(n_scored, quarantine)


def finish_scoring(plan: ScoringPlan, shards: list[ShardResult], workdir: Path, cfg: PanelConfig,
                   out: Path | None = None, seconds: float = 0.0) -> ScoreOutcome:
    """Record quarantine, rebuild the day's report from the ledger (every image once), check
    drift, write the gallery and log the panel-score run."""
    tracking.configure(cfg.tracking)
    name, version = cfg.tracking.model_name, plan.model_version
    model_cfg, calibration = tracking.load_config(name, version), tracking.load_calibration(name, version)
    dirs = WorkDirs(Path(workdir))
    day_dir = Path(out or dirs.reports) / plan.report_date
    quarantine = plan.quarantine + [row for shard in shards for row in shard.quarantine]
    record_quarantine(dirs, pd.DataFrame(quarantine, columns=QUARANTINE_COLUMNS))
    scores, flagged = write_report(day_dir, Ledger(dirs.ledger).report_rows(plan.report_date))
    drift = check_drift(scores["score"].to_numpy(float), calibration.threshold, calibration.clean_reference,
                        model_cfg.score.drift_psi, model_cfg.score.drift_flag_rate)
    atomic_write_text(day_dir / "drift.json", json.dumps(drift.to_dict(), indent=2, allow_nan=False))
    write_gallery(day_dir, scores, f"panelscan {plan.report_date}: {name} v{version}", drift.message if drift.drifted else "")
    if drift.drifted:
        warnings.warn(drift.message, stacklevel=2)
    n_scored = sum(shard.n_scored for shard in shards)
    outcome = ScoreOutcome(day_dir, version, n_scored, plan.n_skipped, len(flagged), len(scores),
                           len(quarantine), n_scored / seconds if seconds else 0.0, drift)
    _log_score_run(outcome, cfg, day_dir)
    return outcome


def score_stage(raw: Path, workdir: Path, cfg: PanelConfig, model_ref: str = "champion",
                out: Path | None = None, day: date | None = None, progress: Progress | None = None,
                paths: list[Path] | None = None) -> ScoreOutcome:
    """Score the images under raw (or just `paths` inside it) in one process: plan, one shard,
    finish. A crashed or killed run resumes where the ledger says it stopped."""
    start = time.perf_counter()
    plan = plan_scoring(raw, workdir, cfg, model_ref, day, paths)
    shard = score_shard(plan, plan.todo, workdir, cfg, out, progress)
    return finish_scoring(plan, [shard], workdir, cfg, out, time.perf_counter() - start)


def _report_rows(crops, scored: ScoredBatch, calibration: Calibration, raw: Path, day_dir: Path,
                 cfg: PanelConfig) -> list[dict]:
    """One row per image, from its highest-scoring crop (tile): score, region, heatmap and, for
    flagged images, the suspected defect type (when calibration had labelled defects)."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    values = scaled_scores(scored.scores, scored.family, calibration.score_scale)[calibration.score_name]
    classifier = DefectTypeClassifier.from_dict(calibration.defect_classifier)
    rows = []
    for i in worst_crop(values, [crop.source_sha256 for crop in crops]):
        crop, score, heat = crops[i], values[i], scored.heatmaps[i]
        flagged = bool(score >= calibration.threshold)
        region = strongest_region(heat, crop.bbox, cfg.score.region_size_frac)
        heatmap_path, suspected, confidence = "", "", float("nan")
        if flagged and classifier is not None:
            kinds, probabilities = classifier.predict(error_features(heat[None]))
            suspected, confidence = str(kinds[0]), float(probabilities[0])
        if flagged:
            side = heat.shape[-1]
            local = strongest_region(heat, (0, 0, side, side), cfg.score.region_size_frac)
            heatmap_path = f"heatmaps/{crop.crop_id[:16]}.png"
            save_heatmap(day_dir / heatmap_path, crop.pixels, heat, local)
        rows.append(dict(image_path=crop.source_path.relative_to(raw).as_posix(), crop_id=crop.crop_id,
                         source_sha256=crop.source_sha256,
                         panel_id=str(crop.source_path.relative_to(raw).with_suffix("")), score=float(score),
                         threshold=calibration.threshold, flagged=flagged,
                         severity=float(score / calibration.threshold) if calibration.threshold else float("inf"),
                         region=",".join(map(str, region)), heatmap_path=heatmap_path, suspected_defect=suspected,
                         suspected_confidence=confidence, score_name=calibration.score_name,
                         family=calibration.families[scored.family[i]] if calibration.families else "",
                         model_name=calibration.model_name, model_version=calibration.model_version, scored_at=now))
    return rows


def _log_score_run(outcome: ScoreOutcome, cfg: PanelConfig, day_dir: Path) -> None:
    experiment = tracking.experiment_id(cfg.tracking.score_experiment, cfg.tracking)
    with mlflow.start_run(experiment_id=experiment, run_name=f"score-{day_dir.name}"):
        mlflow.log_params({"model_name": cfg.tracking.model_name, "model_version": outcome.model_version,
                           "report_date": day_dir.name})
        mlflow.log_metrics({"n_scored": outcome.n_scored, "n_skipped": outcome.n_skipped,
                            "n_quarantined": outcome.n_quarantined, "n_report": outcome.n_report,
                            "n_flagged": outcome.n_flagged,
                            "flag_rate": outcome.n_flagged / outcome.n_report if outcome.n_report else 0.0,
                            "images_per_s": outcome.images_per_s})
        drift = outcome.drift
        mlflow.log_metrics({f"drift_{k}": v for k, v in (("psi", drift.psi), ("ks", drift.ks)) if np.isfinite(v)})
        mlflow.set_tags({"drift": str(drift.drifted).lower(), "drift_message": drift.message[:5000]})
        for name in ("flagged.csv", "scores.csv", "index.html", "drift.json"):
            mlflow.log_artifact(str(day_dir / name), "report")
