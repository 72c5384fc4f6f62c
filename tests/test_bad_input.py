"""Bad input never stops a run, never loses a label and never reaches a person as a traceback:
awkward files, spreadsheet-made labels, conflicting rows, duplicates, fuzzed bytes, two
processes on one workdir, a full disk, and file names a spreadsheet would run as formulas."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.config import IngestConfig
from pipeline.errors import UserError, is_user_error, one_line
from pipeline.images import decode_file
from pipeline.ingest import ingest
from pipeline.labels import LabelsError, load_labels
from pipeline.workspace import WorkDirs, why_no_clean_crops
from tests.awkward import KINDS, write_awkward_raw
from tests.awkward import frame as awkward_frame
from tests.conftest import tree_digest

REPO = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`panelscan ...` as a user runs it: its own process, console output captured."""
    env = os.environ | {"PYTHONPATH": str(REPO)}
    env.pop("PREFECT_SERVER_ANALYTICS_ENABLED", None)
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _tables(work: Path) -> tuple[pd.Series, pd.Series]:
    """(quarantine reason by path, manifest label by source path)."""
    dirs = WorkDirs(work)
    quarantine = pd.read_csv(dirs.quarantine, keep_default_na=False).set_index("path")["reason"]
    manifest = pd.read_csv(dirs.manifest, keep_default_na=False).drop_duplicates("source_path")
    return quarantine, manifest.set_index("source_path")["label"]


@pytest.mark.slow  # end to end: make test runs it, the quick loop leaves it out
def test_awkward_folder_ingests_from_the_command_line_with_every_file_accounted_for(tmp_path: Path):
    raw = tmp_path / "raw"
    kinds = write_awkward_raw(raw, tmp_path / "outside.png")
    before = tree_digest(raw)
    run = _cli("ingest", "--raw", str(raw), "--labels", str(raw / "labels.csv"), "--workdir", str(tmp_path / "work"),
               "--image-size", "64", cwd=tmp_path)
    console = run.stdout + run.stderr
    assert run.returncode == 0, console
    assert "Traceback" not in console and "| ERROR" not in console
    warnings = [line for line in console.splitlines() if "| WARNING" in line]
    assert len(warnings) == 1 and "grey8.png is labelled crack and ok: treated as uncertain" in warnings[0]
    assert tree_digest(raw) == before
    quarantine, labels = _tables(tmp_path / "work")
    assert set(quarantine.index) | set(labels.index) == set(kinds)
    for name, kind in kinds.items():
        if kind.reason is None:
            assert name in labels.index and name not in quarantine.index, name
        else:
            assert quarantine[name].startswith(kind.reason) and name not in labels.index, (name, quarantine.get(name))
    expected = {k.name: k.label for k in KINDS if k.reason is None} | {"grey8.png": "uncertain"}
    assert labels.to_dict() == expected  # "Ok" / "Loose Connector" from the spreadsheet read as ok / loose_connector


def test_accepted_kinds_decode_to_the_camera_pixels():
    """Every accepted kind gives the frame it was made from (within what its format keeps)."""
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        for i, kind in enumerate(KINDS):
            if kind.reason is not None or "labelled" in kind.name:
                continue
            path = Path(folder) / "file"
            path.write_bytes(kind.make(awkward_frame(i)))
            pixels = decode_file(path).pixels[0].numpy().astype(int)
            error = np.abs(pixels - awkward_frame(i)).mean()
            if kind.name == "bilevel.tif":
                assert set(np.unique(pixels)) <= {0, 255}
            elif kind.name.startswith("palette"):
                assert error < 20, kind.name  # the web palette's 6 grey levels
            else:
                assert error <= (2 if kind.name.endswith(".jpg") else 1), (kind.name, error)


@pytest.mark.slow  # end to end: make test runs it, the quick loop leaves it out
def test_user_errors_reach_the_console_as_one_line_without_traceback(tmp_path: Path):
    """A mistake found inside a flow (Prefect running): one line, no traceback, no retries."""
    (tmp_path / "raw").mkdir()
    (tmp_path / "labels.csv").write_text("file,class\na.png,ok\n")
    run = _cli("ingest", "--raw", str(tmp_path / "raw"), "--labels", str(tmp_path / "labels.csv"),
               "--workdir", str(tmp_path / "work"), cwd=tmp_path)
    console = run.stdout + run.stderr
    assert run.returncode == 2
    assert "Traceback" not in console and "| ERROR" not in console and "Retries" not in console
    errors = [line for line in console.splitlines() if "error" in line.lower()]
    assert errors == [f"panelscan ingest: error: {tmp_path / 'labels.csv'}: labels file lacks column(s) "
                      "['label', 'path'] (it has ['file', 'class']); expected a header path,label[,panel_id]"], errors


