"""Scoring throughput on this machine: end to end (read, decode, crop, score, ledger, report,
heatmaps, gallery) against the I/O floor (read + decode + crop + resize only) on the same files.

    .venv/bin/python benchmarks/throughput.py --raw data/inbox/2026-11-22 [--model-name panel-anomaly]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

from pipeline import tracking
from pipeline.config import PanelConfig
from pipeline.ingest import list_inputs, prepare_many
from pipeline.stages import score_stage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, required=True)
    parser.add_argument("--model-name", default=PanelConfig().tracking.model_name)
    args = parser.parse_args()
    cfg = PanelConfig().replace("tracking", model_name=args.model_name)
    tracking.configure(cfg.tracking)
    version = tracking.resolve_version(args.model_name, "champion")
    ingest_cfg = tracking.load_config(args.model_name, version).ingest
    paths, _ = list_inputs(args.raw, ingest_cfg)

    start = time.perf_counter()
    crops, _ = prepare_many(paths, ingest_cfg)
    floor = len(crops) / (time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as work:
        start = time.perf_counter()
        outcome = score_stage(args.raw, Path(work), cfg, day=date(2000, 1, 1))
        end_to_end = outcome.n_scored / (time.perf_counter() - start)
    print(f"{args.model_name} v{version}, {len(paths)} files, {torch.get_num_threads()} torch threads")
    print("| path | images/s |")
    print("|---|---|")
    print(f"| I/O floor: read + decode + crop + resize | {floor:.1f} |")
    print(f"| end to end: + score, ledger, report, heatmaps, gallery, MLflow run | {end_to_end:.1f} |")
    print(f"| end to end / floor | {end_to_end / floor:.0%} |")


if __name__ == "__main__":
    main()
