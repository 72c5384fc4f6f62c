"""Where on the image the anomaly is: the box around the anomaly map's peak, in source pixels.
Reports and the localisation figures (benchmarks/region_iou.py) read it."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage


def strongest_region(heatmap: torch.Tensor, bbox: tuple[int, int, int, int], min_frac: float,
                     level: float = 0.3) -> tuple[int, int, int, int]:
    """Box of the strongest anomaly, in source-image coordinates (crop box bbox, resized crop):
    the connected area around the heatmap's peak that stays above `level` of the way from the
    map's median to its peak, so a long crack gets a long box and a pin a small one; at least
    min_frac of the crop on each side."""
    return box_in_source(peak_region(heatmap, min_frac, level), bbox, heatmap.shape[-2:])


def peak_region(heatmap: torch.Tensor, min_frac: float, level: float = 0.3) -> tuple[int, int, int, int]:
    """strongest_region in the heatmap's own pixels (x0, y0, x1, y1), end exclusive."""
    heat = heatmap.double().numpy()
    py, px = np.unravel_index(int(np.argmax(heat)), heat.shape)
    floor = np.median(heat)
    labels, _ = ndimage.label(heat >= floor + level * (heat[py, px] - floor))
    ys, xs = np.nonzero(labels == labels[py, px])
    height, width = heat.shape
    half_x, half_y = max(1, round(min_frac * width / 2)), max(1, round(min_frac * height / 2))
    return (int(min(xs.min(), max(0, px - half_x))), int(min(ys.min(), max(0, py - half_y))),
            int(max(xs.max() + 1, min(width, px + half_x + 1))), int(max(ys.max() + 1, min(height, py + half_y + 1))))


def box_in_source(box: tuple[int, int, int, int], bbox: tuple[int, int, int, int],
                  shape: Sequence[int]) -> tuple[int, int, int, int]:
    """A box in a resized crop's pixels (crop of `shape` (H, W) cut from bbox) in source pixels."""
    (lx0, ly0, lx1, ly1), (x0, y0, x1, y1) = box, bbox
    sx, sy = (x1 - x0) / shape[1], (y1 - y0) / shape[0]
    return (int(x0 + lx0 * sx), int(y0 + ly0 * sy), int(math.ceil(x0 + lx1 * sx)), int(math.ceil(y0 + ly1 * sy)))
