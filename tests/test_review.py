"""Inspectors close the loop: a gallery review export becomes labels the next calibration uses, and
the share of confirmed flags is logged per day and model version. The export is written here as
the gallery's script writes it (tests/test_gallery_review.py drives that script in a browser)."""

from __future__ import annotations

import csv
import json
from datetime import date
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from pipeline.errors import UserError
from pipeline.stages import calibrate_stage, review_stage, score_stage
from pipeline.synth import generate
from pipeline.workspace import WorkDirs, read_table

DAY = "2026-04-03"


def _scored_day(champion, tmp_path: Path) -> tuple[Path, object, pd.DataFrame]:
    work, cfg = champion
    generate(tmp_path / "inbox" / DAY, n=24, seed=41)
    outcome = score_stage(tmp_path / "inbox" / DAY, work, cfg.replace("score", batch_images=64), day=date(2026, 4, 3))
    report = pd.read_csv(outcome.report_dir / "scores.csv", dtype=str, keep_default_na=False)
    return work, cfg, report


def _export(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    """review-<date>.csv as the gallery writes it: every cell quoted, formula starts guarded."""
    def cell(text: str) -> str:
        return "'" + text if text.startswith(("=", "+", "-", "@", "\t", "\r")) else text
    with open(path, "w", newline="") as out:
        writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
        writer.writerow(["path", "label", "reviewed_at", "note"])
        writer.writerows([cell(p), label, "2026-04-04T08:00:00Z", cell(note)] for p, label, note in rows)
    return path


def _manifest_labels(work: Path) -> dict[str, tuple[str, str]]:
    manifest = read_table(WorkDirs(work).manifest, ["source_path", "label", "split"])
    return {r.source_path: (r.label, r.split) for r in manifest.itertuples()}


@pytest.mark.slow  # end to end: make test runs it, the quick loop leaves it out
def test_three_decisions_become_labels_calibration_uses_and_a_precision_metric(champion, tmp_path: Path, capsys):
    work, cfg, report = _scored_day(champion, tmp_path)
    flagged = report.loc[report["flagged"] == "True", "image_path"].tolist()
    assert len(flagged) >= 3
    review = _export(tmp_path / f"review-{DAY}.csv", [(flagged[0], "crack", "clear crack"),
                                                       (flagged[1], "false_alarm", "glare"),
                                                       (flagged[2], "unsure", "")])
    from flows.cli import main

    (tmp_path / "settings.json").write_text(json.dumps(cfg.to_dict()))  # the settings the workdir was made with
    assert main(["review", "import", str(review), "--workdir", str(work), "--config", str(tmp_path / "settings.json")]) == 0
    assert capsys.readouterr().out.strip().endswith(
        f"review of {DAY}: 3 new label(s), 0 unchanged, 0 row(s) left out; v1: 1 of 2 flags confirmed")
    labels = _manifest_labels(work)
    assert labels[f"{DAY}/{flagged[0]}"] == ("crack", "val") and labels[f"{DAY}/{flagged[1]}"] == ("ok", "val")
    assert labels[f"{DAY}/{flagged[2]}"] == ("uncertain", "unlabelled")  # scored, never calibrated on

    before_test = read_table(WorkDirs(work).manifest, ["source_path", "split"]).query("split == 'test'")
    outcome = calibrate_stage(work, cfg)
    assert outcome.calibration.val["n_reviewed_images"] == 2
    assert len(before_test) == len(read_table(WorkDirs(work).manifest, ["split"]).query("split == 'test'"))

    runs = mlflow.search_runs(experiment_names=["panel-score"], filter_string=f"params.report_date = '{DAY}'")
    review_runs = runs[runs["tags.mlflow.runName"] == f"review-{DAY}"]
    assert len(review_runs) == 1 and review_runs["metrics.review_precision"].item() == 0.5
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(review_runs["run_id"].item(), "review")}
    assert artifacts == {"review/precision_in_use.png", "review/log.csv"}

    again = review_stage(review, work, cfg)  # the same file twice: nothing new, nothing logged twice
    assert (again.added, again.unchanged, again.precision) == (0, 3, {})
    assert len(mlflow.search_runs(experiment_names=["panel-score"], filter_string="attributes.run_name = 'review-2026-04-03'")) == 1


@pytest.mark.slow  # end to end: make test runs it, the quick loop leaves it out
def test_a_hostile_or_muddled_review_file_changes_nothing_it_should_not(champion, tmp_path: Path):
    work, cfg, report = _scored_day(champion, tmp_path)
    first, second, third = report["image_path"].tolist()[:3]
    review = _export(tmp_path / f"review-{DAY}.csv", [(first, "crack", "")])
    with pytest.raises(UserError, match="other preprocessing"):  # not the settings the workdir was made with
        review_stage(review, work, cfg.replace("ingest", image_size=32))
    assert review_stage(review, work, cfg).unchanged == 1  # the re-run with the right settings finishes it
    before = _manifest_labels(work)
    assert before[f"{DAY}/{first}"] == ("crack", "val")
    (tmp_path / "later").mkdir()
    muddled = _export(tmp_path / "later" / f"review-{DAY}.csv", [
        (first, "false_alarm", "changed my mind"),  # conflicts with the earlier import
        ("=cmd|' /C calc'!A0.png", "crack", ""),  # not in the report (and a formula)
        (second, "crack", ""), (second, "crack", ""),  # repeated: counted once
        (third, "crack", ""), (third, "false_alarm", ""),  # conflicting in the file: skipped
        ("<img src=x onerror=alert(1)>.png", "ok", "<script>alert(1)</script>"),  # unknown decision
    ])
    result = review_stage(muddled, work, cfg)
    assert result.added == 1 and len(result.problems) == 5
    assert any('"=cmd|\' /C calc\'!A0.png" is not in the report' in p for p in result.problems), result.problems
    assert any("kept 'crack'" in p for p in result.problems) and any("conflicting decisions" in p for p in result.problems)
    assert any("repeated row" in p for p in result.problems) and any("unknown decision 'ok'" in p for p in result.problems)
    after = _manifest_labels(work)
    assert after[f"{DAY}/{first}"] == before[f"{DAY}/{first}"] == ("crack", "val")
    assert after[f"{DAY}/{second}"] == ("crack", "val") and f"{DAY}/{third}" not in after
    log = read_table(work / "reviews" / "log.csv", ["path", "outcome"])
    assert log.loc[log["path"] == first, "outcome"].tolist() == ["added", "unchanged", "conflict"]  # every decision
    with pytest.raises(UserError, match="header path,label,reviewed_at,note"):
        (tmp_path / f"review-{DAY}-bad.csv").write_text("file,decision\na.png,crack\n")
        review_stage(tmp_path / f"review-{DAY}-bad.csv", work, cfg)
