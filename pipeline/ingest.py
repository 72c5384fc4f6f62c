"""Ingest: validate raw images, crop panels, write crops + manifest; bad inputs go to quarantine.

The raw folder is only ever read. Crops are content-addressed (crop_id = sha256 of the crop
pixels) and the manifest and quarantine tables are replaced atomically, so a crash leaves the
previous state intact and a re-run is safe.
"""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import repeat
from pathlib import Path

import pandas as pd
import torch

from pipeline.config import IngestConfig
from pipeline.crop import Box, CropError, crop_resize, panel_box, tile_boxes, tile_side
from pipeline.errors import UserError
from pipeline.files import atomic_write_csv, atomic_write_text, sha256_bytes, sha256_file
from pipeline.images import ImageRejected, decode_file, write_png
from pipeline.labels import UNLABELLED, load_labels, validate_labels
from pipeline.locks import workdir_lock
from pipeline.workspace import MANIFEST_COLUMNS, WorkDirs, read_table, with_splits

QUARANTINE_COLUMNS = ["path", "sha256", "reason", "detected_at"]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Crop:
    """One panel crop ready for the model, with where it came from."""

    source_path: Path
    source_sha256: str
    bbox: Box
    pixels: torch.Tensor  # uint8 (1, S, S)

    @property
    def crop_id(self) -> str:
        return sha256_bytes(self.pixels.numpy().tobytes() + str(tuple(self.pixels.shape)).encode())


@dataclass(frozen=True)
class Rejected:
    path: Path
    sha256: str
    reason: str


def list_inputs(raw: Path, cfg: IngestConfig) -> tuple[list[Path], list[Rejected]]:
    """Every regular file under raw, except hidden files and metadata sidecars, sorted; symlinks
    that lead outside raw are rejected (a raw folder must not pull in files from elsewhere)."""
    raw = Path(raw)
    if not raw.is_dir():
        raise UserError(f"{raw}: raw folder does not exist")
    root = raw.resolve()
    paths, rejected = [], []
    for p in sorted(raw.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(raw).parts) \
                or p.suffix.lower() in cfg.metadata_suffixes:
            continue
        if p.is_symlink() and not p.resolve().is_relative_to(root):
            rejected.append(Rejected(p, "", f"symlink leaves the raw root (-> {p.resolve()})"))
        else:
            paths.append(p)
    return paths, rejected


def prepare(path: Path, cfg: IngestConfig) -> list[Crop]:
    """Decode, validate and crop one file into its crops (one, or one per tile): the single
    preprocessing path for ingest and scoring."""
    image = decode_file(path, min_side=cfg.min_side, max_pixels=cfg.max_pixels)
    box = panel_box(image.pixels, cfg.crop, cfg.roi)
    boxes = tile_boxes(box, tile_side(box, cfg.tile, cfg.auto_tile_aspect), cfg.tile_overlap)
    return [Crop(Path(path), image.sha256, box, crop_resize(image.pixels, box, cfg.image_size)) for box in boxes]


def prepare_many(paths: Iterable[Path], cfg: IngestConfig, progress: Progress | None = None,
                 known: dict[str, str] | None = None) -> tuple[list[Crop], list[Rejected]]:
    """prepare() every path; failures become Rejected with a reason, the run goes on. Content
    already seen (in this batch, or in known: sha256 -> where) is rejected as a duplicate."""
    paths = list(paths)
    crops, rejected, seen = [], [], dict(known or {})
    for i, path in enumerate(paths):
        try:
            tiles = prepare(path, cfg)
        except (ImageRejected, CropError) as exc:
            rejected.append(Rejected(path, sha256_file(path), str(exc)))
        else:
            sha = tiles[0].source_sha256
            if sha in seen:
                rejected.append(Rejected(path, sha, f"duplicate of {seen[sha]}"))
            else:
                seen[sha] = path
                crops.extend(tiles)
        if progress is not None:
            progress(i + 1, len(paths))
    return crops, rejected


Prepare = Callable[[list[Path], IngestConfig], tuple[list[Crop], list[Rejected]]]


