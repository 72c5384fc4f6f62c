"""Inspector reports: data/reports/<date>/scores.csv (every image) and flagged.csv (flagged only,
highest score first), plus heatmap overlays. Rebuilt from the scoring ledger on every run, so
re-runs never duplicate an image."""

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


def write_report(day_dir: Path, rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write day_dir/scores.csv (every image once: the latest row per image path wins) and
    flagged.csv (flagged only, highest score first), both atomically. Returns (scores, flagged)."""
    day_dir = Path(day_dir)
    table = pd.DataFrame(rows, columns=REPORT_COLUMNS) if len(rows) else pd.DataFrame(columns=REPORT_COLUMNS)
    table = table[REPORT_COLUMNS].drop_duplicates("image_path", keep="last")
    table["flagged"] = table["flagged"].astype(str).str.lower() == "true"
    table = table.sort_values(["score", "image_path"], ascending=[False, True]).reset_index(drop=True)
    flagged = table[table["flagged"]].reset_index(drop=True)
    atomic_write_csv(day_dir / "scores.csv", table)
    atomic_write_csv(day_dir / "flagged.csv", flagged)
    return table, flagged
