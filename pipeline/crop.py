"""Panel cropping: find the panel in the camera frame, crop it, resize to the model size."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torchvision.transforms.v2 import functional as TF

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), source pixel coordinates


class CropError(ValueError):
    """The panel could not be located; the message is the quarantine reason."""


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Threshold that maximises between-class variance of a 1-D sample."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight0 = np.cumsum(hist)
    weight1 = weight0[-1] - weight0
    mean0 = np.cumsum(hist * centres) / np.maximum(weight0, 1)
    mean1 = (np.sum(hist * centres) - np.cumsum(hist * centres)) / np.maximum(weight1, 1)
    between = weight0 * weight1 * (mean0 - mean1) ** 2
    return float(centres[int(np.argmax(between))])


def locate_panel(gray: torch.Tensor, min_area_frac: float = 0.05) -> Box:
    """Box of the panel in a (1, H, W) uint8 frame.

    The background is estimated from the frame border; the panel is the largest connected
    region that differs from it (Otsu on the smoothed absolute difference), holes filled, so
    dark parts inside the panel (connector, cracks) do not cut it up.
    """
    image = ndimage.gaussian_filter(gray[0].numpy().astype(np.float32), 2.0)
    height, width = image.shape
    ring = max(2, min(height, width) // 32)
    border = np.concatenate([image[:ring].ravel(), image[-ring:].ravel(), image[:, :ring].ravel(), image[:, -ring:].ravel()])
    diff = np.abs(image - np.median(border))
    threshold = otsu_threshold(diff)
    mask = ndimage.binary_opening(diff > threshold, iterations=2)
    labels, count = ndimage.label(mask)
    if count == 0:
        raise CropError("no panel found (frame has no region distinct from its border)")
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
    biggest = labels == (int(np.argmax(sizes)) + 1)
    if biggest.sum() < min_area_frac * height * width:
        raise CropError(f"no panel found (largest region is {biggest.sum() / (height * width):.1%} of the frame)")
    # Opening and the blurred, darker rim cut the panel's edges; grow back into pixels that are
    # at least half as distinct from the background, only right next to the region.
    edge = (diff > threshold / 2) & ndimage.binary_dilation(biggest, iterations=4)
    panel = ndimage.binary_fill_holes(biggest | edge)
    ys, xs = np.nonzero(panel)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def panel_box(gray: torch.Tensor, mode: str, roi: Box | None = None) -> Box:
    """The source box to crop for a crop mode: auto | roi | none."""
    _, height, width = gray.shape
    if mode == "none":
        return 0, 0, width, height
    if mode == "roi":
        if roi is None:
            raise CropError("crop mode 'roi' needs ingest.roi = [x0, y0, x1, y1] in the config")
        x0, y0, x1, y1 = roi
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise CropError(f"roi {roi} lies outside the {width}x{height} image")
        return roi
    if mode == "auto":
        return locate_panel(gray)
    raise ValueError(f"unknown crop mode {mode!r} (expected auto, roi or none)")


def crop_resize(gray: torch.Tensor, box: Box, size: int) -> torch.Tensor:
    """Crop box out of a (1, H, W) uint8 image and resize it to (1, size, size) uint8."""
    x0, y0, x1, y1 = box
    crop = gray[:, y0:y1, x0:x1]
    return TF.resize(crop, [size, size], antialias=True)


def box_iou(a: Box, b: Box) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union else 0.0
