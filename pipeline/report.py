"""Inspector reports: data/reports/<date>/scores.csv (every image) and flagged.csv (flagged only,
highest score first), plus heatmap overlays. Rebuilt from the scoring ledger on every run, so
re-runs never duplicate an image."""

from __future__ import annotations

from html import escape
from pathlib import Path

import pandas as pd
import torch
from torchvision.utils import draw_bounding_boxes

from pipeline.files import atomic_write_csv, atomic_write_text
from pipeline.images import to_uint8, write_png

REPORT_COLUMNS = ["image_path", "crop_id", "panel_id", "score", "threshold", "flagged", "severity", "region",
                  "heatmap_path", "suspected_defect", "suspected_confidence", "score_name", "family", "model_name",
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


GALLERY_SCRIPT = """
for (const th of document.querySelectorAll("th[data-key]")) {
  th.addEventListener("click", () => {
    const body = document.querySelector("tbody"), key = th.dataset.key;
    const down = th.dataset.order !== "desc";
    th.dataset.order = down ? "desc" : "asc";
    const value = (row) => { const v = row.dataset[key]; return isNaN(v) ? v : Number(v); };
    [...body.rows].sort((a, b) => (value(a) > value(b) ? 1 : -1) * (down ? -1 : 1)).forEach((r) => body.append(r));
  });
}
"""


def write_gallery(day_dir: Path, scores: pd.DataFrame, title: str, warning: str = "") -> Path:
    """day_dir/index.html: every flagged image with its heatmap overlay, highest score first,
    sortable by clicking a column; plain HTML + a few lines of script, opens from disk."""
    flagged = scores[scores["flagged"]].sort_values("score", ascending=False)
    rows = []
    for r in flagged.itertuples():
        suspected = "" if not r.suspected_defect or r.suspected_defect != r.suspected_defect else (
            f"{escape(str(r.suspected_defect))} ({float(r.suspected_confidence):.0%})")
        rows.append(
            f'<tr data-score="{r.score:.6g}" data-severity="{r.severity:.6g}" data-image="{escape(r.image_path)}">'
            f'<td><a href="{escape(r.heatmap_path)}"><img src="{escape(r.heatmap_path)}" alt="heatmap of '
            f'{escape(r.image_path)}" width="160" height="160"></a></td><td>{escape(r.image_path)}</td>'
            f"<td>{r.score:.4g}</td><td>{r.severity:.2f}</td><td>{escape(str(r.region))}</td><td>{suspected}</td></tr>")
    banner = f'<p class="warning" role="alert">{escape(warning)}</p>' if warning else ""
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }} table {{ border-collapse: collapse; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; }}
th[data-key] {{ cursor: pointer; text-decoration: underline dotted; }}
.warning {{ background: #fff3cd; border: 1px solid #e0a800; padding: 0.6em; }}
</style>
</head>
<body>
<h1>{escape(title)}</h1>
{banner}
<p>{len(flagged)} of {len(scores)} images flagged. Click score, severity or image to sort.</p>
<table>
<thead><tr><th>heatmap</th><th data-key="image">image</th><th data-key="score">score</th><th data-key="severity">severity</th><th>region (x0,y0,x1,y1)</th><th>suspected defect</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>
<script>{GALLERY_SCRIPT}</script>
</body>
</html>
"""
    return atomic_write_text(Path(day_dir) / "index.html", page)
