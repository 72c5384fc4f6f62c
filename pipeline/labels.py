"""The labels file contract: path,label[,panel_id] with paths relative to the raw root."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

KNOWN_LABELS = ("ok", "crack", "loose_connector")
DEFECT_LABELS = ("crack", "loose_connector")
UNLABELLED = ""


class LabelsError(ValueError):
    """The labels file cannot be used; the message names the file and the reason."""


def load_labels(path: Path | None) -> pd.DataFrame:
    """Labels as a frame with columns path, label, panel_id ('' where not given)."""
    if path is None:
        return pd.DataFrame({"path": [], "label": [], "panel_id": []}, dtype=str)
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise LabelsError(f"{path}: cannot read labels file: {exc}") from exc
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise LabelsError(f"{path}: labels file lacks column(s) {sorted(missing)}; expected path,label[,panel_id]")
    if "panel_id" not in table.columns:
        table["panel_id"] = ""
    table = table[["path", "label", "panel_id"]].apply(lambda col: col.str.strip())
    table["path"] = table["path"].map(lambda p: Path(p).as_posix())
    duplicated = table[table.duplicated("path", keep=False)]
    conflicting = duplicated.groupby("path")["label"].nunique()
    if (conflicting > 1).any():
        raise LabelsError(f"{path}: conflicting labels for {sorted(conflicting[conflicting > 1].index)[:5]}")
    return table.drop_duplicates("path").reset_index(drop=True)


def is_defect(label: str) -> bool:
    """Any label other than ok and unlabelled counts as a defect class."""
    return label not in ("ok", UNLABELLED)
