"""Panel cropping: find the panel in the camera frame, crop it, resize to the model size."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torchvision.transforms.v2 import functional as TF

from pipeline.errors import UserError

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), source pixel coordinates


class CropError(ValueError):
    """The panel could not be located; the message is the quarantine reason."""


EDGE_SPREAD = 3  # pixels the evidence reaches beyond a panel's true edge (measured on synthetic frames)


def _ring_width(height: int, width: int) -> int:
    return max(2, min(height, width) // 32)


def _border_ring(height: int, width: int) -> np.ndarray:
    ring = _ring_width(height, width)
    mask = np.zeros((height, width), dtype=bool)
    mask[:ring], mask[-ring:], mask[:, :ring], mask[:, -ring:] = True, True, True, True
    return mask


def _background_plane(image: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """Least-squares plane a + b·x + c·y through the border ring: the background with its
    illumination gradient (a single median would call half of a lit-from-one-side frame panel).
    Saturated border pixels are left out of the fit and the plane is clipped like the camera
    clips, so a background that burns out or drops to black along one side stays background."""
    usable = ring & (image > 2) & (image < 253)
    if usable.sum() < 3:
        usable = ring
    ys, xs = np.nonzero(usable)
    design = np.column_stack([np.ones(xs.size), xs, ys])
    coef, *_ = np.linalg.lstsq(design, image[usable], rcond=None)
    yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    return np.clip(coef[0] + coef[1] * xx + coef[2] * yy, 0, 255)


def _robust_sigma(values: np.ndarray) -> float:
    return float(1.4826 * np.median(np.abs(values - np.median(values)))) + 1e-6


def _noise_sigma(image: np.ndarray, ring: np.ndarray) -> float:
    """Pixel noise on the border from neighbour differences: smooth shading (vignetting, the
    dark falloff at the edge of a frame-filling cell) does not inflate it, unlike the ring's spread."""
    dx = (image[:, 1:] - image[:, :-1])[ring[:, 1:] & ring[:, :-1]]
    dy = (image[1:] - image[:-1])[ring[1:] & ring[:-1]]
    return _robust_sigma(np.concatenate([dx, dy])) / np.sqrt(2)


def locate_panel(gray: torch.Tensor, min_area_frac: float = 0.05, k: float = 6.0) -> Box:
    """Box of the panel in a (1, H, W) uint8 frame.

    Evidence that a pixel is not background: it differs from the background plane fitted through
    the frame border (a panel brighter or darker than a graded background), or it lies on a
    strong edge (a panel as bright as its background still shows its rim). The panel is the
    union of the large evidence regions, closed and hole-filled: busbars, seams and dark
    connectors split a panel into parts.

    The intensity threshold covers the border's pixel noise plus its spread around the plane
    (saturated or uneven backgrounds). When the border is not background at all (a frame-filling
    cell whose rim falls off into the dark: the ring brightens inwards on 3+ sides) its spread is
    the falloff itself, and only the pixel noise counts.
    """
    image = ndimage.gaussian_filter(gray[0].numpy().astype(np.float32), 2.0)
    height, width = image.shape
    ring = _border_ring(height, width)
    residual = np.abs(image - _background_plane(image, ring))
    edges = np.hypot(ndimage.sobel(image, axis=0), ndimage.sobel(image, axis=1))
    strong_edge = edges > np.median(edges[ring]) + k * _robust_sigma(edges[ring]) + 8.0
    threshold = k * _noise_sigma(image, ring) + 8.0
    if not _frame_filling(image):
        threshold += 1.5 * _robust_sigma(residual[ring])
    panel = _union_of_large_regions((residual > threshold) | strong_edge)
    # Smoothing (σ=2) and the Sobel stencil spread the evidence ~3 px outwards; take it back.
    ys, xs = np.nonzero(ndimage.binary_erosion(panel, iterations=EDGE_SPREAD))
    if panel.sum() < min_area_frac * height * width or not xs.size:
        raise CropError(f"no panel found (the largest region distinct from the frame border is "
                        f"{panel.mean():.1%} of the frame; needs {min_area_frac:.0%})")
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _frame_filling(image: np.ndarray, rise: float = 5.0) -> bool:
    """True when the frame's border ring changes inwards by more than `rise` grey levels on at
    least 3 sides: the panel's own falloff, not a background (measured: 99.5% of ELPV cells, 0 of
    400 synthetic frames, default and hard scenes)."""
    height, width = image.shape
    r = _ring_width(height, width)
    a = r // 2
    inward = [image[a:r, r:-r].mean() - image[:a, r:-r].mean(), image[-r:-a, r:-r].mean() - image[-a:, r:-r].mean(),
              image[r:-r, a:r].mean() - image[r:-r, :a].mean(), image[r:-r, -r:-a].mean() - image[r:-r, -a:].mean()]
    return int(np.sum(np.abs(inward) > rise)) >= 3


def _union_of_large_regions(evidence: np.ndarray, keep_frac: float = 0.2) -> np.ndarray:
    """Closed, hole-filled evidence; every connected region at least keep_frac of the largest."""
    mask = ndimage.binary_closing(evidence, iterations=3)
    mask = ndimage.binary_opening(ndimage.binary_fill_holes(mask), iterations=3)
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
    return np.isin(labels, np.flatnonzero(sizes >= keep_frac * sizes.max()) + 1)


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
        try:
            return locate_panel(gray)
        except CropError:
            # Nothing stands out from the border: a uniformly dark (dead) cell filling the frame,
            # or an empty frame. Both are for an inspector to see, so score the whole frame
            # rather than quarantine it (ELPV: all 8 such cells are labelled defective, p = 1).
            return 0, 0, width, height
    raise UserError(f"unknown crop mode {mode!r} (expected auto, roi or none)")


def tile_side(box: Box, tile: int, auto_aspect: float) -> int:
    """The tile side for a panel box: tile when set; else, for a box at least auto_aspect times
    longer than wide (or tall), its short side, so tiles stay square; else 0 (one crop)."""
    width, height = box[2] - box[0], box[3] - box[1]
    if tile > 0 or auto_aspect <= 0 or min(width, height) <= 0:
        return tile
    return min(width, height) if max(width, height) >= auto_aspect * min(width, height) else 0


def tile_boxes(box: Box, tile: int, overlap: float) -> list[Box]:
    """Overlapping tile x tile boxes covering box, row by row; the last row/column is flush with
    the box's far edge so nothing is left out. A box smaller than a tile is one tile (itself)."""
    if tile <= 0:
        return [box]
    if not 0 <= overlap < 1:
        raise UserError(f"tile_overlap must be in [0, 1), got {overlap}")
    x0, y0, x1, y1 = box
    return [(x, y, min(x + tile, x1), min(y + tile, y1))
            for y in _tile_starts(y0, y1, tile, overlap) for x in _tile_starts(x0, x1, tile, overlap)]


def _tile_starts(start: int, end: int, tile: int, overlap: float) -> list[int]:
    if end - start <= tile:
        return [start]
    stride = max(1, int(round(tile * (1 - overlap))))
    starts = list(range(start, end - tile, stride))
    return starts + [end - tile]


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