@contextmanager
def decoding(workers: int = 0) -> Iterator[Prepare]:
    """prepare_many, in this process (workers 0), or split over `workers` processes that live for
    the whole `with` block (a GPU box's idle cores decode while the GPU scores). Start-up costs a
    few seconds (each worker imports torch): worth it for large batches on many cores; on this
    2-core CPU it measured slower. Results keep the order of the paths."""
    if workers <= 0:
        yield prepare_many
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
        def prepare(paths: list[Path], cfg: IngestConfig) -> tuple[list[Crop], list[Rejected]]:
            size = max(1, -(-len(paths) // (4 * workers)))  # 4 chunks a worker: an uneven chunk does not stall
            parts = list(pool.map(prepare_many, [paths[i:i + size] for i in range(0, len(paths), size)], repeat(cfg)))
            return [c for crops, _ in parts for c in crops], [r for _, rejected in parts for r in rejected]
        yield prepare


def relabel(rows: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Manifest rows with the labels file's current label, family and (when given) panel_id:
    a relabelled image moves, since splits are recomputed from the labels afterwards."""
    hit = rows["source_path"].isin(labels["path"])
    if not hit.any():
        return rows
    table, rows = labels.set_index("path"), rows.copy()
    for column in ("label", "family"):
        rows.loc[hit, column] = rows.loc[hit, "source_path"].map(table[column])
    panel = rows["source_path"].map(table["panel_id"]).fillna("")
    rows.loc[hit & (panel != ""), "panel_id"] = panel[hit & (panel != "")]
    return rows


def crop_rows(crops: list[Crop], raw: Path, labels: pd.DataFrame, crops_dir: Path) -> pd.DataFrame:
    """Write crop PNGs (content-addressed) and describe them as manifest rows (split still blank)."""
    label_of = dict(zip(labels["path"], labels["label"]))
    panel_of = dict(zip(labels["path"], labels["panel_id"]))
    family_of = dict(zip(labels["path"], labels["family"]))
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rows = []
    for crop in crops:
        rel = crop.source_path.relative_to(raw).as_posix()
        crop_path = crops_dir / f"{crop.crop_id}.png"
        if not crop_path.exists():
            write_png(crop_path, crop.pixels)
        rows.append(dict(crop_id=crop.crop_id, source_path=rel, source_sha256=crop.source_sha256,
                         bbox=",".join(map(str, crop.bbox)), panel_id=panel_of.get(rel) or str(Path(rel).with_suffix("")),
                         label=label_of.get(rel, UNLABELLED), split="", width=crop.pixels.shape[2],
                         height=crop.pixels.shape[1], ingested_at=now, crop_path=crop_path.name,
                         family=family_of.get(rel, "")))
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def quarantine_rows(rejected: list[Rejected], raw: Path | None = None) -> pd.DataFrame:
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return pd.DataFrame([dict(path=str(r.path.relative_to(raw) if raw else r.path), sha256=r.sha256,
                              reason=r.reason, detected_at=now) for r in rejected], columns=QUARANTINE_COLUMNS)


def record_quarantine(dirs: WorkDirs, rows: pd.DataFrame) -> pd.DataFrame:
    """Merge new quarantine rows into quarantine.csv (one row per path + sha256), atomically."""
    merged = pd.concat([read_table(dirs.quarantine, QUARANTINE_COLUMNS), rows], ignore_index=True)
    merged = merged.drop_duplicates(["path", "sha256"], keep="last")
    atomic_write_csv(dirs.quarantine, merged)
    return merged


@dataclass(frozen=True)
class IngestResult:
    manifest_path: Path
    n_new: int
    n_skipped: int
    n_quarantined: int
    split_counts: dict[str, int]
    notes: tuple[str, ...] = ()  # problems found in the labels file, one clear message each


PREPROCESSING_FIELDS = ("crop", "roi", "image_size", "tile", "tile_overlap", "auto_tile_aspect")  # what makes a crop


def preprocessing(cfg: IngestConfig) -> dict:
    return json.loads(json.dumps({name: getattr(cfg, name) for name in PREPROCESSING_FIELDS}))  # tuples -> lists


def check_preprocessing(dirs: WorkDirs, cfg: IngestConfig) -> None:
    """One workdir holds crops made one way (recorded beside the manifest). Refuse an ingest that
    would mix in crops made another way: the old crops would silently stay as they were."""
    if not dirs.preprocessing.exists():
        return
    stored, wanted = json.loads(dirs.preprocessing.read_text()), preprocessing(cfg)
    changed = {k: (stored.get(k), v) for k, v in wanted.items() if stored.get(k) != v}
    if changed:
        detail = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise UserError(f"{dirs.root}: its crops were made with other preprocessing ({detail}); use another "
                        f"--workdir, set them back (options or --config), or delete {dirs.root / 'processed'} to rebuild")


def settle_duplicates(paths: list[Path], sha_of: dict[Path, str], labelled: set[str], raw: Path) -> list[Rejected]:
    """Files with identical bytes: keep one, the labelled copy (the first by path when none or
    both are labelled), and quarantine the others as its duplicates. Depends only on the files
    and labels given, so a re-ingest makes the same choice."""
    by_content: dict[str, list[Path]] = {}
    for path in paths:
        if sha_of[path]:  # unreadable files are decoded (and quarantined) with their own reason
            by_content.setdefault(sha_of[path], []).append(path)
    rejected = []
    for sha, copies in by_content.items():
        keep = min(copies, key=lambda p: (p.relative_to(raw).as_posix() not in labelled, p.relative_to(raw).as_posix()))
        rejected += [Rejected(p, sha, f"duplicate of {keep.relative_to(raw).as_posix()} (identical bytes)")
                     for p in copies if p != keep]
    return rejected


MASK_SUFFIXES = ("_mask", "-mask", "_gt", "_label", "_labels", "_seg")  # how public sets name a defect's mask


def looks_like_mask(path: Path, listed_stems: set[str], cfg: IngestConfig) -> bool:
    """A file named like a listed image (same stem, or the stem plus _mask / _gt / ...) whose pixels
    are (almost all: JPEG rounds edges) black or white: a defect mask shipped beside its image."""
    stem = path.stem.lower()
    bare = next((stem[:-len(suffix)] for suffix in MASK_SUFFIXES if stem.endswith(suffix)), stem)
    if stem not in listed_stems and bare not in listed_stems:
        return False
    try:
        pixels = decode_file(path, min_side=1, max_pixels=cfg.max_pixels).pixels
    except ImageRejected:
        return False
    return bool(((pixels <= 8) | (pixels >= 247)).float().mean() >= 0.99)


def unlisted_note(candidates: list[Path], listed: set[str], raw: Path, labels_path: Path,
                  cfg: IngestConfig) -> str | None:
    """One line when labels.csv leaves some images of the raw folder out: how many, the first, and
    which of them look like defect masks. They are ingested as unlabelled (scored, never used)."""
    unlisted = [p for p in candidates if p.relative_to(raw).as_posix() not in listed]
    if not unlisted:
        return None
    line = (f"{labels_path} lists {len(candidates) - len(unlisted):,} of {len(candidates):,} images under {raw}; "
            f"{len(unlisted):,} are unlisted: scored in reports, never trained on or calibrated against "
            f"(first: {unlisted[0].relative_to(raw).as_posix()})")
    stems = {Path(p).stem.lower() for p in listed}
    masks = [p for p in unlisted if looks_like_mask(p, stems, cfg)]
    if masks:
        line += (f"; {len(masks):,} of them look like defect masks (black and white, named like a listed image; "
                 f"first: {masks[0].relative_to(raw).as_posix()}): keep masks outside the raw folder")
    return line


def ingest(raw: Path, workdir: Path, labels_path: Path | None, cfg: IngestConfig,
           progress: Progress | None = None, on_wait: Callable[[str], None] | None = None) -> IngestResult:
    """Ingest every new file of raw into workdir/processed; safe to re-run (incremental), and to
    run beside another ingest or scoring of the same workdir (it waits for the workdir's lock)."""
    with workdir_lock(Path(workdir), "ingest", on_wait=on_wait):
        return _ingest(Path(raw).resolve(), WorkDirs(Path(workdir)), labels_path, cfg, progress)


def _ingest(raw: Path, dirs: WorkDirs, labels_path: Path | None, cfg: IngestConfig,
            progress: Progress | None) -> IngestResult:
    check_preprocessing(dirs, cfg)
    notes: list[str] = []
    inputs, escaped = list_inputs(raw, cfg)
    candidates = [p for p in inputs if labels_path is None or p.resolve() != Path(labels_path).resolve()]
    labels, label_notes = validate_labels(load_labels(labels_path, notes, cfg.family_column), Path(labels_path or ""), raw,
                                          {p.relative_to(raw).as_posix() for p in candidates})
    notes += label_notes
    sha_of = {p: sha256_file(p) for p in candidates}
    listed = set(labels.loc[labels["label"] != UNLABELLED, "path"])
    duplicates = settle_duplicates(candidates, sha_of, listed, raw)
    set_aside = {r.path.relative_to(raw).as_posix() for r in duplicates}
    if labels_path is not None:
        note = unlisted_note([p for p in candidates if p.relative_to(raw).as_posix() not in set_aside], listed, raw,
                             Path(labels_path), cfg)
        notes += [note] if note else []
    known = relabel(read_table(dirs.manifest, MANIFEST_COLUMNS), labels)
    known = known[~known["source_path"].isin(set_aside)]  # a copy ingested before its labelled twin arrived
    known_sources = set(zip(known["source_path"], known["source_sha256"]))
    todo = [p for p in candidates if p.relative_to(raw).as_posix() not in set_aside
            and (p.relative_to(raw).as_posix(), sha_of[p]) not in known_sources]
    fresh, rejected = prepare_many(todo, cfg, progress, dict(zip(known["source_sha256"], known["source_path"])))
    rejected = escaped + duplicates + rejected
    new_rows = crop_rows(fresh, raw, labels, dirs.crops)
    manifest = with_splits(pd.concat([known, new_rows], ignore_index=True).astype(str), cfg)
    atomic_write_csv(dirs.manifest, manifest)
    atomic_write_text(dirs.preprocessing, json.dumps(preprocessing(cfg), indent=2))
    record_quarantine(dirs, quarantine_rows(rejected, raw))
    return IngestResult(dirs.manifest, len(fresh), len(candidates) - len(todo) - len(duplicates), len(rejected),
                        manifest["split"].value_counts().to_dict(), tuple(notes))
