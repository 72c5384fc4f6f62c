"""The inspector's gallery: data/reports/<date>/index.html, every flagged image with its heatmap,
highest score first, sortable; plain HTML and a few lines of script that open from disk."""

from __future__ import annotations

from html import escape
from pathlib import Path

import pandas as pd

from pipeline.files import atomic_write_text

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
