"""The scoring ledger: which images a model version has scored for a report date, and their
report rows. Scoring commits each batch here before the next one starts, so a run that crashes
or is killed resumes where it stopped, and the report, rebuilt from the ledger, holds every
image exactly once. SQLite (stdlib): one file, transactional, safe with several writers.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

SCHEMA = """
CREATE TABLE IF NOT EXISTS scored (
    report_date TEXT NOT NULL,
    model_version TEXT NOT NULL,
    source_sha256 TEXT NOT NULL,
    image_path TEXT NOT NULL,
    row TEXT NOT NULL,          -- the report row as JSON
    PRIMARY KEY (report_date, model_version, source_sha256)
)
"""


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A connection in one transaction: committed on success, rolled back on error, closed."""
        db = sqlite3.connect(self.path, timeout=60)
        try:
            db.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            with db:
                yield db
        finally:
            db.close()

    def done(self, report_date: str, model_version: str) -> set[str]:
        """Source sha256 of every image this version already scored for this date."""
        with self._connect() as db:
            rows = db.execute("SELECT source_sha256 FROM scored WHERE report_date = ? AND model_version = ?",
                              (report_date, model_version))
            return {sha for (sha,) in rows}

    def add(self, report_date: str, model_version: str, rows: Iterable[dict], shas: Iterable[str]) -> None:
        """Record one batch in a single transaction: all of it lands, or none of it."""
        records = [(report_date, model_version, sha, row["image_path"], json.dumps(row, default=str))
                   for row, sha in zip(rows, shas)]
        with self._connect() as db:
            db.executemany("INSERT OR REPLACE INTO scored VALUES (?, ?, ?, ?, ?)", records)

    def report_rows(self, report_date: str) -> pd.DataFrame:
        """The date's rows, oldest scoring first: the report keeps the last row per image path, so a
        new champion's rerun replaces the old version's row instead of adding a second one."""
        with self._connect() as db:
            rows = [json.loads(text) for (text,) in db.execute(
                "SELECT row FROM scored WHERE report_date = ? ORDER BY rowid", (report_date,))]
        table = pd.DataFrame(rows)
        if table.empty:
            return table
        return table.sort_values("scored_at", kind="stable")
