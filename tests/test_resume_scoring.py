"""Exactly-once scoring: a scoring run killed mid-way (a real SIGKILL) and re-run reports every
image once, with the scores an uninterrupted run gives; a re-run with nothing new adds nothing."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import nullcontext
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from pipeline.stages import score_stage
from pipeline.synth import generate

SLOW_SCORER = """
import json, sys, time
from datetime import date
from pathlib import Path
import pipeline.batch_scoring as batch_scoring
import pipeline.stages.score as stages
from pipeline.config import PanelConfig

real = batch_scoring.score_crops
def slow(*args, **kwargs):  # a big model on a slow box: each batch takes a while
    time.sleep(0.15)
    return real(*args, **kwargs)
batch_scoring.score_crops = slow
inbox, work, cfg = sys.argv[1], sys.argv[2], PanelConfig.from_dict(json.loads(sys.argv[3]))
stages.score_stage(Path(inbox), Path(work), cfg, day=date(2026, 3, 1))
"""


def _ledger_count(path: Path) -> int:
    if not path.exists():
        return 0
    with sqlite3.connect(path) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM scored").fetchone()[0]
        except sqlite3.OperationalError:  # table not created yet
            return 0


@pytest.mark.slow  # end to end: make test runs it, the quick loop leaves it out
def test_killed_run_resumes_and_reports_each_image_once_with_identical_scores(champion, tmp_path: Path):
    work, cfg = champion
    inbox = tmp_path / "inbox"
    generate(inbox, n=30, seed=21)
    ledger = work / "ledger.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SCORER, str(inbox), str(work), json.dumps(cfg.to_dict())],
                            env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _ledger_count(ledger) < 15 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = _ledger_count(ledger)
    assert 15 <= at_kill < 30, (at_kill, proc.stderr.read().decode()[-2000:])
    day_dir = work / "reports" / "2026-03-01"
    assert not list(day_dir.glob("*.csv")) or len(pd.read_csv(day_dir / "scores.csv")) < 30

    resumed = score_stage(inbox, work, cfg, day=date(2026, 3, 1))
    assert (resumed.n_skipped, resumed.n_scored, resumed.n_report) == (at_kill, 30 - at_kill, 30)
    report = pd.read_csv(day_dir / "scores.csv", keep_default_na=False)
    assert len(report) == 30 and report["image_path"].is_unique

    clean_run = score_stage(inbox, tmp_path / "other-work", cfg, day=date(2026, 3, 1), out=tmp_path / "clean")
    reference = pd.read_csv(clean_run.report_dir / "scores.csv", keep_default_na=False)
    merged = report.merge(reference, on="image_path", suffixes=("", "_ref"))
    assert len(merged) == 30 and (merged["score"] == merged["score_ref"]).all()
    assert (merged["flagged"] == merged["flagged_ref"]).all() and (merged["region"] == merged["region_ref"]).all()

    again = score_stage(inbox, work, cfg, day=date(2026, 3, 1))
    assert (again.n_scored, again.n_skipped, again.n_report) == (0, 30, 30)
    assert pd.read_csv(day_dir / "scores.csv", keep_default_na=False).equals(report)


def test_decode_workers_give_the_same_report(champion, tmp_path: Path):
    """score.decode_workers (processes that decode while the model scores) changes speed only."""
    work, cfg = champion
    inbox = tmp_path / "inbox"
    generate(inbox, n=20, seed=3)
    (inbox / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    plain = score_stage(inbox, tmp_path / "w1", cfg, day=date(2026, 3, 3), out=tmp_path / "r1")
    workers = score_stage(inbox, tmp_path / "w2", cfg.replace("score", decode_workers=2), day=date(2026, 3, 3),
                          out=tmp_path / "r2")
    assert (workers.n_scored, workers.n_quarantined) == (plain.n_scored, plain.n_quarantined) == (20, 1)
    ours, theirs = (pd.read_csv(d / "scores.csv").drop(columns="scored_at") for d in (plain.report_dir, workers.report_dir))
    pd.testing.assert_frame_equal(ours, theirs)


def test_scoring_decodes_the_next_chunk_while_the_last_one_scores_with_at_most_one_waiting(champion, tmp_path, monkeypatch):
    """The two-stage pipeline: decoding runs ahead of the model by one chunk, never more (a day of
    any size streams in bounded memory); progress reaches the total; the caller's torch thread
    count is left as it was."""
    import torch

    import pipeline.batch_scoring as batch_scoring
    from pipeline.ingest import prepare_many
    from pipeline.ledger import Ledger

    work, cfg = champion  # one image per chunk (score.batch_images 1)
    inbox = tmp_path / "inbox"
    generate(inbox, n=12, seed=5)
    prepared, committed, ahead, progress = [0], [0], [], []
    real_prepare, real_score, real_add = prepare_many, batch_scoring.score_crops, Ledger.add

    def counting_prepare(*args, **kwargs):
        out = real_prepare(*args, **kwargs)
        prepared[0] += 1
        ahead.append(prepared[0] - committed[0])  # chunks decoded but not yet in the ledger
        return out

    def slow_score(*args, **kwargs):  # a slow model: decoding has time to run ahead if it can
        time.sleep(0.05)
        return real_score(*args, **kwargs)

    def counting_add(self, *args, **kwargs):
        real_add(self, *args, **kwargs)
        committed[0] += 1

    monkeypatch.setattr(batch_scoring, "decoding", lambda workers: nullcontext(counting_prepare))
    monkeypatch.setattr(batch_scoring, "score_crops", slow_score)
    monkeypatch.setattr(Ledger, "add", counting_add)
    threads = torch.get_num_threads()
    outcome = score_stage(inbox, work, cfg, day=date(2026, 3, 4), progress=lambda done, total: progress.append(done))
    assert outcome.n_scored == 12 and committed[0] == 12
    assert max(ahead) == 2  # the next chunk was decoded while the previous one scored ...
    assert progress[-1] == 12 and progress == sorted(progress)  # ... and never two ahead of the ledger
    assert torch.get_num_threads() == threads

