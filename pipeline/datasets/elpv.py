"""ELPV (Deitsch et al.): 2,624 solar-cell electroluminescence images, 300x300 grayscale, each
with a defect probability (0, 1/3, 2/3, 1) and a cell type (mono, poly). pip: elpv-dataset.

Mapping: probability 0 -> ok; >= 2/3 -> crack (the set's defects are mostly cracks); 1/3 ->
uncertain, which is ingested and scored but never trained on or calibrated against.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pandas as pd

from pipeline.errors import UserError
from pipeline.files import atomic_write_csv
from pipeline.labels import OK, UNCERTAIN


def elpv_installed() -> bool:
    """Whether the optional elpv-dataset package is there (`make elpv`); the full bench skips ELPV without it."""
    return importlib.util.find_spec("elpv_dataset") is not None


def package_root() -> Path:
    """The data folder of the installed elpv-dataset package."""
    try:
        import elpv_dataset
    except ImportError as exc:
        raise UserError("the ELPV data set is not installed: `.venv/bin/pip install -c constraints.txt "
                        "elpv-dataset` (or `make elpv`)") from exc
    return Path(elpv_dataset.__file__).parent / "data"


def read_elpv_labels(source: Path) -> pd.DataFrame:
    """The set's whitespace-separated labels.csv: path, probability, type."""
    path = Path(source) / "labels.csv"
    try:
        table = pd.read_csv(path, sep=r"\s+", header=None, names=["path", "probability", "type"])
    except (OSError, pd.errors.ParserError) as exc:
        raise UserError(f"{path}: not an ELPV labels file ({exc})") from exc
    if table["probability"].isna().any() or not table["type"].isin(["mono", "poly"]).all():
        raise UserError(f"{path}: expected rows 'images/cellNNNN.png <probability> mono|poly'")
    return table


def label_for(probability: float) -> str:
    if probability == 0:
        return OK
    return "crack" if probability >= 2 / 3 - 1e-6 else UNCERTAIN


def write_elpv(out: Path, cell_type: str | None = None, source: Path | None = None) -> pd.DataFrame:
    """Copy the images (optionally one cell type) under out/ and write out/labels.csv
    (path,label,panel_id,family: the cell type) and out/elpv.csv (+ probability, type).
    Re-running skips copied files."""
    source = Path(source) if source else package_root()
    table = read_elpv_labels(source)
    if cell_type is not None:
        table = table[table["type"] == cell_type]
    out = Path(out)
    for rel in table["path"]:
        target = out / rel
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / rel, target.with_name(f".{target.name}.tmp"))
            target.with_name(f".{target.name}.tmp").replace(target)
    table = table.assign(label=table["probability"].map(label_for),
                         panel_id=table["path"].map(lambda p: Path(p).stem), family=table["type"])
    atomic_write_csv(out / "labels.csv", table[["path", "label", "panel_id", "family"]])
    atomic_write_csv(out / "elpv.csv", table[["path", "label", "panel_id", "probability", "type"]])
    return table.reset_index(drop=True)
