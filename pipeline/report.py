"""Inspector reports: data/reports/<date>/scores.csv (every image) and flagged.csv (flagged only,
highest score first), plus heatmap overlays. Re-runs merge by image, never duplicate rows."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from torchvision.utils import draw_bounding_boxes

from pipeline.files import atomic_write_csv
from pipeline.images import to_uint8, write_png

REPORT_COLUMNS = ["image_path", "crop_id", "panel_id", "score", "threshold", "flagged", "severity", "region",
                  "heatmap_path", "suspected_defect", "suspected_confidence", "score_name", "model_name",
                  "model_version", "scored_at"]
REPORT_KEY = ["image_path", "crop_id"]  # one row per image; the latest scoring wins


def heatmap_overlay(crop: torch.Tensor, heat: torch.Tensor, region: tuple[int, int, int, int] | None) -> torch.Tensor:
    """uint8 RGB (3, S, S): the grayscale crop with the anomaly map in red and its strongest box."""
    gray = crop.float() / 255.0
    level = (heat / heat.max().clamp_min(1e-12)).unsqueeze(0)
    rgb = torch.cat([gray * (1 - level) + level, gray * (1 - level), gray * (1 - level)])
    image = to_uint8(rgb)
    if region is not None:
        image = draw_bounding_boxes(image, torch.tensor([region], dtype=torch.float), colors="yellow", width=1)
    return image


def save_heatmap(path: Path, crop: torch.Tensor, heat: torch.Tensor, region: tuple[int, int, int, int] | None) -> Path:
    return write_png(path, heatmap_overlay(crop, heat, region))


def merge_report(day_dir: Path, new_rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Merge rows into day_dir/scores.csv (one row per image content; a re-run replaces its rows)
    and rewrite flagged.csv; both atomically. Returns (scores, flagged)."""
    day_dir = Path(day_dir)
    scores_path = day_dir / "scores.csv"
    frames = [new_rows[REPORT_COLUMNS]]
    if scores_path.exists():
        frames.insert(0, pd.read_csv(scores_path, dtype={"model_version": str, "crop_id": str}, keep_default_na=False))
    merged = pd.concat(frames, ignore_index=True)
    merged["flagged"] = merged["flagged"].astype(str).str.lower() == "true"
    merged = merged.drop_duplicates(REPORT_KEY, keep="last")
    merged = merged.sort_values(["score", "image_path"], ascending=[False, True]).reset_index(drop=True)
    flagged = merged[merged["flagged"]].reset_index(drop=True)
    atomic_write_csv(scores_path, merged)
    atomic_write_csv(day_dir / "flagged.csv", flagged)
    return merged, flagged
