"""The benchmark: panelscan's models next to the baselines an inspection team would otherwise
use, on the identical split and preprocessing, plus speed, in one run (`panelscan bench`).

One protocol and one configuration for every data set: the synthetic panels, ELPV when installed,
every shared real set (a folder with labels.csv under --datasets, masks under masks/<set>/) and
any --raw/--labels folder. Every method is fitted on the same clean training crops, scores the
same val/test crops, and is judged per source image (max over its crops) on the same test images:
test ROC-AUC (95 % stratified-bootstrap CI) / PR-AUC overall, per defect class and per group (e.g.
ELPV cell type); pixel ROC-AUC of panelscan's anomaly maps where masks exist
(pipeline/localisation.py). Models choose their score function on validation, as calibration
does (pipeline/score_choice.py). Baselines: pipeline/baselines.py; when the labels name panel
families, panelscan trains one model per family and the baselines also run per family. The
summary is the mean test ROC-AUC over the real sets (every set but the synthetic one), and with
several split seeds (run_splits) each figure per seed and its mean over them. Speed:
I/O floor (read, decode, crop, resize) vs end-to-end scoring (the same + model + scores) on the
same files, training seconds per epoch, peak memory.
"""

from __future__ import annotations

import itertools
import platform
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.backbone import LITE0
from pipeline.baselines import BASELINES, baseline_scores, per_family_baseline_scores
from pipeline.bench_sets import SYNTHETIC, BenchDataset
from pipeline.calibration import evaluate, roc_auc_ci, score_table
from pipeline.config import PanelConfig
from pipeline.defect_head import WithHead, with_head
from pipeline.device import pick_device
from pipeline.ensemble import train_members
from pipeline.families import FitOne, routing_accuracy, training_families
from pipeline.ingest import ingest, prepare_many
from pipeline.localisation import pixel_roc_auc
from pipeline.models import MODEL_TYPES, model_class
from pipeline.score_choice import choose_score, score_val_test
from pipeline.scoring import per_image_max, score_crops
from pipeline.training import TrainResult, train_model
from pipeline.workspace import WorkDirs, dataset_hash, is_clean, load_crops, load_split

SCHEMA_VERSION = 2  # 2: CIs, pixel ROC-AUC, summary over the real sets


@dataclass(frozen=True)
class Split:
    train: torch.Tensor  # clean training crops, uint8 (N, 1, S, S)
    train_families: np.ndarray  # family per training crop ("" without a family column)
    val: pd.DataFrame
    test: pd.DataFrame
    val_x: torch.Tensor
    test_x: torch.Tensor


def image_metrics(crop_scores: np.ndarray, rows: pd.DataFrame, groups: dict[str, str]) -> dict[str, float]:
    """Per-image (max over crops) test metrics overall, per class and per group."""
    _, scores = per_image_max({"s": crop_scores}, rows["source_sha256"])
    images = rows.groupby("source_sha256", sort=False).first()
    labels = images["label"].to_numpy()
    metrics = {k: v for k, v in evaluate(scores["s"], labels).items() if k.startswith(("roc_auc", "pr_auc", "n"))}
    if "roc_auc" in metrics:
        metrics["roc_auc_ci_low"], metrics["roc_auc_ci_high"] = roc_auc_ci(scores["s"], labels)
    group_of = images["source_path"].map(groups) if groups else pd.Series(dtype=str)
    for group in sorted(group_of.dropna().unique()):
        pick = (group_of == group).to_numpy()
        if "roc_auc" in (part := evaluate(scores["s"][pick], labels[pick])):
            metrics[f"roc_auc_{group}"] = part["roc_auc"]
    return metrics


def prepare_split(dataset: BenchDataset, workdir: Path, cfg: PanelConfig) -> Split:
    ingest(dataset.raw, workdir, dataset.labels, cfg.ingest)
    dirs = WorkDirs(workdir)
    train = load_split(dirs.manifest, ["train"], trainable_only=True)
    val, test = load_split(dirs.manifest, ["val"]), load_split(dirs.manifest, ["test"])
    return Split(load_crops(train, dirs.crops), train["family"].to_numpy(str), val, test, load_crops(val, dirs.crops),
                 load_crops(test, dirs.crops))


