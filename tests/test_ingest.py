import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.config import IngestConfig
from pipeline.crop import CropError, box_iou, locate_panel, panel_box
from pipeline.images import decode_file
from pipeline.ingest import ingest
from pipeline.labels import LabelsError, load_labels
from pipeline.synth import HARD_SCENE, LABELS, render_frame
from pipeline.workspace import WorkDirs, load_split
from tests.conftest import tree_digest


@pytest.fixture()
def messy_raw(synth_raw: Path, tmp_path: Path) -> Path:
    """20 good frames plus one of each kind of bad input."""
    raw = tmp_path / "raw"
    raw.mkdir()
    labels = pd.read_csv(synth_raw / "labels.csv").head(20)
    for name in labels["path"]:
        shutil.copy(synth_raw / name, raw / name)
    good = (synth_raw / labels["path"][0]).read_bytes()
    (raw / "zero.png").write_bytes(b"")
    (raw / "truncated.png").write_bytes(good[: len(good) // 2])
    (raw / "corrupt.png").write_bytes(good[:64] + bytes(range(256)) * 8)
    (raw / "notes.txt").write_text("operator notes, not an image")
    (raw / "tiny.png").write_bytes(_png_of(np.zeros((8, 8), np.uint8)))
    (raw / "zz_copy_of_first.png").write_bytes(good)
    labels.to_csv(raw / "labels.csv", index=False)
    return raw


def _png_of(array: np.ndarray) -> bytes:
    import torch
    from torchvision.io import encode_png
    return encode_png(torch.from_numpy(array)[None]).numpy().tobytes()


def _make_unreadable(path: Path, monkeypatch) -> None:
    """chmod 000; as root (CI) permissions do not bite, so the OS refusal is simulated for this file."""
    path.chmod(0)
    if os.geteuid() == 0:
        real = Path.read_bytes
        def refuse(self: Path) -> bytes:
            if self.name == path.name:
                raise PermissionError(13, "Permission denied", str(self))
            return real(self)
        monkeypatch.setattr(Path, "read_bytes", refuse)


def test_bad_inputs_are_quarantined_with_reasons_and_raw_is_untouched(messy_raw: Path, synth_raw: Path,
                                                                      tmp_path: Path, monkeypatch):
    locked = messy_raw / "locked.png"
    shutil.copy(synth_raw / pd.read_csv(synth_raw / "labels.csv")["path"][30], locked)
    before = tree_digest(messy_raw)
    _make_unreadable(locked, monkeypatch)
    result = ingest(messy_raw, tmp_path / "work", messy_raw / "labels.csv", IngestConfig(image_size=64))
    monkeypatch.undo()
    locked.chmod(0o644)
    assert tree_digest(messy_raw) == before
    assert result.n_new == 20
    quarantine = pd.read_csv(WorkDirs(tmp_path / "work").quarantine, keep_default_na=False).set_index("path")
    reasons = quarantine["reason"].to_dict()
    assert reasons["zero.png"].startswith("empty file")
    assert reasons["truncated.png"] == "PNG ends early (no IEND chunk): the file was cut short"
    assert reasons["corrupt.png"].startswith("PNG ")
    assert reasons["notes.txt"] == "not an image: the bytes are plain text"
    assert reasons["tiny.png"].startswith("too small: 8x8 px")
    assert reasons["zz_copy_of_first.png"].startswith("duplicate of frame_")
    assert reasons["locked.png"] == "cannot be read: permission denied"
    assert set(quarantine.columns) >= {"sha256", "reason"}
    leftovers = [p for p in (tmp_path / "work").rglob("*.tmp")]
    assert leftovers == []


def test_manifest_contract_and_grouped_splits(synth_raw: Path, tmp_path: Path):
    ingest(synth_raw, tmp_path, synth_raw / "labels.csv", IngestConfig(image_size=64))
    manifest = pd.read_csv(WorkDirs(tmp_path).manifest, keep_default_na=False)
    assert list(manifest.columns)[:10] == ["crop_id", "source_path", "source_sha256", "bbox", "panel_id", "label",
                                           "split", "width", "height", "ingested_at"]
    assert len(manifest) == 120 and manifest["crop_id"].is_unique
    assert manifest.groupby("panel_id")["split"].nunique().max() == 1
    assert set(manifest.loc[manifest["label"] != "ok", "split"]) <= {"val", "test"}
    train = load_split(WorkDirs(tmp_path).manifest, ["train"], trainable_only=True)
    assert len(train) > 0 and set(train["label"]) == {"ok"}
    for _, row in manifest.head(5).iterrows():
        assert (WorkDirs(tmp_path).crops / row["crop_path"]).exists()
        assert (row["width"], row["height"]) == ("64", "64") or (row["width"], row["height"]) == (64, 64)


def test_reingest_with_5_new_files_decodes_only_those_5(synth_raw: Path, tmp_path: Path, monkeypatch):
    import pipeline.ingest as ingest_module

    raw = tmp_path / "raw"
    shutil.copytree(synth_raw, raw)
    held_back = sorted(raw.glob("frame_*.png"))[-5:]
    for path in held_back:
        path.rename(tmp_path / path.name)
    first = ingest(raw, tmp_path / "w", raw / "labels.csv", IngestConfig(image_size=64))
    before = pd.read_csv(WorkDirs(tmp_path / "w").manifest).set_index("crop_id")
    for path in held_back:
        shutil.copy(tmp_path / path.name, path)
    decoded = []
    real_prepare = ingest_module.prepare
    monkeypatch.setattr(ingest_module, "prepare", lambda path, cfg: decoded.append(path.name) or real_prepare(path, cfg))
    second = ingest(raw, tmp_path / "w", raw / "labels.csv", IngestConfig(image_size=64))
    assert sorted(decoded) == sorted(p.name for p in held_back)
    assert (first.n_new, second.n_new, second.n_skipped) == (115, 5, 115)
    after = pd.read_csv(WorkDirs(tmp_path / "w").manifest).set_index("crop_id")
    assert after.loc[before.index].equals(before)  # old rows untouched: same split, same ingested_at


def test_reingest_applies_a_changed_labels_file_without_decoding_again(synth_raw: Path, tmp_path: Path, monkeypatch):
    """A labeller corrects one image and adds families: the next ingest decodes nothing, the
    manifest carries the new label and families, and the corrected panel leaves training."""
    import pipeline.ingest as ingest_module

    cfg = IngestConfig(image_size=64)
    ingest(synth_raw, tmp_path / "w", synth_raw / "labels.csv", cfg)
    manifest = pd.read_csv(WorkDirs(tmp_path / "w").manifest, keep_default_na=False)
    assert set(manifest["family"]) == {""}
    relabelled = manifest.loc[manifest["split"] == "train", "source_path"].iloc[0]
    labels = pd.read_csv(synth_raw / "labels.csv", dtype=str, keep_default_na=False)
    labels.loc[labels["path"] == relabelled, "label"] = "crack"
    labels["family"] = np.where(labels.index % 2, "a", "b")
    labels.to_csv(tmp_path / "labels_v2.csv", index=False)
    monkeypatch.setattr(ingest_module, "prepare", lambda path, cfg: pytest.fail(f"decoded {path} again"))
    result = ingest(synth_raw, tmp_path / "w", tmp_path / "labels_v2.csv", cfg)
    assert result.n_new == 0
    after = pd.read_csv(WorkDirs(tmp_path / "w").manifest, keep_default_na=False).set_index("source_path")
    assert after.loc[relabelled, "label"] == "crack" and after.loc[relabelled, "split"] in ("val", "test")
    assert (after["family"] == labels.set_index("path").loc[after.index, "family"]).all()


def test_auto_crop_matches_true_panel_box(synth_raw: Path):
    panels = pd.read_csv(synth_raw / "panels.csv")
    ious = [box_iou(locate_panel(decode_file(synth_raw / p).pixels), tuple(map(int, b.split(","))))
            for p, b in zip(panels["path"], panels["panel_box"])]
    assert np.mean(ious) >= 0.9, np.mean(ious)


def test_auto_crop_holds_under_hard_lighting_and_backgrounds():
    """Dim or glaring panels, backgrounds brighter or darker than the panel with strong (even
    saturating) gradients, heavy noise, panels nearly filling the frame."""
    ious = []
    for i in range(45):
        frame = render_frame(np.random.default_rng([7, i]), LABELS[i % 3], HARD_SCENE)
        gray = torch.from_numpy(np.asarray(frame.image.convert("L")).copy())[None]
        ious.append(box_iou(locate_panel(gray), frame.panel_box))
    assert np.mean(ious) >= 0.93 and np.median(ious) >= 0.95, (np.mean(ious), np.median(ious))


def test_auto_crop_keeps_a_frame_filling_cell_whole():
    """An ELPV-like cell: fills the frame, dark falloff at its rim, a dark busbar across the
    middle splitting it in two. The box must be the cell, not one half of it."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:300, 0:300]
    rim = np.minimum(np.minimum(xx, 299 - xx), np.minimum(yy, 299 - yy))
    cell = 40 + 60 * np.clip(rim / 15, 0, 1) + rng.normal(0, 4, (300, 300))
    cell[145:155] = 25  # busbar
    box = locate_panel(torch.from_numpy(np.clip(cell, 0, 255).astype(np.uint8))[None])
    assert box_iou(box, (0, 0, 300, 300)) >= 0.85, box


def test_a_frame_with_nothing_distinct_is_scored_whole_not_dropped():
    """A dead (uniformly dark) cell or an empty frame: the locator finds no panel, and auto
    cropping keeps the whole frame so the image is scored and can be flagged."""
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:200, 0:200]
    empty = torch.from_numpy(np.clip(16 + 0.02 * xx + rng.normal(0, 3, (200, 200)), 0, 255).astype(np.uint8))[None]
    with pytest.raises(CropError, match="no panel found"):
        locate_panel(empty)
    assert panel_box(empty, "auto") == (0, 0, 200, 200)


def test_roi_and_none_crop_modes(synth_raw: Path, tmp_path: Path):
    roi = ingest(synth_raw, tmp_path / "roi", None, IngestConfig(image_size=32, crop="roi", roi=(10, 20, 110, 120)))
    manifest = pd.read_csv(roi.manifest_path)
    assert set(manifest["bbox"]) == {"10,20,110,120"} and set(manifest["split"]) == {"unlabelled"}
    none = ingest(synth_raw, tmp_path / "none", None, IngestConfig(image_size=32, crop="none"))
    assert set(pd.read_csv(none.manifest_path)["bbox"]) == {"0,0,256,256"}


def test_labels_file_problems_are_clear(tmp_path: Path):
    bad = tmp_path / "labels.csv"
    bad.write_text("file,class\na.png,ok\n")
    with pytest.raises(LabelsError, match="labels.csv.*lacks column"):
        load_labels(bad)


def test_huge_declared_size_is_rejected_before_decoding(tmp_path: Path):
    from pipeline.images import ImageRejected
    big = tmp_path / "bomb.png"
    big.write_bytes(_png_of(np.zeros((300, 400), np.uint8)))
    with pytest.raises(ImageRejected, match="too large: 400x300"):
        decode_file(big, max_pixels=100_000)


def _save(image, path: Path, fmt: str, **kw) -> Path:
    image.save(path, fmt, **kw)
    return path


def test_formats_modes_and_exif_give_the_same_crop(synth_raw: Path, tmp_path: Path):
    """16-bit TIFF, CMYK JPEG, BMP, palette, RGBA and an EXIF-rotated JPEG crop like the 8-bit original."""
    from PIL import Image

    from pipeline.ingest import prepare

    cfg = IngestConfig(image_size=64)
    source = Image.open(synth_raw / pd.read_csv(synth_raw / "labels.csv")["path"][0]).convert("L")
    reference = prepare(_save(source, tmp_path / "ref.png", "PNG"), cfg)[0].pixels.float()
    wide = Image.fromarray(np.asarray(source).astype(np.uint16) * 257)  # full 16-bit range
    rotated = source.convert("RGB").rotate(90, expand=True)  # stored sideways, EXIF says turn it back
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    variants = {
        "tiff16": _save(wide, tmp_path / "a.tif", "TIFF"),
        "tiff8": _save(source, tmp_path / "b.tiff", "TIFF"),
        "bmp": _save(source.convert("RGB"), tmp_path / "c.bmp", "BMP"),
        "palette": _save(source.convert("P"), tmp_path / "d.png", "PNG"),
        "rgba": _save(source.convert("RGBA"), tmp_path / "e.png", "PNG"),
        "jpeg_rgb": _save(source.convert("RGB"), tmp_path / "f.jpg", "JPEG", quality=95),
        "jpeg_cmyk": _save(source.convert("RGB").convert("CMYK"), tmp_path / "g.jpg", "JPEG", quality=95),
        "jpeg_exif": _save(rotated, tmp_path / "h.jpg", "JPEG", quality=95, exif=exif),
    }
    for name, path in variants.items():
        crop = prepare(path, cfg)[0].pixels.float()
        tolerance = 3.0 if name.startswith("jpeg") else 0.5  # mean grey levels; JPEG is lossy
        assert (crop - reference).abs().mean() <= tolerance, name


def test_symlinks_leaving_the_raw_root_are_quarantined(synth_raw: Path, tmp_path: Path):
    raw, outside = tmp_path / "raw", tmp_path / "elsewhere"
    raw.mkdir(), outside.mkdir()
    names = pd.read_csv(synth_raw / "labels.csv")["path"].head(3).tolist()
    shutil.copy(synth_raw / names[0], raw / names[0])
    shutil.copy(synth_raw / names[1], outside / "secret.png")
    (raw / "escape.png").symlink_to(outside / "secret.png")
    (raw / "alias.png").symlink_to(raw / names[0])  # inside the root: allowed (and a duplicate)
    result = ingest(raw, tmp_path / "work", None, IngestConfig(image_size=64))
    reasons = pd.read_csv(WorkDirs(tmp_path / "work").quarantine).set_index("path")["reason"].to_dict()
    assert reasons["escape.png"].startswith("symlink leaves the raw root")
    assert "duplicate of" in reasons.get("alias.png", "") + reasons.get(names[0], "")
    assert result.n_new == 1


def test_labels_file_problems_are_reported_and_the_run_finishes(synth_raw: Path, tmp_path: Path):
    raw = tmp_path / "raw"
    raw.mkdir()
    labels = pd.read_csv(synth_raw / "labels.csv").head(12)
    for name in labels["path"]:
        shutil.copy(synth_raw / name, raw / name)
    labels["inspector"] = "jo"  # unknown column
    extra = pd.concat([pd.DataFrame({"path": ["../outside.png", "missing.png"], "label": ["ok", "crack"],
                                     "inspector": "jo"}), labels.head(1)])  # the last row repeats row 0
    labels.loc[1, "label"] = "corrosion"  # not a known class
    table = pd.concat([labels, extra], ignore_index=True)
    table.to_csv(tmp_path / "labels.csv", index=False)
    before = tree_digest(raw)
    result = ingest(raw, tmp_path / "work", tmp_path / "labels.csv", IngestConfig(image_size=64))
    notes = "\n".join(result.notes)
    assert "unknown column(s) ['inspector'] ignored" in notes
    assert "1 repeated row(s) dropped" in notes
    assert "leave the raw root" in notes and "../outside.png" in notes
    assert "not found under" in notes and "missing.png" in notes
    assert "kept as their own defect class: {'corrosion': 1}" in notes
    manifest = pd.read_csv(result.manifest_path, keep_default_na=False)
    assert len(manifest) == 12 and (manifest["label"] == "corrosion").sum() == 1
    assert tree_digest(raw) == before
