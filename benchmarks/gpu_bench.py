"""The quality bench on a box without MLflow or Prefect (a GPU box has neither): the same
run_splits as `panelscan bench` (pipeline/bench.py, same 0.7 train share), once per config
variant and per split seed and training seed, so one call can weigh a setting that is too slow
to try on the CPU (e.g. the defect head at DRAEM's budget).

    python benchmarks/gpu_bench.py --datasets DIR --variant off='{}' \\
        --variant head5k='{"model": {"head_steps": 5000, "head_width": 32}}' --split-seeds 0,1 --train-seeds 0,1 --out OUT

Per variant: OUT/bench-<name>.json and .md as the bench writes them; a summary line per set on
stdout (the first run's): the chosen score with its val / test ROC-AUC, and the best head score
by val when the variant trained a head. Every set found runs (the synthetic set; ELPV when its
package is installed, 92 MB: more than a device call carries) unless `--sets` names some.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

from pipeline.bench import run_splits  # noqa: E402
from pipeline.bench_sets import bench_datasets  # noqa: E402
from pipeline.bench_tables import markdown_table, over_splits_table  # noqa: E402
from pipeline.config import PanelConfig  # noqa: E402


def variant(text: str) -> tuple[str, dict]:
    name, _, overrides = text.partition("=")
    return name, json.loads(overrides or "{}")


def names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def seeds(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())  # argparse reports a ValueError


def summary_lines(name: str, result: dict) -> list[str]:
    lines = []
    for dataset, r in result["datasets"].items():
        m = r["methods"]["panelscan_convvae"]
        heads = {k: c for k, c in m["candidates"].items() if k.startswith("head")}
        best = max(heads.items(), key=lambda kc: kc[1]["val_roc_auc"], default=None)
        head = f" | best head {best[0]} val {best[1]['val_roc_auc']:.3f} test {best[1]['test_roc_auc']:.3f}" if best else ""
        lines.append(f"{name} {dataset}: {m['score']} val {m['val_roc_auc']:.3f} test {m['roc_auc']:.3f} "
                     f"pixel {m.get('pixel_roc_auc', float('nan')):.3f}{head}")
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", type=Path, help="folder of real sets (as ../shared/datasets)")
    p.add_argument("--variant", type=variant, action="append", required=True, help="NAME=JSON config overrides")
    p.add_argument("--split-seeds", type=seeds, default=(0,))
    p.add_argument("--train-seeds", type=seeds, default=(), help="e.g. 0,1 (default: the config's train.seed)")
    p.add_argument("--sets", type=names, default=(), help="only these data sets, e.g. kolektorsdd,piped")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    datasets = bench_datasets(args.out, quick=False, shared=args.datasets, sets=args.sets)
    print("data sets:", ", ".join(d.name for d in datasets), flush=True)
    for name, overrides in args.variant:
        cfg = PanelConfig.from_dict(overrides).replace("ingest", train_frac=0.7)
        start = time.perf_counter()
        result = run_splits(datasets, args.out / f"work-{name}", cfg, ("convvae",), args.split_seeds,
                            lambda m, name=name: print(f"{time.perf_counter() - start:7.1f}s {name} {m}", flush=True),
                            args.train_seeds)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"bench-{name}.json").write_text(json.dumps(result, indent=2, default=str))
        (args.out / f"bench-{name}.md").write_text(markdown_table(result))
        over = over_splits_table(result["over_splits"]) if "over_splits" in result else []
        print("\n".join(summary_lines(name, result) + over), flush=True)


if __name__ == "__main__":
    main()
