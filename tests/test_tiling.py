"""Tiling: large images cut into overlapping tiles, scored per tile, combined per image (max)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import tracking
from pipeline.config import IngestConfig
from pipeline.crop import tile_boxes, tile_side
from pipeline.ingest import ingest, prepare
from pipeline.scoring import per_image_max, scaled_scores, score_crops, worst_crop
from pipeline.stages import calibrate_stage, score_stage, train_stage
from pipeline.synth import generate
from pipeline.workspace import WorkDirs
from tests.conftest import small_config


def test_long_frames_are_tiled_in_squares_of_their_short_side():
    long_frame = (0, 0, 1260, 500)  # a KolektorSDD-like 2.5:1 frame
    assert tile_side(long_frame, 0, 1.5) == 500 and tile_side((0, 0, 500, 1260), 0, 1.5) == 500
    assert {(b[2] - b[0], b[3] - b[1]) for b in tile_boxes(long_frame, 500, 0.25)} == {(500, 500)}  # squares
    assert tile_side((0, 0, 300, 280), 0, 1.5) == 0  # a near-square panel stays one crop
    assert tile_side(long_frame, 128, 1.5) == 128 and tile_side(long_frame, 0, 0.0) == 0  # explicit tile; off


def test_tiles_cover_the_box_with_overlap_and_flush_edges():
    boxes = tile_boxes((10, 20, 310, 220), tile=128, overlap=0.25)
    covered = np.zeros((240, 320), bool)
    for x0, y0, x1, y1 in boxes:
        assert (x1 - x0, y1 - y0) == (128, 128)
        covered[y0:y1, x0:x1] = True
    assert covered[20:220, 10:310].all() and covered.sum() == 300 * 200  # all of the box, nothing outside
    assert sorted({b[0] for b in boxes}) == [10, 106, 182] and sorted({b[1] for b in boxes}) == [20, 92]
    assert tile_boxes((0, 0, 100, 60), tile=128, overlap=0.25) == [(0, 0, 100, 60)]  # smaller than a tile
    assert tile_boxes((0, 0, 100, 60), tile=0, overlap=0.25) == [(0, 0, 100, 60)]  # tiling off
    with pytest.raises(ValueError, match="tile_overlap"):
        tile_boxes((0, 0, 300, 300), tile=100, overlap=1.0)


def test_per_image_max_and_worst_crop_follow_first_seen_image_order():
    keys = ["b", "a", "b", "a", "c"]
    images, scores = per_image_max({"s": np.array([1.0, 5.0, 3.0, 2.0, 0.5]), "t": np.array([9.0, 0, 0, 1, 2])}, keys)
    assert images == ["b", "a", "c"]
    assert list(scores["s"]) == [3.0, 5.0, 0.5] and list(scores["t"]) == [9.0, 1.0, 2.0]  # each score its own max
    assert list(worst_crop(np.array([1.0, 5.0, 3.0, 2.0, 0.5]), keys)) == [2, 1, 4]


def test_a_workdir_refuses_crops_made_another_way(synth_raw: Path, tmp_path: Path):
    ingest(synth_raw, tmp_path / "w", None, IngestConfig(image_size=32))
    with pytest.raises(ValueError, match=r"other preprocessing \(tile: 0 -> 96\).*another --workdir"):
        ingest(synth_raw, tmp_path / "w", None, IngestConfig(image_size=32, tile=96))


@pytest.mark.slow  # end to end: make test runs it, the quick loop leaves it out
def test_tiled_pipeline_scores_each_image_once_as_its_worst_tile(synth_raw: Path, tmp_path: Path):
    cfg = small_config(epochs=2).replace("ingest", tile=96, tile_overlap=0.25)
    work = tmp_path / "work"
    ingest(synth_raw, work, synth_raw / "labels.csv", cfg.ingest)
    manifest = pd.read_csv(WorkDirs(work).manifest, keep_default_na=False)
    per_source = manifest.groupby("source_path")
    assert (per_source.size() >= 4).all()  # a ~170x130 panel in 96 px tiles: 2 rows x 3 columns
    assert (per_source["split"].nunique() == 1).all() and (per_source["panel_id"].nunique() == 1).all()

    train_stage(work, cfg, progress=False)
    outcome = calibrate_stage(work, cfg)
    test_images = manifest[manifest["split"] == "test"]["source_path"].nunique()
    assert outcome.calibration.test["n"] == test_images  # judged per image, not per tile

    inbox = tmp_path / "inbox"
    generate(inbox, n=6, seed=5)
    report = score_stage(inbox, work, cfg, day=None, out=tmp_path / "reports")
    scores = pd.read_csv(report.report_dir / "scores.csv", keep_default_na=False)
    assert report.n_scored == 6 and len(scores) == 6 and scores["image_path"].is_unique

    model = tracking.load_model(cfg.tracking.model_name, outcome.calibration.model_version)
    choice = outcome.calibration.choice
    for row in scores.itertuples():
        tiles = prepare(inbox / row.image_path, cfg.ingest)
        scored = score_crops(model, torch.stack([t.pixels for t in tiles]), cfg.score, cfg.model)
        tile_scores = choice.values(scaled_scores(scored.scores, scored.family, outcome.calibration.score_scale),
                                    scored.family)
        worst = tiles[int(np.argmax(tile_scores))]
        assert row.score == pytest.approx(tile_scores.max(), rel=1e-6)
        assert row.crop_id == worst.crop_id
        x0, y0, x1, y1 = map(int, row.region.split(","))
        tx0, ty0, tx1, ty1 = worst.bbox
        assert tx0 <= x0 < x1 <= tx1 + 1 and ty0 <= y0 < y1 <= ty1 + 1  # region lies in the worst tile
