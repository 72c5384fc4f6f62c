"""Side by side on the identical test split: the calibrated panelscan model vs a PCA
reconstruction baseline (scikit-learn), overall and per group (e.g. ELPV cell type).

    .venv/bin/python benchmarks/baseline_compare.py --workdir data/elpv-work --groups data/elpv/elpv.csv:type

Both see the same crops (the manifest's train ok crops to fit, its test crops to evaluate).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA

from pipeline import tracking
from pipeline.calibrate import evaluate
from pipeline.config import PanelConfig
from pipeline.ingest import WorkDirs, load_split
from pipeline.scoring import per_image_max, score_crops
from pipeline.train import load_crops


def pca_scores(train: np.ndarray, test: np.ndarray, components: int) -> np.ndarray:
    """Squared reconstruction error per image after projecting onto the clean principal components."""
    pca = PCA(n_components=min(components, len(train) - 1), random_state=0).fit(train)
    return ((test - pca.inverse_transform(pca.transform(test))) ** 2).mean(axis=1)


def compare(workdir: Path, groups: pd.Series | None, components: int) -> pd.DataFrame:
    dirs, cfg = WorkDirs(workdir), PanelConfig()
    tracking.configure(cfg.tracking)
    calibration = json.loads((workdir / "calibration.json").read_text())
    name, version = calibration["model_name"], calibration["model_version"]
    model_cfg = tracking.load_config(name, version)
    train, test = load_split(dirs.manifest, ["train"], trainable_only=True), load_split(dirs.manifest, ["test"])
    test_x = load_crops(test, dirs.crops)
    flat = lambda x: x.flatten(1).float().numpy() / 255.0  # noqa: E731
    scores = {f"panelscan v{version} ({model_cfg.model.model_type}, {calibration['score_name']})":
              score_crops(tracking.load_model(name, version), test_x, model_cfg.score, model_cfg.model,
                          keep_heatmaps=False).scores[calibration["score_name"]],
              f"PCA reconstruction ({components} components)":
              pca_scores(flat(load_crops(train, dirs.crops)), flat(test_x), components)}
    # Per image (max over its tiles; the identity without tiling), like calibration.
    images = test.groupby("source_sha256", sort=False).first()
    scores = {method: per_image_max({"s": values}, test["source_sha256"])[1]["s"] for method, values in scores.items()}
    labels = images["label"].to_numpy()
    group_of = images["source_path"].map(groups) if groups is not None else pd.Series(["all"] * len(images))
    rows = []
    for method, values in scores.items():
        row = {"method": method, **{k: evaluate(values, labels).get(k, np.nan) for k in ("roc_auc", "pr_auc")}}
        for group in sorted(group_of.dropna().unique()) if groups is not None else []:
            pick = (group_of == group).to_numpy()
            row[f"roc_auc_{group}"] = evaluate(values[pick], labels[pick]).get("roc_auc", np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("data"))
    parser.add_argument("--groups", help="CSV:column mapping source path -> group (e.g. data/elpv/elpv.csv:type)")
    parser.add_argument("--components", type=int, default=32)
    args = parser.parse_args()
    groups = None
    if args.groups:
        path, column = args.groups.rsplit(":", 1)
        table = pd.read_csv(path)
        groups = pd.Series(table[column].to_numpy(), index=table["path"])
    result = compare(args.workdir, groups, args.components)
    print(result.to_markdown(index=False, floatfmt=".3f") if _has_tabulate() else result.round(3).to_string(index=False))


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
