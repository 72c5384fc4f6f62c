"""Speed on a device, without MLflow or Prefect (a GPU box has neither): training crops/s through
the project's own train_model, scoring crops/s (model + every candidate score) through the
registry's exported program moved to the device, and end-to-end images/s on 300x300 JPEGs
(nightly scoring's two-stage pipeline: read, decode, crop | score, report rows). Both model types, each size, fp32 / bf16 / compiled.

    python benchmarks/gpu.py                      # the GPU when there is one: 128 and 256 px
    python benchmarks/gpu.py --device cpu --small # seconds on a CPU (what the test runs)
    python benchmarks/gpu.py --sizes 128 --models convvae --precisions fp32,bf16  # inside a 10-minute call

Prints a Markdown table and writes it with the figures as JSON (--out).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

from pipeline.batch_scoring import score_files  # noqa: E402
from pipeline.batching import device_batch  # noqa: E402
from pipeline.calibration import Calibration  # noqa: E402
from pipeline.config import PanelConfig  # noqa: E402
from pipeline.device import pick_device  # noqa: E402
from pipeline.ingest import prepare_many  # noqa: E402
from pipeline.models import exported  # noqa: E402
from pipeline.scoring import score_crops  # noqa: E402
from pipeline.training import train_model  # noqa: E402

PRECISIONS = ("fp32", "bf16", "compiled")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _crops(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """Textured clean-looking uint8 crops (speed does not depend on what they show)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    base = 120 + 40 * torch.sin(xx / 5.0) * torch.cos(yy / 7.0)
    return (base + torch.randn(n, 1, size, size, generator=g) * 6).clamp(0, 255).to(torch.uint8)


