"""Image files -> report rows, as a two-stage pipeline: this thread reads, decodes and crops the
next chunk while one scoring thread runs the model on the last one, builds its report rows and
hands them to `commit` (chunks in order, at most one waiting: memory stays bounded). Decoding and
cropping hold the GIL; torch releases it, so on two cores the model costs little beyond the I/O
floor. Nightly scoring (stages/score.py) commits to the ledger; benchmarks/gpu.py, where MLflow is
absent, passes a loaded model and drops the rows."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn

from pipeline.calibration import Calibration
from pipeline.config import PanelConfig, ScoreConfig
from pipeline.ingest import Crop, Progress, Rejected, decoding
from pipeline.report import Heatmap, report_rows
from pipeline.scoring import score_crops

PIPELINE_STEP = 32  # images: short first and last steps (the parts nothing overlaps) at little cost per step
Commit = Callable[[list[dict], list[Heatmap]], None]  # runs on the scoring thread, chunk by chunk, in order


def scoring_chunk(score: ScoreConfig, decode_workers: int) -> int:
    """Images per pipeline step and commit: PIPELINE_STEP when this process decodes, a commit's
    worth (score.batch_images) with decode workers, since each step is split among them."""
    return score.batch_images if decode_workers > 0 else max(1, min(score.batch_images, PIPELINE_STEP))


def score_files(paths: list[Path], load_model: Callable[[], nn.Module], model_cfg: PanelConfig,
                calibration: Calibration, raw: Path, commit: Commit, decode_workers: int = 0,
                progress: Progress | None = None) -> tuple[int, list[Rejected]]:
    """Score image files with the model `load_model` returns (called on the scoring thread, so a
    registry load overlaps the first chunk's decoding). Returns the images scored (rows committed)
    and the files rejected while decoding. An error on the scoring thread is raised here, at the
    latest after the last chunk; what was committed before it stays committed."""
    chunk = scoring_chunk(model_cfg.score, decode_workers)
    # One core stays with decoding here: torch's threads spinning on it would stall both stages.
    threads = max(1, torch.get_num_threads() - (decode_workers <= 0))
    rejected: list[Rejected] = []
    with ThreadPoolExecutor(1, "panelscan-score", initializer=torch.set_num_threads, initargs=(threads,)) as scorer:
        model = scorer.submit(load_model)

        def score_and_commit(crops: list[Crop]) -> int:
            scored = score_crops(model.result(), torch.stack([c.pixels for c in crops]), model_cfg.score,
                                 model_cfg.model, only=calibration.choice.needs())
            rows, heatmaps = report_rows(crops, scored, calibration, raw, model_cfg.score.region_size_frac)
            commit(rows, heatmaps)
            return len(rows)

        n_scored, pending = 0, None
        with decoding(decode_workers) as prepare:
            for first in range(0, len(paths), chunk):
                batch = [Path(p) for p in paths[first:first + chunk]]
                crops, bad = prepare(batch, model_cfg.ingest)
                rejected += bad
                n_scored += _settle(pending, progress, len(paths))
                pending = (scorer.submit(score_and_commit, crops) if crops else None, first + len(batch))
        n_scored += _settle(pending, progress, len(paths))
        model.result()  # a load error surfaces even when no chunk had an image to score
    return n_scored, rejected


def _settle(pending: tuple[Future | None, int] | None, progress: Progress | None, total: int) -> int:
    """Wait until a submitted chunk is committed (re-raising its error), report progress up to its
    last image, and return how many images it scored."""
    if pending is None:
        return 0
    future, done = pending
    n_scored = future.result() if future is not None else 0
    if progress is not None:
        progress(done, total)
    return n_scored
