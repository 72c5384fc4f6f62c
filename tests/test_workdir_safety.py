"""Two processes on one workdir, a full disk or an unwritable report mid-run, and file names a
spreadsheet would run as formulas: the manifest, ledger and report stay whole and exact."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

import pipeline.files
from pipeline.errors import is_user_error
from pipeline.report import REPORT_COLUMNS, write_report
from pipeline.stages import score_stage
from pipeline.synth import generate
from pipeline.workspace import WorkDirs

SLOW_INGEST = """
import os, sys, time
from pathlib import Path
import pipeline.ingest as ingest_module
from pipeline.config import IngestConfig
real = ingest_module.prepare
barrier = Path(sys.argv[3])
someone_waited = barrier.parent / "someone-waited"
def slow(path, cfg):
    # A big night on a slow disk: whoever holds the lock is still ingesting when the other
    # arrives. Held until the other says it waits (a deadline, not a sleep: a busy CI machine can
    # stall one process for longer than the other's whole ingest).
    deadline = time.monotonic() + 60
    while not someone_waited.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return real(path, cfg)
ingest_module.prepare = slow
def on_wait(message):
    print("waited:", message, flush=True)
    someone_waited.touch()
# Both start ingesting together: on a busy 2-core machine one import can take longer than the
# other's whole ingest.
(barrier / str(os.getpid())).touch()
deadline = time.monotonic() + 120
while len(list(barrier.iterdir())) < 2 and time.monotonic() < deadline:
    time.sleep(0.01)
ingest_module.ingest(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[1]) / "labels.csv",
                     IngestConfig(image_size=32), on_wait=on_wait)
"""

SLOW_SCORE = """
import json, sys, time
from datetime import date
from pathlib import Path
import pipeline.batch_scoring as batch_scoring
import pipeline.stages.score as stages
from pipeline.config import PanelConfig
real = batch_scoring.score_crops
def slow(*args, **kwargs):
    time.sleep(0.05)
    return real(*args, **kwargs)
batch_scoring.score_crops = slow
outcome = stages.score_stage(Path(sys.argv[1]), Path(sys.argv[2]), PanelConfig.from_dict(json.loads(sys.argv[3])),
                             day=date(2026, 3, 1))
