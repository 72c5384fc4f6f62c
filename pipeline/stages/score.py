"""Score stage: a folder of new images -> the day's report, exactly once per image. Split into
plan (pin the version, skip what the ledger holds, reject duplicates), shards (batches committed
to the ledger) and finish (quarantine, report from the ledger, drift, gallery, MLflow run): a
shard is the unit a Dask task runs."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd

from pipeline import tracking
from pipeline.batch_scoring import score_files
from pipeline.calibration import Calibration
from pipeline.config import PanelConfig
from pipeline.device import pick_device
from pipeline.drift import DriftCheck, check_drift
from pipeline.files import atomic_write_text, sha256_file
from pipeline.gallery import write_gallery
from pipeline.ingest import QUARANTINE_COLUMNS, Progress, Rejected, list_inputs, quarantine_rows, record_quarantine
from pipeline.ledger import Ledger
from pipeline.locks import workdir_lock
from pipeline.report import Heatmap, write_heatmaps, write_report
from pipeline.workspace import WorkDirs

REPORT_FILES = ("flagged.csv", "scores.csv", "index.html", "drift.json")  # logged with the panel-score run


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
    config: dict  # the version's config and calibration, read once and pinned like the version:
    calibration: dict  # every shard scores with the same threshold even if calibrate runs meanwhile

    def model_config(self) -> PanelConfig:
        return PanelConfig.from_dict(self.config)


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
    model_cfg = tracking.load_config(cfg.tracking.model_name, version)
    calibration = tracking.load_calibration(cfg.tracking.model_name, version)
    ingest_cfg = model_cfg.ingest
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
    return ScoringPlan(str(raw), version, report_date, todo, skipped, quarantine_rows(rejected, raw).to_dict("records"),
                       model_cfg.to_dict(), calibration.to_dict())


def _day_dir(plan: ScoringPlan, workdir: Path, out: Path | None) -> Path:
    return Path(out or WorkDirs(Path(workdir)).reports) / plan.report_date


def score_shard(plan: ScoringPlan, paths: list[str], workdir: Path, cfg: PanelConfig, out: Path | None = None,
                progress: Progress | None = None) -> ShardResult:
    """Score some of a plan's images (one shard, or all of them) through the two-stage pipeline
    (pipeline/batch_scoring.py), committing each chunk's rows to the ledger as it is scored."""
    tracking.configure(cfg.tracking)
    name, version = cfg.tracking.model_name, plan.model_version
    raw, day_dir = Path(plan.raw), _day_dir(plan, workdir, out)
    ledger = Ledger(WorkDirs(Path(workdir)).ledger)

    def commit(rows: list[dict], heatmaps: list[Heatmap]) -> None:
        write_heatmaps(day_dir, heatmaps)  # before the ledger: a committed row's heatmap exists
        ledger.add(plan.report_date, version, rows, [row["source_sha256"] for row in rows])

    # This run's device and decode workers, not training's; a defect head only when the chosen score reads it.
    calibration = Calibration.from_dict(plan.calibration)
    n_scored, rejected = score_files(
        [Path(p) for p in paths],
        lambda: tracking.load_model(name, version, pick_device(cfg.score.device), head=calibration.choice.reads_head()),
        plan.model_config(), calibration, raw, commit, cfg.score.decode_workers, progress)
    return ShardResult(n_scored, quarantine_rows(rejected, raw).to_dict("records"))


def finish_scoring(plan: ScoringPlan, shards: list[ShardResult], workdir: Path, cfg: PanelConfig,
                   out: Path | None = None, seconds: float = 0.0) -> ScoreOutcome:
    """Record quarantine, rebuild the day's report from the ledger (every image once), check
    drift, write the gallery and log the panel-score run."""
    tracking.configure(cfg.tracking)
    name, version = cfg.tracking.model_name, plan.model_version
    model_cfg, calibration = plan.model_config(), Calibration.from_dict(plan.calibration)
    dirs, day_dir = WorkDirs(Path(workdir)), _day_dir(plan, workdir, out)
    quarantine = plan.quarantine + [row for shard in shards for row in shard.quarantine]
    record_quarantine(dirs, pd.DataFrame(quarantine, columns=QUARANTINE_COLUMNS))
    scores, flagged = write_report(day_dir, Ledger(dirs.ledger).report_rows(plan.report_date))
    drift = check_drift(scores["score"].to_numpy(float), calibration.threshold, calibration.clean_reference,
                        model_cfg.score.drift_psi, model_cfg.score.drift_flag_rate)
    atomic_write_text(day_dir / "drift.json", json.dumps(drift.to_dict(), indent=2, allow_nan=False))
    atomic_write_text(day_dir / "scored_folder.txt", str(Path(plan.raw).resolve()))  # where a review finds the originals
    write_gallery(day_dir, scores, f"panelscan {plan.report_date}: {name} v{version}",
                  drift.message if drift.drifted else "", raw=Path(plan.raw), date=plan.report_date)
    if drift.drifted:
        warnings.warn(drift.message, stacklevel=2)
    n_scored = sum(shard.n_scored for shard in shards)
    outcome = ScoreOutcome(day_dir, version, n_scored, plan.n_skipped, len(flagged), len(scores),
                           len(quarantine), n_scored / seconds if seconds else 0.0, drift)
    counts = {"n_scored": outcome.n_scored, "n_skipped": outcome.n_skipped, "n_quarantined": outcome.n_quarantined,
              "n_report": outcome.n_report, "n_flagged": outcome.n_flagged,
              "flag_rate": outcome.n_flagged / outcome.n_report if outcome.n_report else 0.0,
              "images_per_s": outcome.images_per_s}
    tracking.log_score_run(cfg.tracking, plan.report_date, version, counts, drift, [day_dir / f for f in REPORT_FILES])
    return outcome


def scoring_lock(workdir: Path, on_wait: Callable[[str], None] | None = None):
    """Held from plan to finish: a second scoring (or an ingest) of this workdir waits, then
    finds in the ledger what the first scored, so no image is scored twice."""
    return workdir_lock(Path(workdir), "score", on_wait=on_wait)


def score_stage(raw: Path, workdir: Path, cfg: PanelConfig, model_ref: str = "champion",
                out: Path | None = None, day: date | None = None, progress: Progress | None = None,
                paths: list[Path] | None = None) -> ScoreOutcome:
    """Score the images under raw (or just `paths` inside it) in one process: plan, one shard,
    finish. A crashed or killed run resumes where the ledger says it stopped."""
    with scoring_lock(workdir):
        start = time.perf_counter()
        plan = plan_scoring(raw, workdir, cfg, model_ref, day, paths)
        shard = score_shard(plan, plan.todo, workdir, cfg, out, progress)
        return finish_scoring(plan, [shard], workdir, cfg, out, time.perf_counter() - start)
