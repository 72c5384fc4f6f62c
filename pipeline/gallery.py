"""The inspector's gallery: data/reports/<date>/index.html. Every flagged image (and, behind a
filter, the unflagged ones nearest the threshold) with its crop and heatmap side by side, large
on click, sortable, with review controls whose decisions stay in the browser and export as
review-<date>.csv (pipeline/gallery_review.js). One file that opens from disk, no server."""

from __future__ import annotations

import os
from html import escape
from importlib.resources import files
from pathlib import Path
from urllib.parse import quote

import pandas as pd

from pipeline.files import atomic_write_text
from pipeline.report import crop_image_path

NEAR_SHOWN = 50  # most unflagged near-threshold images the filter offers, highest score first
BROWSER_FORMATS = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp"}  # a source file a browser shows
REVIEW_BUTTONS = (("crack", "crack", "1"), ("loose_connector", "loose connector", "2"), ("other", "other defect", "3"),
                  ("false_alarm", "false alarm", "f"), ("unsure", "unsure", "u"))
STYLE = """
body { font-family: sans-serif; margin: 1.5em; } table { border-collapse: collapse; }
td, th { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: middle; }
th[data-key] { cursor: pointer; text-decoration: underline dotted; }
img { image-rendering: pixelated; }
button.view { display: flex; gap: 4px; padding: 0; border: 0; background: none; cursor: zoom-in; }
tr.near { display: none; background: #f6f6f6; } body.show-near tr.near { display: table-row; }
tr.current { outline: 2px solid #0b6efd; } tr.reviewed td.path { font-weight: bold; }
button[aria-pressed="true"] { background: #0b6efd; color: white; }
dialog img { width: min(45vw, 640px); } dialog figure { display: flex; gap: 1em; flex-wrap: wrap; margin: 0; }
.warning { background: #fff3cd; border: 1px solid #e0a800; padding: 0.6em; }
"""


def source_href(image_path: str, raw: Path | None, day_dir: Path) -> str:
    """A relative link from the gallery to the original file, when a browser can show its format."""
    if raw is None or Path(image_path).suffix.lower() not in BROWSER_FORMATS:
        return ""
    relative = Path(os.path.relpath(Path(raw) / image_path, Path(day_dir))).as_posix()
    return quote(relative if relative.startswith("../") else f"./{relative}")  # never read as a URL scheme


def _row(r, near: bool, raw: Path | None, day_dir: Path) -> str:
    suspected = "" if not r.suspected_defect or r.suspected_defect != r.suspected_defect else (
        f"{escape(str(r.suspected_defect))} ({float(r.suspected_confidence):.0%})")
    crop, heat = quote(crop_image_path(r.heatmap_path)), quote(r.heatmap_path)
    buttons = "".join(f'<button type="button" data-label="{label}" aria-pressed="false" title="key {key}">{text}</button>'
                      for label, text, key in REVIEW_BUTTONS)
    return (f'<tr class="{"near" if near else "flagged"}" data-image="{escape(r.image_path)}" data-score="{r.score:.6g}" '
            f'data-severity="{r.severity:.6g}" data-crop="{crop}" data-heatmap="{heat}" '
            f'data-source="{source_href(r.image_path, raw, day_dir)}">'
            f'<td><button type="button" class="view" title="enlarge (Enter)"><img src="{crop}" alt="crop of '
            f'{escape(r.image_path)}" width="128" height="128"> <img src="{heat}" alt="heatmap of '
            f'{escape(r.image_path)}" width="128" height="128"></button></td>'
            f'<td class="path">{escape(r.image_path)}</td><td>{r.score:.4g}</td><td>{r.severity:.2f}</td>'
            f"<td>{escape(str(r.region))}</td><td>{suspected}</td>"
            f'<td>{buttons} <input class="note" type="text" placeholder="note" aria-label="note"></td></tr>')


def write_gallery(day_dir: Path, scores: pd.DataFrame, title: str, warning: str = "", raw: Path | None = None,
                  date: str = "") -> Path:
    """day_dir/index.html: the flagged images, highest score first, and the near-threshold ones
    behind a filter; raw (the scored folder) links each image to its original file."""
    day_dir = Path(day_dir)
    flagged = scores[scores["flagged"]].sort_values("score", ascending=False)
    near = scores[~scores["flagged"] & (scores["heatmap_path"] != "")].sort_values("score", ascending=False)
    near = near.head(NEAR_SHOWN)
    rows = [_row(r, False, raw, day_dir) for r in flagged.itertuples()]
    rows += [_row(r, True, raw, day_dir) for r in near.itertuples()]
    banner = f'<p class="warning" role="alert">{escape(warning)}</p>' if warning else ""
    keys = ", ".join(f"{key} {text}" for _, text, key in REVIEW_BUTTONS)
    script = files("pipeline").joinpath("gallery_review.js").read_text()
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{escape(title)}</title>
<style>{STYLE}</style>
</head>
<body data-date="{escape(date)}" data-review-key="{escape(title)}">
<h1>{escape(title)}</h1>
{banner}
<p>{len(flagged)} of {len(scores)} images flagged. Click score, severity or image to sort; click a picture to
enlarge it. Review: the buttons, or keys j / k (next / previous), {keys}, Enter (enlarge).</p>
<p><label><input type="checkbox" id="near"> also show the {len(near)} unflagged images nearest the threshold</label>
<button type="button" id="export">Export review CSV</button> <span id="reviewed"></span></p>
<table>
<thead><tr><th>crop and heatmap</th><th data-key="image">image</th><th data-key="score">score</th><th data-key="severity">severity</th><th>region (x0,y0,x1,y1)</th><th>suspected defect</th><th>review</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>
<dialog id="viewer"><figure><img class="crop" alt="crop"><img class="heat" alt="heatmap"></figure>
<figcaption></figcaption><a class="original" target="_blank">open the original file</a>
<form method="dialog"><button>close (Esc)</button></form></dialog>
<script>{script}</script>
</body>
</html>
"""
    return atomic_write_text(day_dir / "index.html", page)
