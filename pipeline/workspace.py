"""The work directory: where every stage reads and writes, the manifest of crops and its splits,
crop loading and the identity hashes that say which images a result was measured on.

Layout under one workdir (default `data/`):
    processed/crops/<crop_id>.png   processed/manifest.csv   processed/preprocessing.json
    quarantine/quarantine.csv       ledger.sqlite            reports/<date>/
    checkpoints/<model_type>[-<family>].pt                   calibration.json   latest_train.json
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torchvision.io import decode_png, read_file

from pipeline.config import IngestConfig
from pipeline.errors import UserError
from pipeline.labels import OK, is_defect, is_evaluable

REVIEW_PANEL = "review:"  # panel_id prefix of an inspector-reviewed image (pipeline/review.py): always val
MANIFEST_COLUMNS = ["crop_id", "source_path", "source_sha256", "bbox", "panel_id", "label", "split",
                    "width", "height", "ingested_at", "crop_path", "family"]


@dataclass(frozen=True)
class WorkDirs:
    """Every path under one work directory."""

    root: Path

    @property
    def crops(self) -> Path:
        return self.root / "processed" / "crops"

    @property
    def manifest(self) -> Path:
        return self.root / "processed" / "manifest.csv"

    @property
    def preprocessing(self) -> Path:
        return self.root / "processed" / "preprocessing.json"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine" / "quarantine.csv"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.sqlite"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def calibration(self) -> Path:
        return self.root / "calibration.json"

    @property
    def latest_train(self) -> Path:
        return self.root / "latest_train.json"

    def checkpoint(self, model_type: str, family: str = "") -> Path:
        """A training run's checkpoint; a family model's has the family in its name."""
        return self.root / "checkpoints" / (f"{model_type}-{family}.pt" if family else f"{model_type}.pt")


def with_columns(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The table plus blank columns for those it lacks (written by an older version)."""
    return table.reindex(columns=[*table.columns, *(c for c in columns if c not in table.columns)], fill_value="")


def read_table(path: Path, columns: list[str]) -> pd.DataFrame:
    """A CSV table as strings; columns it lacks (written by an older version) are blank."""
    if Path(path).exists():
        return with_columns(pd.read_csv(path, dtype=str, keep_default_na=False), columns)
    return pd.DataFrame(columns=columns, dtype=str)


UNLABELLED_SPLIT = "unlabelled"  # images that are not evaluable (is_evaluable): scored, never trained or calibrated on


def assign_split(group: str, labels: set[str], cfg: IngestConfig) -> str:
    """Deterministic split per group (panel) from its evaluable labels: adding panels never
    reshuffles existing ones.

    Groups holding a defect go to val or test only (we never train on them, and calibration
    needs them); clean groups go to train / val / test.
    """
    if not any(is_evaluable(label) for label in labels):
        return UNLABELLED_SPLIT
    if group.startswith(REVIEW_PANEL):  # calibration learns from reviews; test, which the gate compares on, stays
        return "val"
    u = int(hashlib.sha256(f"{cfg.split_seed}:{group}".encode()).hexdigest()[:12], 16) / 16**12
    if any(is_defect(label) for label in labels):
        return "val" if u < 0.5 else "test"
    if u < cfg.train_frac:
        return "train"
    return "val" if u < cfg.train_frac + (1 - cfg.train_frac) / 2 else "test"


def with_splits(manifest: pd.DataFrame, cfg: IngestConfig) -> pd.DataFrame:
    """The manifest with every row's split, decided per panel from the panel's evaluable labels.
    A row that is not evaluable is in the unlabelled split even when its panel_id is shared with
    listed images (a mask beside its image has the image's default panel_id)."""
    groups = manifest.groupby("panel_id")["label"].agg(set)
    split_of = {group: assign_split(group, labels, cfg) for group, labels in groups.items()}
    split = manifest["panel_id"].map(split_of).where(manifest["label"].map(is_evaluable), UNLABELLED_SPLIT)
    return manifest.assign(split=split)


def load_split(manifest_path: Path, splits: Iterable[str], trainable_only: bool = False) -> pd.DataFrame:
    """Evaluable manifest rows of the given splits (labels.is_evaluable: never unlabelled or uncertain
    ones, whatever split an older manifest gave them); trainable_only keeps the clean (ok) crops."""
    manifest = read_table(manifest_path, MANIFEST_COLUMNS)
    rows = manifest[manifest["split"].isin(list(splits)) & manifest["label"].map(is_evaluable).astype(bool)]
    if trainable_only:
        rows = rows[rows["label"] == OK]
    return rows.reset_index(drop=True)


def images_per_split(rows: pd.DataFrame) -> str:
    """'train 3, val 2, test 2': distinct source images per split, for messages."""
    images = rows.drop_duplicates("source_sha256")
    return ", ".join(f"{name} {int((images['split'] == name).sum())}" for name in ("train", "val", "test"))


def why_no_clean_crops(manifest_path: Path, split: str) -> str:
    """Why a split has no clean crops to train on, in the user's terms: the counts per split and
    the rule that emptied it, with what to change."""
    manifest = read_table(manifest_path, MANIFEST_COLUMNS)
    if manifest.empty:
        return f"{manifest_path}: no crops ingested yet; run `panelscan ingest --raw DIR --labels DIR/labels.csv` first"
    images = manifest.drop_duplicates("source_sha256")
    clean = images[images["label"] == OK]
    head = f"{manifest_path}: no clean ({OK}) crops in {split} (clean images per split: {images_per_split(clean)})"
    if clean.empty:
        return f"{head}; no image is labelled {OK}: label clean panels {OK} in the labels file and re-run ingest"
    panels = manifest.groupby("panel_id")["label"].agg(lambda labels: any(is_defect(x) for x in labels))
    shared = clean["panel_id"].isin(panels[panels].index)
    if shared.mean() > 0.5:
        return (f"{head}; {int(shared.sum())} of {len(clean)} clean images share a panel_id with a defect image, and "
                f"a panel holding a defect goes to val/test whole: give each view its own panel_id (or drop the "
                f"panel_id column) if views of one item may be split, or label more clean panels; then re-run ingest")
    return (f"{head}; {clean['panel_id'].nunique()} clean panels are too few for ingest.train_frac: label more clean "
            f"panels or change ingest.train_frac (in a new --workdir), then re-run ingest")


def load_crops(rows: pd.DataFrame, crops_dir: Path) -> torch.Tensor:
    """Stack the manifest rows' crop PNGs into a uint8 (N, 1, S, S) tensor."""
    images = []
    for name in rows["crop_path"]:
        path = Path(crops_dir) / name
        try:
            images.append(decode_png(read_file(str(path))))
        except RuntimeError as exc:
            raise UserError(f"{path}: cannot read crop ({exc}); re-run ingest") from exc
    return torch.stack(images)


def dataset_hash(rows: pd.DataFrame, column: str = "crop_id") -> str:
    """Identity of a set of manifest rows: sha256 over the sorted distinct values of a column.
    crop_id (default) identifies the crops; source_sha256 the source images whatever the
    preprocessing (an image cut into tiles counts once)."""
    return hashlib.sha256("\n".join(sorted(set(rows[column]))).encode()).hexdigest()[:16]


def image_labels(rows: pd.DataFrame) -> pd.Series:
    """One label per source image (rows are crops), images in first-seen order."""
    return rows.groupby("source_sha256", sort=False)["label"].first()


def is_clean(rows: pd.DataFrame) -> pd.Series:
    return rows["label"] == OK
