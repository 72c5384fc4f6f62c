"""Does retiring the candidates no split picked change any choice? (issue 51, item 3)

mse, topk_mean and elbo were never the chosen score on any set or split of today's defaults. Where
there is one family the choice is the best validation score, so leaving out candidates that were
not it changes nothing. With families (ELPV) the per-family mix is kept only when it wins out of
fold, and a fold's pick can be a retired score; this script measures exactly that. It trains the
bench's default models once per ELPV split (bench share 0.7, as `panelscan bench`), scores val and
test once, and runs the choice twice on those same scores: with every candidate, and without the
retired ones. Run it from a checkout of the commit before the removal (8ce04fb), whose code still
computes them:

    git worktree add /tmp/before 8ce04fb
    cd /tmp/before && PYTHONPATH=. /work/main/.venv/bin/python /work/main/benchmarks/retired_scores.py --split-seeds 0,1,2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path

import torch

from pipeline.bench import image_metrics, logged_fit, prepare_split
from pipeline.bench_sets import bench_datasets
from pipeline.config import PanelConfig
from pipeline.defect_head import with_head
from pipeline.ensemble import train_members
from pipeline.score_choice import choose_score, score_val_test
from pipeline.workspace import is_clean

RETIRED = ("mse", "topk_mean", "elbo")


def without_retired(scores):
    return dataclasses.replace(scores, scores={k: v for k, v in scores.scores.items() if k not in RETIRED})


def one_split(split_seed: int, root: Path) -> dict:
    cfg = PanelConfig().replace("ingest", train_frac=0.7, split_seed=split_seed)
    dataset = bench_datasets(root, quick=False, sets=("elpv",))[0]
    split = prepare_split(dataset, root / f"work-{split_seed}", cfg)
    clean = is_clean(split.val).to_numpy()
    trained = train_members(split.train, split.train_families, split.val_x[torch.from_numpy(clean.copy())],
                            split.val["family"].to_numpy(str)[clean], cfg, logged_fit(print))
    model, _ = with_head(trained.model, split.train, cfg, progress=False)
    n = len(trained.families) or 1
    scored = score_val_test(model, split.val, split.val_x, split.test, split.test_x, cfg, n)
    out = {}
    for arm, val, test, synthetic in (
            ("every candidate", scored.val, scored.test, scored.synthetic),
            ("retired left out", without_retired(scored.val), without_retired(scored.test),
             {k: v for k, v in scored.synthetic.items() if k not in RETIRED})):
        choice = choose_score(val, synthetic, n)
        test_auc = image_metrics(choice.values(test.crops.scores, test.crops.family), split.test, {})["roc_auc"]
        out[arm] = {"chosen": choice.describe(list(trained.families)), "test_roc_auc": round(float(test_auc), 4)}
        print(f"ELPV split {split_seed}, {arm}: {out[arm]}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split-seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/retired_scores.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        results = {seed: one_split(int(seed), Path(root)) for seed in args.split_seeds.split(",")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
