"""The labels file contract: path,label[,panel_id][,family] with paths relative to the raw root.
The family column's name is configurable (ingest.family_column); in the table it is `family`."""

from __future__ import annotations

import codecs
import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import UserError

OK = "ok"  # a clean panel: the only label ever trained on
CRACK, LOOSE_CONNECTOR = "crack", "loose_connector"  # the defect classes the product names
UNCERTAIN = "uncertain"  # a labeller's "maybe": ingested and scored, never trained on or calibrated against
UNLABELLED = ""
KNOWN_LABELS = (OK, CRACK, LOOSE_CONNECTOR, UNCERTAIN)


class LabelsError(UserError):
    """The labels file cannot be used at all; the message names the file and the reason. A problem
    with single rows is never this: the row is dropped or made uncertain, with a warning."""


COLUMNS = ["path", "label", "panel_id", "family"]
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def _decode(data: bytes, path: Path, problems: list[str]) -> str:
    """The text of a labels file as spreadsheets save it: UTF-8 (with or without BOM), UTF-16 with
    BOM ("Unicode text"), or Windows-1252 (an older "CSV")."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return data.decode(encoding)
    if b"\x00" in data:
        raise LabelsError(f"{path}: not a text CSV (it holds NUL bytes: UTF-16 without a byte-order mark?); "
                          f"save it as \"CSV UTF-8\"")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        problems.append(f"{path}: not UTF-8; read as Windows-1252 (save as \"CSV UTF-8\" to be sure of accented names)")
        return data.decode("cp1252", errors="replace")


def _separator(header: str) -> str:
    """Comma, or the semicolon / tab a spreadsheet in another locale writes."""
    try:
        return csv.Sniffer().sniff(header, delimiters=",;\t").delimiter
    except csv.Error:
        return ","


def read_labels_table(path: Path, problems: list[str]) -> pd.DataFrame:
    """The labels file's cells as strings; rows with more cells than the header are dropped (noted)."""
    try:
        text = _decode(path.read_bytes(), path, problems)
    except OSError as exc:
        raise LabelsError(f"{path}: cannot read labels file: {exc.strerror or exc}") from exc
    header = text.lstrip("\ufeff").splitlines()[0] if text.strip() else ""
    if not header:
        raise LabelsError(f"{path}: labels file is empty; expected a header path,label[,panel_id]")
    bad_rows: list[list[str]] = []
    try:
        table = pd.read_csv(io.StringIO(text), sep=_separator(header), dtype=str, keep_default_na=False,
                            engine="python", skipinitialspace=True, on_bad_lines=lambda row: bad_rows.append(row))
    except (pd.errors.ParserError, csv.Error) as exc:
        raise LabelsError(f"{path}: not a readable CSV: {str(exc).splitlines()[0]}") from exc
    if bad_rows:
        problems.append(f"{path}: {len(bad_rows)} row(s) with more cells than the header skipped: {bad_rows[:3]}")
    table.columns = [str(c).strip().lower() for c in table.columns]
    return table.fillna("")


def _normalise(table: pd.DataFrame) -> pd.DataFrame:
    """Cells as a person meant them: no outer spaces, labels in lower case with underscores
    ("Loose connector" -> loose_connector), Windows path separators as /."""
    table = table[COLUMNS].apply(lambda col: col.astype(str).str.strip())
    table["label"] = table["label"].str.lower().str.replace(r"[\s-]+", "_", regex=True)
    table["path"] = table["path"].str.replace("\\", "/", regex=False).map(lambda p: Path(p).as_posix() if p else p)
    return table


def _settle_conflicts(table: pd.DataFrame, path: Path, problems: list[str]) -> pd.DataFrame:
    """One row per image. An image given two different labels becomes uncertain (scored, never
    trained on or calibrated against), with one warning naming it and its labels."""
    labels_of = table.groupby("path", sort=True)["label"].unique()
    conflicting = labels_of[labels_of.map(len) > 1]
    for image, labels in conflicting.items():
        problems.append(f"{path}: {image} is labelled {' and '.join(sorted(labels))}: treated as {UNCERTAIN} "
                        f"(scored, never trained on or calibrated against)")
    table = table.drop_duplicates("path").reset_index(drop=True)
    table.loc[table["path"].isin(conflicting.index), "label"] = UNCERTAIN
    return table