def logged_fit(log: Callable[[str], None], every: int = 10) -> FitOne:
    """train_model without a progress bar (bench logs are files), saying every `every` epochs and at
    the end how far each model (member, family) is: a full bench trains for hours on a CPU."""
    def fit(name: str, tx: torch.Tensor, vx: torch.Tensor, cfg: PanelConfig) -> TrainResult:
        what = f"{cfg.model.model_type} {name}".rstrip()

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            if epoch % every == 0:
                log(f"{what}: epoch {epoch}/{cfg.train.epochs}, clean val recon {metrics['val/recon']:.4g}")
        result = train_model(tx, vx, cfg, on_epoch=on_epoch, progress=False)
        log(f"{what}: trained {len(result.history)} epochs in {result.seconds:.0f} s (kept epoch {result.best_epoch})")
        return result
    return fit


def model_result(split: Split, cfg: PanelConfig, dataset: BenchDataset,
                 log: Callable[[str], None] = print) -> tuple[dict, dict]:
    """Train one model type on the split (one model per family when the labels name families),
    score, scale and choose its score on val as calibration does, report test; and its speed."""
    clean = is_clean(split.val).to_numpy()
    trained = train_members(split.train, split.train_families, split.val_x[torch.from_numpy(clean.copy())],
                            split.val["family"].to_numpy(str)[clean], cfg,
                            logged_fit(lambda message: log(f"[{dataset.name}] {message}")))
    if cfg.model.head_steps > 0 and cfg.model.backbone == "none":  # as with_head: a feature model has none
        log(f"[{dataset.name}] defect head: {cfg.model.head_steps} steps")
    model, head_seconds = with_head(trained.model, split.train, cfg, progress=False)
    model = model.to(pick_device(cfg.score.device))
    scored = score_val_test(model, split.val, split.val_x, split.test, split.test_x, cfg, len(trained.families) or 1,
                            keep_heatmaps=bool(dataset.masks))
    families = list(trained.families)
    choice = choose_score(scored.val, scored.synthetic, len(trained.families) or 1)
    # What the choice saw (validation only), and each candidate's test figure beside it: what the
    # choice cost or gained, for the analyst; never an input to the choice.
    candidates = score_table(scored.val, scored.test, choice, scored.synthetic, families)
    chosen = choice.describe(families)
    metrics = image_metrics(choice.values(scored.test.crops.scores, scored.test.crops.family), split.test,
                            dataset.groups) | {
        "score": chosen, "val_roc_auc": candidates[chosen]["val_roc_auc"],  # the labelled val figure,
        "val_synthetic_auc": candidates[chosen]["val_synthetic_auc"],  # beside the pasted one (NaN for a mix)
        "image_ids": dataset_hash(split.test, "source_sha256"), "families": families, "candidates": candidates}
    if dataset.masks:
        metrics |= pixel_roc_auc(choice.maps(scored.test.crops), split.test, dataset.masks)
    if trained.classifier is not None:  # clean val crops; test crops, defects included
        metrics["router_val_accuracy"] = trained.classifier.accuracy
        metrics["router_test_accuracy"] = routing_accuracy(scored.test.crops.family, split.test["family"].to_numpy(str),
                                                           trained.classifier.names)
    results = trained.results.values()
    seconds, epochs = sum(r.seconds for r in results), max(max(1, len(r.history)) for r in results)
    # Scored as nightly scoring scores it: without the defect head when the chosen score does not read it.
    scoring_model = model if choice.reads_head() or not isinstance(model, WithHead) else model.model
    return metrics, {"train_seconds": seconds + head_seconds, "seconds_per_epoch": seconds / epochs,  # all families
                     "head_seconds": head_seconds, "epochs": epochs, "model": scoring_model, "needs": choice.needs()}


