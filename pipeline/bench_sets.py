"""Which data sets a bench run measures: the synthetic panels, ELPV when its package is
installed, every shared real set (a folder with labels.csv, masks under masks/<set>/), and any
--raw/--labels folder, each with its groups and masks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.datasets.elpv import elpv_installed, write_elpv
from pipeline.errors import UserError
from pipeline.localisation import read_masks

SYNTHETIC = "synthetic"  # the one set that is not real: left out of the summary


@dataclass(frozen=True)
class BenchDataset:
    name: str
    raw: Path
    labels: Path
    groups: dict[str, str] = field(default_factory=dict)  # source path -> group (e.g. mono/poly)
    masks: dict[str, Path] = field(default_factory=dict)  # source path -> defect mask (white = defect)


def shared_datasets(root: Path) -> list[BenchDataset]:
    """Every folder under root with a labels.csv, sorted, with its masks from
    root/masks/<name>/masks.csv when there are any (../shared/datasets, see its README)."""
    if not Path(root).is_dir():
        return []
    found = []
    for folder in sorted(p for p in Path(root).iterdir() if (p / "labels.csv").is_file()):
        masks_csv = Path(root) / "masks" / folder.name / "masks.csv"
        found.append(BenchDataset(folder.name, folder, folder / "labels.csv",
                                  masks=read_masks(masks_csv) if masks_csv.is_file() else {}))
    return found


def bench_datasets(out: Path, quick: bool, raw: str | None = None, labels: str | None = None,
                   shared: Path | None = None, sets: tuple[str, ...] = ()) -> list[BenchDataset]:
    """The synthetic set (600 frames, generated under out), ELPV when the elpv-dataset package is
    installed and every shared real set under `shared` (full runs only: their training takes most
    of the time), and any --raw/--labels folder; with `sets`, only the sets of those names (a
    name this run does not have is an error that lists the ones it has)."""
    from pipeline.synth import generate

    if raw and not Path(raw).is_dir():
        raise UserError(f"{raw}: raw folder does not exist")
    shared_sets = shared_datasets(shared) if shared and not quick else []
    available = [SYNTHETIC, *(["elpv"] if not quick and elpv_installed() else []), *(d.name for d in shared_sets),
                 *([Path(raw).name] if raw else [])]
    unknown = [name for name in sets if name not in available]
    if unknown:
        raise UserError(f"--sets: no data set named {', '.join(unknown)} in this run; it has {', '.join(available)}")
    wanted = set(sets or available)
    datasets = []
    if SYNTHETIC in wanted:
        synth = Path(out) / "synth-600"
        if not (synth / "labels.csv").exists():
            generate(synth, n=600, seed=0)
        datasets.append(BenchDataset(SYNTHETIC, synth, synth / "labels.csv"))
    if "elpv" in wanted:
        elpv = Path(out) / "elpv"
        table = write_elpv(elpv)  # copies only missing files; rewrites the labels (family column)
        datasets.append(BenchDataset("elpv", elpv, elpv / "labels.csv", dict(zip(table["path"], table["type"]))))
    datasets += [d for d in shared_sets if d.name in wanted]
    if raw and Path(raw).name in wanted:
        datasets.append(BenchDataset(Path(raw).name, Path(raw), Path(labels) if labels else Path(raw) / "labels.csv"))
    return datasets
