"""Does the report's `region` point at the defect? IoU of the strongest-anomaly box with the true
defect box of synthetic frames (panels.csv from `panelscan synth`), per defect class, for the
champion of a workdir's registered model, on its labelled val + test defects.

    .venv/bin/python benchmarks/region_iou.py --workdir data --raw data/raw
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import tracking
from pipeline.config import PanelConfig
from pipeline.crop import box_iou
from pipeline.regions import strongest_region
from pipeline.scoring import score_crops
from pipeline.workspace import WorkDirs, load_crops, load_split


def _box(text: str) -> tuple[int, ...]:
    return tuple(map(int, text.split(",")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("data"))
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument("--model-name", default=PanelConfig().tracking.model_name)
    args = parser.parse_args()
    tracking.configure(PanelConfig().tracking)
    version = tracking.resolve_version(args.model_name, "champion")
    cfg, model = tracking.load_config(args.model_name, version), tracking.load_model(args.model_name, version)
    dirs = WorkDirs(args.workdir)
    rows = load_split(dirs.manifest, ["val", "test"])
    rows = rows[rows["label"] != "ok"].reset_index(drop=True)
    truth = pd.read_csv(args.raw / "panels.csv", keep_default_na=False).set_index("path")["defect_box"]
    heatmaps = score_crops(model, load_crops(rows, dirs.crops), cfg.score, cfg.model).heatmaps
    ious: dict[str, list[float]] = {}
    for row, heat in zip(rows.itertuples(), heatmaps):
        region = strongest_region(heat, _box(row.bbox), cfg.score.region_size_frac)
        ious.setdefault(row.label, []).append(box_iou(region, _box(truth[row.source_path])))
    print(f"{args.model_name} v{version} ({cfg.model.model_type})")
    print("| defect | n | mean IoU | median IoU | overlapping |")
    print("|---|---|---|---|---|")
    for label, values in sorted(ious.items()):
        v = np.array(values)
        print(f"| {label} | {len(v)} | {v.mean():.3f} | {np.median(v):.3f} | {np.mean(v > 0):.0%} |")


if __name__ == "__main__":
    main()
