"""Scoring throughput on this machine: end to end (read, decode, crop, score, ledger, report,
heatmaps, gallery) against the I/O floor (read + decode + crop + resize only) on the same files.

    .venv/bin/python benchmarks/throughput.py --raw data/inbox/2026-11-22 [--model-name panel-anomaly] [--repeat 3]

Floor and end to end alternate `--repeat` times (after one untimed warm-up of each) and the medians
are compared: on a shared 2-core machine one pass of either varies by 10-25 % from run to run.
"""

from __future__ import annotations

import argparse
import statistics
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
    parser.add_argument("--repeat", type=int, default=3, help="timed passes of each (medians reported)")
    args = parser.parse_args()
    cfg = PanelConfig().replace("tracking", model_name=args.model_name)
    tracking.configure(cfg.tracking)
    version = tracking.resolve_version(args.model_name, "champion")
    ingest_cfg = tracking.load_config(args.model_name, version).ingest
    paths, _ = list_inputs(args.raw, ingest_cfg)

    def floor() -> float:
        start = time.perf_counter()
        crops, _ = prepare_many(paths, ingest_cfg)
        return len(crops) / (time.perf_counter() - start)

    def end_to_end() -> float:
        with tempfile.TemporaryDirectory() as work:
            start = time.perf_counter()
            outcome = score_stage(args.raw, Path(work), cfg, day=date(2000, 1, 1))
            return outcome.n_scored / (time.perf_counter() - start)

    floor(), end_to_end()  # warm-up: first-call imports and caches count in neither
    runs = [(floor(), end_to_end()) for _ in range(args.repeat)]
    floors, e2es = [f for f, _ in runs], [e for _, e in runs]
    print(f"{args.model_name} v{version}, {len(paths)} files, {torch.get_num_threads()} torch threads, "
          f"median of {args.repeat} passes each")
    print("| path | images/s (median) | passes |")
    print("|---|---|---|")
    print(f"| I/O floor: read + decode + crop + resize | {statistics.median(floors):.1f} | "
          f"{', '.join(f'{f:.0f}' for f in floors)} |")
    print(f"| end to end: + score, ledger, report, heatmaps, gallery, MLflow run | {statistics.median(e2es):.1f} | "
          f"{', '.join(f'{e:.0f}' for e in e2es)} |")
    print(f"| end to end / floor | {statistics.median(e2es) / statistics.median(floors):.0%} | "
          f"{', '.join(f'{e / f:.0%}' for f, e in runs)} |")


if __name__ == "__main__":
    main()
