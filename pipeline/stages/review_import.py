"""Review stage: an inspector's gallery export -> labels in the workdir (pipeline/review.py) and,
per model version, the precision those decisions show, logged to the panel-score experiment."""

from __future__ import annotations

from pathlib import Path

from pipeline import tracking
from pipeline.config import PanelConfig
from pipeline.review import ReviewImport, import_review


def review_stage(review_file: Path, workdir: Path, cfg: PanelConfig, report_date: str | None = None) -> ReviewImport:
    result = import_review(review_file, workdir, cfg.ingest, report_date)
    if result.precision:
        tracking.configure(cfg.tracking)
        tracking.log_review(cfg.tracking, result.report_date, result.precision, result.daily, result.log)
    return result