print("scored", outcome.n_scored, flush=True)
"""


def _both(script: str, *argv_pairs: list[str]) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen([sys.executable, "-c", script, *argv], env=os.environ.copy(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for argv in argv_pairs]
    outs = [p.communicate(timeout=300) for p in procs]
    return [subprocess.CompletedProcess(p.args, p.returncode, out, err) for p, (out, err) in zip(procs, outs)]


@pytest.mark.slow  # end to end: make test runs it, the quick loop leaves it out
def test_two_ingests_of_one_workdir_at_once_lose_nothing(synth_raw: Path, tmp_path: Path):
    frames = sorted(synth_raw.glob("frame_*.png"))
    labels = pd.read_csv(synth_raw / "labels.csv", dtype=str, keep_default_na=False).set_index("path")
    for name, part in (("a", frames[:30]), ("b", frames[30:60])):
        (tmp_path / name).mkdir()
        for f in part:
            shutil.copy(f, tmp_path / name / f.name)
        labels.loc[[f.name for f in part]].reset_index().to_csv(tmp_path / name / "labels.csv", index=False)
    (tmp_path / "barrier").mkdir()
    runs = _both(SLOW_INGEST, *[[str(tmp_path / name), str(tmp_path / "work"), str(tmp_path / "barrier")]
                                for name in ("a", "b")])
    assert [r.returncode for r in runs] == [0, 0], [r.stderr[-2000:] for r in runs]
    assert sum("waited:" in r.stdout and "in use by panelscan ingest" in r.stdout for r in runs) == 1
    manifest = pd.read_csv(WorkDirs(tmp_path / "work").manifest, dtype=str, keep_default_na=False)
    assert sorted(manifest["source_path"]) == sorted(f.name for f in frames[:60])  # both nights' images, once


@pytest.mark.slow  # end to end: make test runs it, the quick loop leaves it out
def test_two_scorings_of_one_day_at_once_score_each_image_once(champion, tmp_path: Path):
    work, cfg = champion
    inbox = tmp_path / "inbox"
    generate(inbox, n=12, seed=21)
    runs = _both(SLOW_SCORE, *[[str(inbox), str(work), json.dumps(cfg.to_dict())]] * 2)
    assert [r.returncode for r in runs] == [0, 0], [r.stderr[-2000:] for r in runs]
    scored = sorted(int(r.stdout.split("scored")[-1]) for r in runs)
    assert scored == [0, 12]  # the second waited, then found all 12 in the ledger
    with sqlite3.connect(work / "ledger.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM scored").fetchone()[0] == 12
    report = pd.read_csv(work / "reports" / "2026-03-01" / "scores.csv")
    assert len(report) == 12 and report["image_path"].is_unique


def _failing_writes(monkeypatch, fail_on: str, error: int) -> None:
    """The disk fills (or the folder refuses writes) while a file whose name contains fail_on is
    being written: half the bytes land in the temporary file, then the OS error."""
    real = pipeline.files.atomic_write

    def atomic_write(path, write):
        if fail_on in Path(path).name:
            def half_then_fail(tmp: Path) -> None:
                tmp.write_bytes(b"partial")
                raise OSError(error, os.strerror(error), str(path))
            return real(path, half_then_fail)
        return real(path, write)
    monkeypatch.setattr(pipeline.files, "atomic_write", atomic_write)


@pytest.mark.parametrize("fail_on,error", [(".png", errno.ENOSPC), ("scores.csv", errno.EACCES)])
def test_a_full_disk_or_unwritable_report_mid_run_keeps_the_ledger_and_a_rerun_finishes_the_day(
        champion, tmp_path: Path, monkeypatch, fail_on: str, error: int):
    work, cfg = champion
    inbox = tmp_path / "inbox"
    generate(inbox, n=12, seed=5)
    with monkeypatch.context() as patch, pytest.raises(OSError) as failure:
        _failing_writes(patch, fail_on, error)
        score_stage(inbox, work, cfg, day=date(2026, 3, 2))
    assert is_user_error(failure.value) and failure.value.errno == error
    with sqlite3.connect(work / "ledger.sqlite") as db:
        committed = db.execute("SELECT COUNT(*) FROM scored").fetchone()[0]
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert committed < 12 if fail_on == ".png" else committed == 12
    assert not list(work.rglob("*.tmp"))  # no half-written file left behind
    rerun = score_stage(inbox, work, cfg, day=date(2026, 3, 2))
    assert (rerun.n_skipped, rerun.n_scored, rerun.n_report) == (committed, 12 - committed, 12)
    report = pd.read_csv(rerun.report_dir / "scores.csv")
    assert len(report) == 12 and report["image_path"].is_unique


def test_report_cells_a_spreadsheet_would_run_are_neutralised(tmp_path: Path):
    from pipeline.gallery import write_gallery

    names = ['=HYPERLINK("http://x","y").png', "+1.png", "-2.png", "@SUM(A1).png", "plain.png", "<script>x</script>.png"]
    rows = [dict.fromkeys(REPORT_COLUMNS, "") | dict(image_path=n, score=-0.5 + i, threshold=1.0, flagged=True,
                                                    severity=1.0, heatmap_path=f"heatmaps/{i}.png")
            for i, n in enumerate(names)]
    scores, flagged = write_report(tmp_path, pd.DataFrame(rows))
    written = pd.read_csv(tmp_path / "flagged.csv", dtype=str, keep_default_na=False)
    cells = dict(zip(written["image_path"].str.lstrip("'"), written["image_path"]))
    assert cells['=HYPERLINK("http://x","y").png'].startswith("'=") and cells["@SUM(A1).png"].startswith("'@")
    assert cells["+1.png"] == "'+1.png" and cells["-2.png"] == "'-2.png" and cells["plain.png"] == "plain.png"
    assert "-0.5" in set(written["score"])  # numbers stay numbers
    assert set(scores["image_path"]) == set(names)  # the gallery and drift check get the names as they are
    html = write_gallery(tmp_path, scores, "day").read_text()
    assert "<script>x</script>" not in html and "&lt;script&gt;x&lt;/script&gt;.png" in html
