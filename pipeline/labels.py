"""The labels file contract: path,label[,panel_id][,family] with paths relative to the raw root.
The family column's name is configurable (ingest.family_column); in the table it is `family`."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

OK = "ok"  # a clean panel: the only label ever trained on
CRACK, LOOSE_CONNECTOR = "crack", "loose_connector"  # the defect classes the product names
UNCERTAIN = "uncertain"  # a labeller's "maybe": ingested and scored, never trained on or calibrated against
UNLABELLED = ""
KNOWN_LABELS = (OK, CRACK, LOOSE_CONNECTOR, UNCERTAIN)


class LabelsError(ValueError):
    """The labels file cannot be used; the message names the file and the reason."""


def load_labels(path: Path | None, problems: list[str] | None = None, family_column: str = "family") -> pd.DataFrame:
    """Labels as a frame with columns path, label, panel_id, family ('' where not given). Unknown
    columns and exact duplicate rows are dropped and reported in problems; conflicting labels are an error."""
    columns = ["path", "label", "panel_id", "family"]
    if path is None:
        return pd.DataFrame({c: [] for c in columns}, dtype=str)
    problems = problems if problems is not None else []
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise LabelsError(f"{path}: cannot read labels file: {exc}") from exc
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise LabelsError(f"{path}: labels file lacks column(s) {sorted(missing)}; expected path,label[,panel_id]")
    if family_column and family_column != "family" and family_column in table.columns:
        table = table.drop(columns=["family"], errors="ignore").rename(columns={family_column: "family"})
    elif not family_column:
        table = table.drop(columns=["family"], errors="ignore")
    extra = [c for c in table.columns if c not in columns]
    if extra:
        problems.append(f"{path}: unknown column(s) {extra} ignored; expected path,label[,panel_id][,{family_column or 'family'}]")
    for column in ("panel_id", "family"):
        if column not in table.columns:
            table[column] = ""
    table = table[columns].apply(lambda col: col.str.strip())
    table["path"] = table["path"].map(lambda p: Path(p).as_posix())
    repeats = int(table.duplicated().sum())
    if repeats:
        problems.append(f"{path}: {repeats} duplicate row(s) dropped")
    duplicated = table[table.duplicated("path", keep=False)]
    conflicting = duplicated.groupby("path")["label"].nunique()
    if (conflicting > 1).any():
        raise LabelsError(f"{path}: conflicting labels for {sorted(conflicting[conflicting > 1].index)[:5]}")
    return table.drop_duplicates("path").reset_index(drop=True)


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