def scoring_speed(model: torch.nn.Module, files: list[Path], cfg: PanelConfig,
                  only: frozenset[str] | None = None) -> dict[str, float]:
    """Images/s on the same files: I/O floor (read + decode + crop + resize) vs + model scores
    (those in `only`, as nightly scoring computes the chosen score's alone; None: every candidate)."""
    start = time.perf_counter()
    crops, _ = prepare_many(files, cfg.ingest)
    floor = len(crops) / (time.perf_counter() - start)
    start = time.perf_counter()
    crops, _ = prepare_many(files, cfg.ingest)
    if crops:
        score_crops(model, torch.stack([c.pixels for c in crops]), cfg.score, cfg.model, keep_heatmaps=False,
                    only=only)
    end_to_end = len(crops) / (time.perf_counter() - start)
    return {"io_floor_images_per_s": floor, "end_to_end_images_per_s": end_to_end,
            "end_to_end_share_of_floor": end_to_end / floor if floor else float("nan")}


def run_dataset(dataset: BenchDataset, workdir: Path, cfg: PanelConfig, model_types: tuple[str, ...],
                log: Callable[[str], None] = print) -> dict:
    log(f"[{dataset.name}] ingest + split")
    split = prepare_split(dataset, workdir, cfg)
    test_ids = dataset_hash(split.test, "source_sha256")
    methods: dict[str, dict] = {}
    speed: dict[str, dict] = {}
    for model_type in model_types:
        log(f"[{dataset.name}] train {model_type}")
        type_cfg = cfg.replace("model", model_type=model_type)
        metrics, timing = model_result(split, type_cfg, dataset, log)
        methods[f"panelscan_{model_type}"] = metrics
        files = [Path(dataset.raw) / p for p in split.test["source_path"].drop_duplicates()]
        speed[f"panelscan_{model_type}"] = {k: v for k, v in timing.items() if k not in ("model", "needs")} | (
            scoring_speed(timing["model"], files, type_cfg, timing["needs"]))
    log(f"[{dataset.name}] baselines")
    backbone = (cfg.model.backbone, cfg.model.backbone_weights) if cfg.model.backbone != "none" else (LITE0, "")
    base = baseline_scores(split.train, {"test": split.test_x}, cfg.train.seed, *backbone)
    for name in BASELINES:
        methods[name] = image_metrics(base[name]["test"], split.test, dataset.groups) | {"image_ids": test_ids}
    clean_val = split.val.loc[is_clean(split.val), "family"]
    names = training_families(pd.Series(split.train_families, dtype=str), clean_val.astype(str))
    known = split.test["family"].isin(names).all()
    if names and known:  # the same metadata panelscan's families use, given to the baselines too
        per_family = per_family_baseline_scores(split.train, split.train_families, split.val_x,
                                                split.val["family"].to_numpy(str), is_clean(split.val).to_numpy(),
                                                split.test_x, split.test["family"].to_numpy(str), names, cfg.train.seed,
                                                *backbone)
        for name in BASELINES:
            methods[f"{name}_per_family"] = image_metrics(per_family[name], split.test, dataset.groups) | {
                "image_ids": test_ids, "families": list(names)}
    return {"split": {"train_crops": len(split.train), "val_images": int(split.val["source_sha256"].nunique()),
                      "test_images": int(split.test["source_sha256"].nunique()), "test_image_ids": test_ids,
                      "image_size": cfg.ingest.image_size, "crop": cfg.ingest.crop, "tile": cfg.ingest.tile},
            "methods": methods, "speed": speed}


def machine() -> dict[str, str | int]:
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": torch.get_num_threads(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""}