def load_labels(path: Path | None, problems: list[str] | None = None, family_column: str = "family") -> pd.DataFrame:
    """Labels as a frame with columns path, label, panel_id, family ('' where not given). Only a file
    that cannot be used at all raises LabelsError; every problem with single rows (unknown
    columns, repeated or conflicting rows, rows without a path) is fixed as described in problems."""
    if path is None:
        return pd.DataFrame({c: [] for c in COLUMNS}, dtype=str)
    problems = problems if problems is not None else []
    path = Path(path)
    table = read_labels_table(path, problems)
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise LabelsError(f"{path}: labels file lacks column(s) {sorted(missing)} (it has {list(table.columns)}); "
                          f"expected a header path,label[,panel_id]")
    family_column = family_column.lower()
    if family_column and family_column != "family" and family_column in table.columns:
        table = table.drop(columns=["family"], errors="ignore").rename(columns={family_column: "family"})
    elif not family_column:
        table = table.drop(columns=["family"], errors="ignore")
    extra = [c for c in table.columns if c not in COLUMNS]
    if extra:
        problems.append(f"{path}: unknown column(s) {extra} ignored; "
                        f"expected path,label[,panel_id][,{family_column or 'family'}]")
    for column in ("panel_id", "family"):
        if column not in table.columns:
            table[column] = ""
    table = _normalise(table)
    no_path = table["path"] == ""
    if no_path.any():
        problems.append(f"{path}: {int(no_path.sum())} row(s) without a path skipped")
    table = table[~no_path]
    repeats = int(table.duplicated().sum())
    if repeats:
        problems.append(f"{path}: {repeats} repeated row(s) dropped")
    return _settle_conflicts(table.drop_duplicates(), path, problems)


def validate_labels(table: pd.DataFrame, source: Path, raw: Path, inputs: set[str]) -> tuple[pd.DataFrame, list[str]]:
    """The usable rows of a loaded labels table, and one clear message per problem found:
    paths escaping the raw root (dropped), labelled files that do not exist (dropped), label
    strings outside the known set (kept as their own defect class). inputs: relative paths present."""
    problems: list[str] = []
    if table.empty:
        return table, problems
    escaping = table["path"].map(lambda p: Path(p).is_absolute() or ".." in Path(p).parts).astype(bool)
    if escaping.any():
        problems.append(f"{source}: {int(escaping.sum())} path(s) leave the raw root {raw} and were ignored: "
                        f"{table.loc[escaping, 'path'].head(5).tolist()}")
    table = table[~escaping]
    missing = ~table["path"].isin(inputs)
    if missing.any():
        problems.append(f"{source}: {int(missing.sum())} labelled file(s) not found under {raw}: "
                        f"{table.loc[missing, 'path'].head(5).tolist()}")
    table = table[~missing]
    unknown = table.loc[~table["label"].isin([*KNOWN_LABELS, UNLABELLED]), "label"].value_counts()
    if len(unknown):
        problems.append(f"{source}: label(s) outside {list(KNOWN_LABELS)} kept as their own defect class: "
                        f"{unknown.to_dict()}")
    return table.reset_index(drop=True), problems


def is_defect(label: str) -> bool:
    """Any label other than ok, uncertain and unlabelled counts as a defect class."""
    return label not in (OK, UNCERTAIN, UNLABELLED)


def is_evaluable(label: str) -> bool:
    """ok or a defect class: the only labels that ever enter a metric, a threshold, a score choice,
    the gate, the bench or the defect-type hint. Unlabelled ('' : not in labels.csv) and uncertain
    images are scored in reports and never trained on or calibrated against."""
    return label == OK or is_defect(label)


def defect_targets(labels: np.ndarray) -> np.ndarray:
    """True for defects, False for ok; any other label is a caller's bug (load_split keeps only
    evaluable rows): an unlabelled image counted as clean would skew every figure."""
    labels = [str(label) for label in labels]
    stray = sorted({label for label in labels if not is_evaluable(label)})
    if stray:
        raise ValueError(f"labels {stray} are not evaluable (only {OK!r} and defect classes enter a metric)")
    return np.array([is_defect(label) for label in labels], dtype=bool)