def training_speed(cfg: PanelConfig, n: int, epochs: int) -> dict[str, float]:
    x = _crops(n, cfg.ingest.image_size)
    cfg = cfg.replace("train", epochs=epochs, min_epochs=epochs, checkpoint=False)
    result = train_model(x, x[: max(16, n // 8)], cfg, progress=False)
    batch, lr = device_batch(cfg.train, n, pick_device(cfg.train.device))
    return {"train_crops_per_s": epochs * n / result.seconds, "train_seconds": result.seconds, "train_batch": batch,
            "train_lr": lr}


def scoring_speed(model: torch.nn.Module, cfg: PanelConfig, device: torch.device, n: int, precision: str
                  ) -> tuple[float, dict[str, np.ndarray]]:
    """Crops/s for the model + every candidate score, after one warm-up pass; and the scores."""
    crops = _crops(n, cfg.ingest.image_size, seed=1)
    if precision == "compiled":
        model = torch.compile(model)
    autocast = torch.autocast(device.type, torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    with autocast:
        score_crops(model, crops[: cfg.score.batch_size], cfg.score, cfg.model, keep_heatmaps=False)  # warm-up
        _sync(device)
        start = time.perf_counter()
        scored = score_crops(model, crops, cfg.score, cfg.model, keep_heatmaps=False)
        _sync(device)
    return n / (time.perf_counter() - start), scored.scores


def end_to_end_speed(model: torch.nn.Module, cfg: PanelConfig, n: int, folder: Path) -> dict[str, float]:
    """Images/s from 300x300 JPEG files to report rows through nightly scoring's own two-stage
    pipeline (pipeline/batch_scoring.py: read, decode and crop, in score.decode_workers processes,
    overlapped with score and rows; the rows are dropped instead of committed to a ledger). Two
    figures: the whole call (decode workers' start-up included, as in a nightly run) and the steady
    rate after the first chunk is committed (what a long night runs at)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        pixels = (120 + rng.normal(0, 20, (300, 300))).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"frame_{i:05d}.jpg", quality=90)
    paths = sorted(folder.glob("*.jpg"))
    # Half the images flagged, as on the demo inbox: their heatmaps are part of the report rows.
    crops, _ = prepare_many(paths[:64], cfg.ingest)
    scores = score_crops(model, torch.stack([c.pixels for c in crops]), cfg.score, cfg.model, keep_heatmaps=False)
    calibration = Calibration(model_name="bench", model_version="0", score_name="norm_blur_max",
                              threshold=float(np.median(scores.scores["norm_blur_max"])), rule="fixed",
                              fallback=False, note="", val={}, test={}, score_scale={"norm_blur_max": [1.0]})
    committed: list[tuple[int, float]] = []
    start = time.perf_counter()
    n_scored, _ = score_files(paths, lambda: model, cfg, calibration, folder, lambda rows, heatmaps: None,
                              cfg.score.decode_workers, lambda done, total: committed.append((done, time.perf_counter())))
    end = time.perf_counter()
    (first_done, first_at), (last_done, last_at) = committed[0], committed[-1]
    steady = (last_done - first_done) / (last_at - first_at) if last_done > first_done else float("nan")
    return {"end_to_end_images_per_s": n_scored / (end - start), "end_to_end_steady_images_per_s": steady}


def run(device_name: str, sizes: list[int], model_types: list[str], precisions: list[str], n_train: int,
        n_score: int, n_images: int, epochs: int, decode_workers: int = 0) -> list[dict]:
    device = pick_device(device_name)
    rows = []
    for model_type in model_types:
        for size in sizes:
            cfg = (PanelConfig().replace("ingest", image_size=size, crop="none").replace("model", model_type=model_type)
                   .replace("train", device=device.type)
                   .replace("score", device=device.type, decode_workers=decode_workers, batch_images=1024))
            row = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                   "model": model_type, "size": size} | training_speed(cfg, n_train, epochs)
            model = train_model(_crops(64, size), _crops(16, size), cfg.replace("train", epochs=1, checkpoint=False),
                                progress=False).model
            with tempfile.TemporaryDirectory() as tmp:
                saved = exported.save(model, _crops(2, size).float() / 255, Path(tmp) / "m.pt2")
                program = exported.load(saved, device)  # the registry's path onto the device
                reference = None
                for precision in precisions:
                    try:
                        speed, scores = scoring_speed(program, cfg, device, n_score, precision)
                    except RuntimeError as exc:  # e.g. the VQ-VAE's codebook ops under bf16 autocast
                        row[f"score_{precision}_error"] = str(exc).splitlines()[0][:200]
                        speed, scores = float("nan"), None
                    row[f"score_{precision}_crops_per_s"] = speed
                    if precision == "fp32":
                        reference = scores
                _, cpu_scores = scoring_speed(model.cpu(), cfg.replace("score", device="cpu"), torch.device("cpu"),
                                              min(n_score, 256), "fp32")
                # Each score's largest gap, relative to that score's range on these crops.
                row["cpu_vs_device_max_rel_diff"] = max(float(np.max(np.abs(reference[k][: len(v)] - v)) /
                                                              max(float(np.max(np.abs(v))), 1e-12))
                                                        for k, v in cpu_scores.items())
                row |= end_to_end_speed(program, cfg, n_images, Path(tmp))
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def markdown(rows: list[dict], precisions: list[str]) -> str:
    head = ["device", "model", "px", "train crops/s", *[f"score {p} crops/s" for p in precisions],
            "end-to-end img/s (steady)", "CPU vs device (max rel. diff)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["device"], r["model"], str(r["size"]), f"{r['train_crops_per_s']:,.0f}",
                 *[f"{r[f'score_{p}_crops_per_s']:,.0f}" if r[f"score_{p}_crops_per_s"] == r[f"score_{p}_crops_per_s"]
                   else "fails" for p in precisions],
                 f"{r['end_to_end_images_per_s']:,.0f} ({r['end_to_end_steady_images_per_s']:,.0f})",
                 f"{r['cpu_vs_device_max_rel_diff']:.1e}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--small", action="store_true", help="tiny sizes and counts: a CPU smoke run")
    parser.add_argument("--models", default="convvae,vqvae")
    parser.add_argument("--precisions", default=",".join(PRECISIONS))
    parser.add_argument("--sizes", help="crop sizes, comma-separated (default: 128,256; with --small: 32); one "
                                        "size of both models with compile took over 250 s on an H100")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu.json"))
    parser.add_argument("--decode-workers", type=int, default=-1,
                        help="processes decoding for the end-to-end figure (default: every core but one on a GPU, "
                             "0 on a CPU)")
    args = parser.parse_args(argv)
    if args.small:
        sizes, n_train, n_score, n_images, epochs = [32], 64, 128, 96, 1
    else:
        sizes, n_train, n_score, n_images, epochs = [128, 256], 12_800, 16_384, 8_192, 3
    precisions = [p for p in args.precisions.split(",") if p]
    sizes = [int(v) for v in args.sizes.split(",")] if args.sizes else sizes
    workers = args.decode_workers if args.decode_workers >= 0 else (
        max(0, (os.cpu_count() or 1) - 1) if pick_device(args.device).type == "cuda" else 0)
    rows = run(args.device, sizes, args.models.split(","), precisions, n_train, n_score, n_images, epochs, workers)
    table = markdown(rows, precisions)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "table": table, "torch": torch.__version__}, indent=2))


if __name__ == "__main__":
    main()
