"""Inspectors' decisions back into the workdir: a gallery export (review-<date>.csv) becomes labels.

The reviewed originals are copied to <workdir>/reviews/<date>/ (the inbox may be cleared) and
ingested from <workdir>/reviews/ with reviews/labels.csv, through the same ingest as any raw
folder: decoded, cropped, quarantined if broken, content-addressed. Each reviewed image is a
panel of its own named review:<date>/<path>, always in the val split (workspace.assign_split):
the next calibration chooses its score and threshold with them, while the test split, and so
every comparison the gate makes, stays as it was. Decisions map to labels: a confirmed defect
to its kind, a false alarm to ok, unsure to uncertain. An image reviewed again with another
decision keeps its first label; reviews/log.csv keeps every decision ever imported.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from pipeline.config import IngestConfig
from pipeline.errors import UserError
from pipeline.files import atomic_write_csv, sha256_file
from pipeline.ingest import IngestResult, ingest
from pipeline.labels import CRACK, LOOSE_CONNECTOR, OK, UNCERTAIN
from pipeline.ledger import Ledger
from pipeline.report import FORMULA_STARTS
from pipeline.workspace import REVIEW_PANEL, WorkDirs, read_table

DECISIONS = {"crack": CRACK, "loose_connector": LOOSE_CONNECTOR, "other": "other_defect", "false_alarm": OK,
             "unsure": UNCERTAIN}
CONFIRMED = ("crack", "loose_connector", "other")
REVIEW_COLUMNS = ["path", "label", "reviewed_at", "note"]
LOG_COLUMNS = ["report_date", "path", "decision", "label", "reviewed_at", "note", "model_version", "flagged",
               "outcome", "imported_at"]
LABEL_COLUMNS = ["path", "label", "panel_id", "family"]


@dataclass(frozen=True)
class ReviewImport:
    report_date: str
    added: int  # decisions that became labels
    unchanged: int  # imported before with the same decision
    problems: tuple[str, ...]  # one line per row that changed nothing, and why
    precision: dict[str, dict[str, float]]  # this import's: model version -> reviewed flags, confirmed, precision
    daily: dict[str, dict[str, dict[str, float]]]  # every import's, per report date
    log: Path  # reviews/log.csv
    ingest: IngestResult | None


def report_date_of(path: Path) -> str:
    found = re.search(r"review-(\d{4}-\d{2}-\d{2})", Path(path).name)
    if not found:
        raise UserError(f"{path}: cannot tell the report date from the name (expected review-YYYY-MM-DD.csv); "
                        "pass --date")
    return found.group(1)


def _unneutralised(text: str) -> str:
    """A cell the export guarded with a leading apostrophe, as the image path it was."""
    return text[1:] if text.startswith("'") and text[1:].startswith(FORMULA_STARTS) else text


def read_review(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """The usable decisions of an export, one per path, and one line per row left out."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a readable review CSV ({exc})") from exc
    if list(table.columns) != REVIEW_COLUMNS:
        raise UserError(f"{path}: a review export has the header {','.join(REVIEW_COLUMNS)} (it has "
                        f"{','.join(map(str, table.columns))})")
    table["path"] = table["path"].map(_unneutralised)
    problems = [f"{path}: {row.path!r}: unknown decision {row.label!r} (one of {', '.join(DECISIONS)}); skipped"
                for row in table[~table["label"].isin(list(DECISIONS))].itertuples()]
    table = table[table["label"].isin(list(DECISIONS))]
    repeats = int(table.duplicated(["path", "label"]).sum())
    if repeats:
        problems.append(f"{path}: {repeats} repeated row(s) of the same decision counted once")
    table = table.drop_duplicates(["path", "label"], keep="last")
    torn = table["path"].duplicated(keep=False)
    problems += [f"{path}: {p!r} has conflicting decisions ({', '.join(table.loc[table['path'] == p, 'label'])}) in "
                 "this file; skipped" for p in table.loc[torn, "path"].unique()]
    return table[~torn].reset_index(drop=True), problems


