"""How well `auto` cropping finds the panel: IoU of the located box with the true panel box on
synthetic frames, for the demo scene and the hard scene (see pipeline.synth.HARD_SCENE).

    .venv/bin/python benchmarks/crop_iou.py --n 300
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pipeline.crop import CropError, box_iou, locate_panel
from pipeline.synth import HARD_SCENE, LABELS, Scene, render_frame


def scene_ious(scene: Scene, n: int, seed: int) -> np.ndarray:
    ious = []
    for i in range(n):
        frame = render_frame(np.random.default_rng([seed, i]), LABELS[i % len(LABELS)], scene)
        gray = torch.from_numpy(np.asarray(frame.image.convert("L")).copy())[None]
        try:
            ious.append(box_iou(locate_panel(gray), frame.panel_box))
        except CropError:
            ious.append(0.0)  # a frame the locator rejects counts as a miss
    return np.array(ious)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    print("| scene | frames | mean IoU | median | 5th pct | min | IoU < 0.8 | ms/frame (render + locate) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, scene in (("demo", Scene()), ("hard", HARD_SCENE)):
        start = time.perf_counter()
        ious = scene_ious(scene, args.n, args.seed)
        ms = 1000 * (time.perf_counter() - start) / args.n
        print(f"| {name} | {args.n} | {ious.mean():.3f} | {np.median(ious):.3f} | {np.percentile(ious, 5):.3f} | "
              f"{ious.min():.3f} | {int((ious < 0.8).sum())} | {ms:.1f} |")


if __name__ == "__main__":
    main()