@pytest.mark.parametrize("argv,message", [
    (["ingest", "--raw", "{tmp}/gone"], "{tmp}/gone: raw folder does not exist"),
    (["pipeline", "--raw", "{tmp}", "--labels", "{tmp}/labels.csv"], "{tmp}/labels.csv: labels file does not exist"),
    (["nightly", "--inbox", "{tmp}/inbox"], "{tmp}/inbox: inbox folder does not exist"),
    (["review", "import", "{tmp}/review-2026-01-01.csv"], "{tmp}/review-2026-01-01.csv: review file does not exist")])
def test_a_path_that_does_not_exist_is_an_error_before_any_flow_runs(tmp_path: Path, monkeypatch, capsys,
                                                                      argv: list[str], message: str):
    """No wait for Prefect's temporary server to learn of a typo: no flow is started at all."""
    from flows import cli, prefect_flows

    def no_flow(*args, **kwargs):
        raise AssertionError("a flow ran")
    for name in ("ingest_flow", "pipeline_flow", "nightly_flow", "review_flow"):
        monkeypatch.setattr(prefect_flows, name, no_flow)
    assert cli.main([a.format(tmp=tmp_path) for a in argv]) == 2
    assert capsys.readouterr().err.strip() == f"panelscan {argv[0]}: error: {message.format(tmp=tmp_path)}"


def test_a_conflicting_or_broken_row_is_one_warning_and_the_run_goes_on(tmp_path: Path):
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label,panel_id\na.png,ok,1\na.png,crack,1\n,ok,\nb.png, Crack ,2,extra\nc.png,OK,3\n")
    problems: list[str] = []
    table = load_labels(labels, problems).set_index("path")
    assert table["label"].to_dict() == {"a.png": "uncertain", "c.png": "ok"}
    assert any("a.png is labelled crack and ok: treated as uncertain" in p for p in problems)
    assert any("1 row(s) without a path skipped" in p for p in problems)
    assert any("more cells than the header skipped" in p and "b.png" in p for p in problems)


@pytest.mark.parametrize("encoding,separator,newline", [
    ("utf-8-sig", ";", "\r\n"), ("utf-16", "\t", "\r\n"), ("cp1252", ";", "\n"), ("utf-8", ",", "\r\n")])
def test_labels_saved_by_a_spreadsheet_are_read(tmp_path: Path, encoding: str, separator: str, newline: str):
    rows = [["Path", "Label", "panel_id"], ["pänel 1.png", "OK", "p1"], ["sub\\b.png", "Loose connector", "p2"]]
    path = tmp_path / "labels.csv"
    path.write_bytes((newline.join(separator.join(row) for row in rows) + newline).encode(encoding))
    table = load_labels(path)
    assert table[["path", "label", "panel_id"]].values.tolist() == [["pänel 1.png", "ok", "p1"],
                                                                     ["sub/b.png", "loose_connector", "p2"]]


def test_a_labels_file_that_cannot_be_read_is_one_clear_line(tmp_path: Path):
    path = tmp_path / "labels.csv"
    path.write_bytes("path,label\na.png,ok\n".encode("utf-16-le"))  # UTF-16 without its byte-order mark
    with pytest.raises(LabelsError, match=r"labels.csv: not a text CSV.*save it as \"CSV UTF-8\""):
        load_labels(path)
    path.write_text("file,class\na.png,ok\n")
    with pytest.raises(LabelsError, match=r"labels.csv: labels file lacks column\(s\) \['label', 'path'\]"):
        load_labels(path)


def test_identical_files_keep_the_labelled_one_whatever_the_order(synth_raw: Path, tmp_path: Path):
    raw = tmp_path / "raw"
    raw.mkdir()
    frames = sorted(synth_raw.glob("frame_*.png"))[:6]
    for f in frames:
        shutil.copy(f, raw / f.name)
    shutil.copy(frames[0], raw / "a_unlabelled_copy.png")  # sorts first, no label
    pd.DataFrame({"path": [f.name for f in frames], "label": "ok"}).to_csv(tmp_path / "labels.csv", index=False)
    cfg = IngestConfig(image_size=32)
    ingest(raw, tmp_path / "w", tmp_path / "labels.csv", cfg)
    quarantine, labels = _tables(tmp_path / "w")
    assert labels[frames[0].name] == "ok" and "a_unlabelled_copy.png" not in labels.index
    assert quarantine["a_unlabelled_copy.png"] == f"duplicate of {frames[0].name} (identical bytes)"
    ingest(raw, tmp_path / "w", tmp_path / "labels.csv", cfg)  # a re-ingest makes the same choice
    assert _tables(tmp_path / "w")[1].to_dict() == labels.to_dict()
    # the unlabelled copy came first, its labelled twin later: the labelled one replaces it
    late = tmp_path / "late"
    late.mkdir()
    shutil.copy(frames[1], late / "z_unlabelled.png")
    ingest(late, tmp_path / "w2", None, cfg)
    shutil.copy(frames[1], late / "b_labelled.png")
    pd.DataFrame({"path": ["b_labelled.png"], "label": ["crack"]}).to_csv(tmp_path / "late.csv", index=False)
    ingest(late, tmp_path / "w2", tmp_path / "late.csv", cfg)
    quarantine, labels = _tables(tmp_path / "w2")
    assert labels.to_dict() == {"b_labelled.png": "crack"}
    assert quarantine["z_unlabelled.png"].startswith("duplicate of b_labelled.png")


