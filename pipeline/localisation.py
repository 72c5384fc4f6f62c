"""Pixel-level localisation where a data set has defect masks: pixel ROC-AUC of the anomaly maps.

Measured in crop coordinates: each test crop's mask is cut from its image's mask with the crop's
box and resized like the crop, so pixels outside every crop (background the panel crop dropped)
do not count, and a pixel under two overlapping tiles counts twice. Clean test images count with
empty masks; defect images without a mask file are left out (their pixels are unknown). A mask
that marks more than half of its image is read as inverted (defect black on white: PIPED's are):
a defect is the small part of a panel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from torch.nn import functional as F
from torchvision.io import ImageReadMode, decode_image, read_file

from pipeline.crop import crop_resize
from pipeline.labels import OK

POOL = 2  # maps and masks are average-pooled 2x2 before the AUC: 4x fewer pixels, the same ranking


def read_masks(masks_csv: Path) -> dict[str, Path]:
    """masks.csv (path,mask; mask relative to the csv's folder) -> source path -> mask file."""
    table = pd.read_csv(masks_csv, dtype=str, keep_default_na=False)
    return {row.path: Path(masks_csv).parent / row.mask for row in table.itertuples()}


def crop_masks(rows: pd.DataFrame, masks: dict[str, Path], size: int) -> tuple[torch.Tensor, np.ndarray]:
    """(N, S, S) defect share per crop pixel in [0, 1], and which crops count (clean images, or
    images with a mask file)."""
    out, known, cache = torch.zeros(len(rows), size, size), np.zeros(len(rows), dtype=bool), {}
    for i, row in enumerate(rows.itertuples()):
        if row.source_path in masks:
            if row.source_path not in cache:
                mask = decode_image(read_file(str(masks[row.source_path])), mode=ImageReadMode.GRAY)
                cache[row.source_path] = 255 - mask if (mask > 127).float().mean() > 0.5 else mask
            box = tuple(int(v) for v in row.bbox.split(","))
            out[i] = crop_resize(cache[row.source_path], box, size)[0].float() / 255.0
            known[i] = True
        else:
            known[i] = row.label == OK
    return out, known


def pixel_roc_auc(heatmaps: torch.Tensor, rows: pd.DataFrame, masks: dict[str, Path]) -> dict[str, float]:
    """Pixel ROC-AUC of (N, S, S) anomaly maps against the rows' masks (defect: over half a pooled
    pixel), with how many images and defect pixels it rests on."""
    truth, known = crop_masks(rows, masks, heatmaps.shape[-1])
    pick = torch.from_numpy(known)
    heat = F.avg_pool2d(heatmaps[pick][:, None].float(), POOL).flatten()
    defect = (F.avg_pool2d(truth[pick][:, None], POOL).flatten() > 0.5).numpy()
    if not 0 < defect.sum() < len(defect):
        return {}
    return {"pixel_roc_auc": float(roc_auc_score(defect, heat.numpy())),
            "pixel_images": float(rows.loc[known, "source_sha256"].nunique()), "pixel_defect_share": float(defect.mean())}