def run_bench(datasets: list[BenchDataset], root: Path, cfg: PanelConfig,
              model_types: tuple[str, ...] = tuple(MODEL_TYPES), log: Callable[[str], None] = print) -> dict:
    """Every data set in its own fresh workdir under root; the whole result as one JSON-able dict."""
    for model_type in model_types:  # an unknown type fails now, not after the first data set
        model_class(model_type)
    start = time.perf_counter()
    results = {d.name: run_dataset(d, Path(root) / d.name, cfg, model_types, log) for d in datasets}
    return {"schema_version": SCHEMA_VERSION, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "config": cfg.to_dict(), "datasets": results, "summary": summary(results),
            "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "seconds": time.perf_counter() - start}


def run_splits(datasets: list[BenchDataset], root: Path, cfg: PanelConfig, model_types: tuple[str, ...],
               split_seeds: tuple[int, ...], log: Callable[[str], None] = print,
               train_seeds: tuple[int, ...] = ()) -> dict:
    """The bench once per split seed (ingest.split_seed) and training seed (train.seed; default: the
    config's): the first run's full result, and with more runs every run's figures and their mean
    (over_splits), so a headline is not the luck of one split (on ELPV one split gave 0.870, another
    0.755) nor of one training (one seed moved the real-set mean by 0.014). The training seeds of a
    split share its workdir: the split is ingested once."""
    train_seeds = train_seeds or (cfg.train.seed,)
    runs: dict[tuple[int, int], dict] = {}
    for split_seed, train_seed in itertools.product(split_seeds, train_seeds):
        tag = f"[split {split_seed}" + (f", training seed {train_seed}] " if len(train_seeds) > 1 else "] ")

        def tagged(message: str, tag: str = tag) -> None:
            log(tag + message)
        run_cfg = cfg.replace("ingest", split_seed=split_seed).replace("train", seed=train_seed)
        workdir = Path(root) / f"split-{split_seed}" if split_seed != split_seeds[0] else Path(root)
        runs[split_seed, train_seed] = run_bench(datasets, workdir, run_cfg, model_types,
                                                 tagged if len(split_seeds) * len(train_seeds) > 1 else log)
    first = next(iter(runs.values()))
    if len(runs) == 1:
        return first
    return first | {"over_splits": over_splits(runs), "seconds": sum(r["seconds"] for r in runs.values()),
                    "peak_memory_mb": max(r["peak_memory_mb"] for r in runs.values())}


def run_label(split_seed: int, train_seed: int, train_seeds: list[int]) -> str:
    """A run's name in over_splits["runs"]: the split seed, and the training seed when there are several."""
    return str(split_seed) if len(set(train_seeds)) == 1 else f"{split_seed}-{train_seed}"


def over_splits(runs: dict[tuple[int, int], dict]) -> dict:
    """Per method: each set's test ROC-AUC in every run (split seed, training seed) and its mean,
    and the mean over the real sets per run and over all runs (methods present in every run and set)."""
    sets = list(next(iter(runs.values()))["datasets"])
    methods = [m for m in next(iter(runs.values()))["datasets"][sets[0]]["methods"]
               if all(m in r["datasets"][name]["methods"] for r in runs.values() for name in sets)]
    table = {}
    for m in methods:
        per_set = {name: [r["datasets"][name]["methods"][m]["roc_auc"] for r in runs.values()] for name in sets}
        real = [r["summary"][m]["mean_roc_auc"] for r in runs.values() if m in r["summary"]]
        table[m] = {"roc_auc": per_set, "mean_roc_auc": {name: float(np.mean(v)) for name, v in per_set.items()},
                    "real_sets_per_split": real, "real_sets_mean": float(np.mean(real)) if real else float("nan")}
    train_seeds = [t for _, t in runs]
    return {"seeds": [s for s, _ in runs], "train_seeds": train_seeds, "methods": table,
            "runs": {run_label(s, t, train_seeds): {"date": r["date"], "datasets": r["datasets"], "summary": r["summary"]}
                     for (s, t), r in list(runs.items())[1:]}}


def summary(results: dict[str, dict]) -> dict[str, dict]:
    """Per method present on every real set: the mean test ROC-AUC over the real sets (and the
    lowest), so a method is judged on panels it was not tuned on, not on the synthetic ones."""
    real = [data["methods"] for name, data in results.items() if name != SYNTHETIC]
    if not real:
        return {}
    common = [m for m in real[0] if all(m in methods for methods in real[1:])]
    return {m: {"mean_roc_auc": float(np.mean([methods[m]["roc_auc"] for methods in real])),
                "min_roc_auc": float(np.min([methods[m]["roc_auc"] for methods in real])), "sets": len(real)}
            for m in common}