def test_no_clean_training_crops_says_why_and_what_to_change(synth_raw: Path, tmp_path: Path):
    """Eight views per item in one panel_id, nearly every item with one cracked view: the split
    sends every panel with a defect to val/test, so train is empty."""
    raw = tmp_path / "raw"
    raw.mkdir()
    rows = []
    for i, f in enumerate(sorted(synth_raw.glob("frame_*.png"))[:40]):
        shutil.copy(f, raw / f.name)
        rows.append(dict(path=f.name, label="crack" if i % 8 == 0 else "ok", panel_id=f"item-{i // 8}"))
    pd.DataFrame(rows).to_csv(raw / "labels.csv", index=False)
    ingest(raw, tmp_path / "w", raw / "labels.csv", IngestConfig(image_size=32))
    message = why_no_clean_crops(WorkDirs(tmp_path / "w").manifest, "train")
    assert "no clean (ok) crops in train (clean images per split: train 0, val " in message
    assert "35 of 35 clean images share a panel_id with a defect image" in message
    assert "give each view its own panel_id" in message
    from pipeline.stages import train_stage
    from tests.conftest import small_config
    with pytest.raises(UserError, match="share a panel_id with a defect image"):
        train_stage(tmp_path / "w", small_config().replace("ingest", image_size=32), progress=False)


def test_environment_errors_are_one_line_and_not_retried():
    full = OSError(errno.ENOSPC, "No space left on device", "reports/2026-01-02/flagged.csv")
    assert is_user_error(full) and one_line(full) == "reports/2026-01-02/flagged.csv: No space left on device"
    assert is_user_error(UserError("x")) and not is_user_error(RuntimeError("worker lost"))


@pytest.mark.slow
def test_ten_thousand_fuzzed_files_never_crash_the_run(tmp_path: Path):
    """Byte flips, cuts, splices and junk in PNG, JPEG, TIFF, GIF, BMP and WebP files (this found
    torchvision's PNG decoder killing the process): each file is accepted or quarantined, once."""
    from tests.fuzz import write_mutants

    paths = write_mutants(tmp_path / "raw", 10_000, seed=1)
    result = ingest(tmp_path / "raw", tmp_path / "work", None, IngestConfig(image_size=32))
    quarantine, accepted = _tables(tmp_path / "work")
    assert set(quarantine.index) | set(accepted.index) == {p.name for p in paths}
    assert not set(quarantine.index) & set(accepted.index)
    assert result.n_quarantined == len(quarantine) and len(accepted) > 1000 and len(quarantine) > 1000


def test_nothing_to_calibrate_on_says_which_split_is_empty(synth_raw: Path, tmp_path: Path, monkeypatch):
    """Only clean images labelled: train works, calibration names the empty split instead of a torch error."""
    from pipeline.stages import calibrate_stage, train_stage
    from tests.conftest import small_config

    raw = tmp_path / "raw"
    raw.mkdir()
    labels = pd.read_csv(synth_raw / "labels.csv", dtype=str, keep_default_na=False)
    clean = labels[labels["label"] == "ok"].head(12)
    for name in clean["path"]:
        shutil.copy(synth_raw / name, raw / name)
    clean.to_csv(raw / "labels.csv", index=False)
    cfg = small_config(epochs=1).replace("ingest", image_size=32, train_frac=0.9)
    ingest(raw, tmp_path / "w", raw / "labels.csv", cfg.ingest)
    manifest = pd.read_csv(WorkDirs(tmp_path / "w").manifest, dtype=str, keep_default_na=False)
    manifest["split"] = ["train"] * 8 + ["val"] * (len(manifest) - 8)  # clean val to train with, no test at all
    manifest.to_csv(WorkDirs(tmp_path / "w").manifest, index=False)
    train_stage(tmp_path / "w", cfg, progress=False)
    with pytest.raises(UserError, match=r"no labelled test crops to calibrate on \(labelled images per split: train"):
        calibrate_stage(tmp_path / "w", cfg)