def _scored_folder(dirs: WorkDirs, report_date: str) -> Path:
    record = dirs.reports / report_date / "scored_folder.txt"
    if not record.is_file():
        raise UserError(f"{dirs.root}: no scored report for {report_date} ({record} is missing)")
    return Path(record.read_text().strip())


def import_review(path: Path, workdir: Path, cfg: IngestConfig, report_date: str | None = None) -> ReviewImport:
    """Merge a review export into the workdir's labels and ingest the reviewed images (see above)."""
    path, dirs = Path(path), WorkDirs(Path(workdir))
    if not path.is_file():
        raise UserError(f"{path}: review file does not exist")
    report_date = report_date or report_date_of(path)
    folder = _scored_folder(dirs, report_date)
    decisions, problems = read_review(path)
    scored = Ledger(dirs.ledger).report_rows(report_date)
    scored = scored.drop_duplicates("image_path", keep="last").set_index("image_path") if len(scored) else scored
    reviews = dirs.root / "reviews"
    labels = read_table(reviews / "labels.csv", LABEL_COLUMNS).set_index("path")
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    log, added, unchanged = [], 0, 0
    for row in decisions.itertuples():
        if row.path not in scored.index:
            problems.append(f"{path}: {row.path!r} is not in the report of {report_date}; skipped")
            continue
        image, key, label = scored.loc[row.path], f"{report_date}/{row.path}", DECISIONS[row.label]
        source = folder / row.path
        if not source.is_file() or sha256_file(source) != image["source_sha256"]:
            problems.append(f"{path}: {source} is gone or changed since it was scored; skipped")
            continue
        earlier = labels["label"].get(key)
        outcome = "added" if earlier is None else "unchanged" if earlier == label else "conflict"
        if outcome == "conflict":
            problems.append(f"{path}: {row.path!r} was labelled {earlier!r} by an earlier review, this one says "
                            f"{label!r}: kept {earlier!r} (both in {reviews / 'log.csv'})")
        elif outcome == "added":
            (reviews / report_date / row.path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, reviews / report_date / row.path)
            labels.loc[key] = [label, f"{REVIEW_PANEL}{key}", str(image.get("family", ""))]
        added, unchanged = added + (outcome == "added"), unchanged + (outcome == "unchanged")
        log.append(dict(report_date=report_date, path=row.path, decision=row.label, label=label,
                        reviewed_at=row.reviewed_at, note=row.note, model_version=str(image["model_version"]),
                        flagged=bool(image["flagged"]), outcome=outcome, imported_at=now))
    if added:
        atomic_write_csv(reviews / "labels.csv", labels.reset_index()[LABEL_COLUMNS])
    new_log = pd.DataFrame(log, columns=LOG_COLUMNS).astype(str)
    full_log = pd.concat([read_table(reviews / "log.csv", LOG_COLUMNS), new_log], ignore_index=True)
    if log:
        atomic_write_csv(reviews / "log.csv", full_log)
    # incremental: a re-run after a failed ingest (other settings) finishes it
    result = ingest(reviews, dirs.root, reviews / "labels.csv", cfg) if added or unchanged else None
    kept = full_log[full_log["outcome"] == "added"]  # each image once, with the decision its label came from
    daily = {day: precision_in_use(rows) for day, rows in kept.groupby("report_date")}
    return ReviewImport(report_date, added, unchanged, tuple(problems),
                        precision_in_use(new_log[new_log["outcome"] == "added"]), daily, reviews / "log.csv", result)


def precision_in_use(log: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per model version: how many flagged images were reviewed as defect or false alarm (unsure
    ones say nothing), how many of those were confirmed, and their share."""
    flags = log[log["flagged"].str.lower().eq("true") & log["decision"].isin([*CONFIRMED, "false_alarm"])]
    out = {}
    for version, rows in flags.groupby("model_version"):
        confirmed = int(rows["decision"].isin(CONFIRMED).sum())
        out[str(version)] = {"reviewed_flags": len(rows), "confirmed": confirmed, "precision": confirmed / len(rows)}
    return out
