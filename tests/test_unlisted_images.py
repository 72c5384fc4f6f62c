"""Images that labels.csv does not list (masks beside their images, stray frames) are ingested as
unlabelled: they never train, never enter a metric, and the figures are those of the tidy folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from pipeline.ingest import ingest
from pipeline.stages import calibrate_stage, train_stage
from pipeline.workspace import MANIFEST_COLUMNS, WorkDirs, read_table
from tests.conftest import small_config


def _tidy_folder(synth_raw: Path, out: Path) -> pd.DataFrame:
    """synth_raw's frames as JPEGs (the way public sets ship images); half the rows name no
    panel_id, so their default panel_id (the path without extension) is shared with any file of
    the same stem."""
    table = pd.read_csv(synth_raw / "labels.csv", dtype=str, keep_default_na=False)
    table["path"] = table["path"].str.replace(".png", ".jpg", regex=False)
    for row in table.itertuples():
        Image.open(synth_raw / row.path.replace(".jpg", ".png")).convert("L").save(out / row.path, quality=95)
    table.loc[table.index % 2 == 1, "panel_id"] = ""
    table.to_csv(out / "labels.csv", index=False)
    return table


def _add_unlisted(synth_raw: Path, out: Path, table: pd.DataFrame) -> tuple[int, int]:
    """A white-on-black mask X.png beside every defect X.jpg, and a mirrored copy X.bmp of every
    fifth clean frame (a real picture, not listed). Returns (masks, others)."""
    boxes = pd.read_csv(synth_raw / "panels.csv", dtype=str, keep_default_na=False).set_index("path")["defect_box"]
    masks = others = 0
    for i, row in enumerate(table.itertuples()):
        image = Image.open(out / row.path)
        if row.label != "ok":
            mask = np.zeros((image.height, image.width), np.uint8)
            x0, y0, x1, y1 = map(int, boxes[row.path.replace(".jpg", ".png")].split(","))
            mask[y0:y1, x0:x1] = 255
            Image.fromarray(mask).save(out / row.path.replace(".jpg", ".png"))
            masks += 1
        elif i % 5 == 0:
            ImageOps.mirror(image).save(out / row.path.replace(".jpg", ".bmp"))
            others += 1
    return masks, others


def _run(raw: Path, work: Path, name: str):
    cfg = small_config(epochs=2).replace("tracking", model_name=name)
    result = ingest(raw, work, raw / "labels.csv", cfg.ingest)
    train_stage(work, cfg, progress=False)
    return result, calibrate_stage(work, cfg).calibration


@pytest.mark.slow  # end to end: make test runs it, the quick loop leaves it out
def test_unlisted_files_never_train_or_calibrate_and_leave_the_figures_unchanged(synth_raw: Path, tmp_path: Path):
    tidy, messy = tmp_path / "tidy", tmp_path / "messy"
    tidy.mkdir()
    table = _tidy_folder(synth_raw, tidy)
    shutil.copytree(tidy, messy)
    masks, others = _add_unlisted(synth_raw, messy, table)
    assert masks > 10 and others > 5

    tidy_result, tidy_cal = _run(tidy, tmp_path / "work-tidy", "tidy")
    messy_result, messy_cal = _run(messy, tmp_path / "work-messy", "messy")

    # ingest says it, once, and names the masks as masks
    assert tidy_result.notes == ()
    (line,) = [note for note in messy_result.notes if "unlisted" in note]
    n_listed = len(table)
    assert (f"lists {n_listed:,} of {n_listed + masks + others:,} images under {messy.resolve()}; "
            f"{masks + others:,} are unlisted: scored in reports, never trained on or calibrated against") in line
    assert f"{masks:,} of them look like defect masks" in line

    # no unlisted crop in train / val / test, though masks share their image's panel_id
    manifest = read_table(WorkDirs(tmp_path / "work-messy").manifest, MANIFEST_COLUMNS)
    unlisted = ~manifest["source_path"].isin(table["path"])
    assert manifest.loc[unlisted, "source_path"].nunique() == masks + others
    assert set(manifest.loc[unlisted, "split"]) == {"unlabelled"} and set(manifest.loc[unlisted, "label"]) == {""}
    shared = manifest.loc[unlisted, "panel_id"].isin(manifest.loc[~unlisted, "panel_id"])
    assert manifest.loc[unlisted, "source_path"][shared].nunique() > 5  # the case that went wrong: a mask took its image's split

    # calibration counts the listed images only, and every figure equals the tidy folder's
    tidy_manifest = read_table(WorkDirs(tmp_path / "work-tidy").manifest, MANIFEST_COLUMNS)
    for split in ("val", "test"):
        listed = tidy_manifest[tidy_manifest["split"] == split]
        assert getattr(messy_cal, split)["n"] == getattr(tidy_cal, split)["n"] == len(listed)
    assert messy_cal.score_name == tidy_cal.score_name and messy_cal.threshold == pytest.approx(tidy_cal.threshold)
    for split in ("val", "test"):
        tidy_figures, messy_figures = getattr(tidy_cal, split), getattr(messy_cal, split)
        assert messy_figures.keys() == tidy_figures.keys()
        for key, value in tidy_figures.items():
            assert messy_figures[key] == pytest.approx(value, nan_ok=True), (split, key)

    # with more than one defect class, the overall ROC-AUC lies within the per-class figures
    # (same negatives): a clean-counted unlabelled image would break it
    per_class = [v for k, v in messy_cal.test.items() if k.startswith("roc_auc_") and not k.startswith("roc_auc_ci")]
    assert len(per_class) == 2 and min(per_class) - 1e-9 <= messy_cal.test["roc_auc"] <= max(per_class) + 1e-9
