"""Inspector reports: data/reports/<date>/scores.csv (every image) and flagged.csv (flagged only,
highest score first), plus heatmap overlays. Rows are built per scored batch (report_rows, no
files written) and committed to the scoring ledger; the CSVs are rebuilt from the ledger on every
run, so re-runs never duplicate an image."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torchvision.utils import draw_bounding_boxes

from pipeline.calibration import Calibration
from pipeline.defect_type import DefectTypeClassifier, error_features
from pipeline.files import atomic_write_csv
from pipeline.images import to_float, to_uint8, write_png
from pipeline.ingest import Crop
from pipeline.regions import box_in_source, peak_region
from pipeline.scoring import ScoredBatch, scaled_scores, worst_crop

REPORT_COLUMNS = ["image_path", "crop_id", "panel_id", "score", "threshold", "flagged", "severity", "region",
                  "heatmap_path", "suspected_defect", "suspected_confidence", "score_name", "family", "model_name",
                  "model_version", "scored_at"]


def heatmap_overlay(crop: torch.Tensor, heat: torch.Tensor, region: tuple[int, int, int, int] | None) -> torch.Tensor:
    """uint8 RGB (3, S, S): the grayscale crop with the anomaly map in red and its strongest box."""
    gray = to_float(crop)
    level = (heat / heat.max().clamp_min(1e-12)).unsqueeze(0)
    rgb = torch.cat([gray * (1 - level) + level, gray * (1 - level), gray * (1 - level)])
    image = to_uint8(rgb)
    if region is not None:
        image = draw_bounding_boxes(image, torch.tensor([region], dtype=torch.float), colors="yellow", width=1)
    return image


# Unflagged images scoring at least this share of the threshold get a heatmap too: the gallery
# offers them for review (the ones most worth a look besides the flagged).
NEAR_THRESHOLD = 0.9


def crop_image_path(heatmap_path: str) -> str:
    """The crop as the model saw it, beside its overlay: heatmaps/<id>.png -> heatmaps/<id>.crop.png."""
    return heatmap_path.removesuffix(".png") + ".crop.png"


@dataclass(frozen=True)
class Heatmap:
    """A flagged or near-threshold image's overlay, to be written under the day's report folder."""

    path: str  # relative to the day's folder: heatmaps/<crop id>.png
    crop: torch.Tensor  # uint8 (1, S, S)
    heat: torch.Tensor  # (S, S) anomaly map
    region: tuple[int, int, int, int]  # strongest box in crop pixels


def write_heatmaps(day_dir: Path, heatmaps: list[Heatmap]) -> None:
    """Each image's overlay and its plain crop (what the gallery shows side by side)."""
    for h in heatmaps:
        write_png(Path(day_dir) / crop_image_path(h.path), h.crop)
        write_png(Path(day_dir) / h.path, heatmap_overlay(h.crop, h.heat, h.region))


def report_rows(crops: list[Crop], scored: ScoredBatch, calibration: Calibration, raw: Path,
                region_size_frac: float) -> tuple[list[dict], list[Heatmap]]:
    """One row per image, from its highest-scoring crop (tile): score, region, heatmap path and, for
    flagged images, the suspected defect type (when calibration had labelled defects); and the
    heatmaps of the flagged and near-threshold images (NEAR_THRESHOLD)."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    choice = calibration.choice  # one score, or one per family
    values = choice.values(scaled_scores(scored.scores, scored.family, calibration.score_scale), scored.family)
    worst = worst_crop(values, [crop.source_sha256 for crop in crops])
    flagged = values[worst] >= calibration.threshold
    near = flagged | (values[worst] >= NEAR_THRESHOLD * calibration.threshold)
    maps, names = choice.maps(scored), choice.names(scored.family)  # where each crop's deciding score looks
    suspected, confidence = _suspected_types(calibration, maps, worst[flagged])
    rows, heatmaps = [], []
    for n, i in enumerate(worst):
        crop, score, heat = crops[i], values[i], maps[i]
        heatmap_path, region = "", peak_region(heat, region_size_frac)
        if near[n]:
            heatmap_path = f"heatmaps/{crop.crop_id[:16]}.png"
            heatmaps.append(Heatmap(heatmap_path, crop.pixels, heat, region))
        image_path = crop.source_path.relative_to(raw)
        rows.append(dict(image_path=image_path.as_posix(), crop_id=crop.crop_id, source_sha256=crop.source_sha256,
                         panel_id=str(image_path.with_suffix("")), score=float(score),
                         threshold=calibration.threshold, flagged=bool(flagged[n]),
                         severity=float(score / calibration.threshold) if calibration.threshold else float("inf"),
                         region=",".join(map(str, box_in_source(region, crop.bbox, heat.shape))),
                         heatmap_path=heatmap_path, suspected_defect=suspected.get(i, ""),
                         suspected_confidence=confidence.get(i, float("nan")), score_name=names[i],
                         family=calibration.families[scored.family[i]] if calibration.families else "",
                         model_name=calibration.model_name, model_version=calibration.model_version, scored_at=now))
    return rows, heatmaps


def _suspected_types(calibration: Calibration, heatmaps: torch.Tensor,
                     crops: np.ndarray) -> tuple[dict[int, str], dict[int, float]]:
    """The defect type the calibration's classifier suspects for these crops (flagged ones), and
    its probability, by crop position; empty without a classifier. One call for the whole batch."""
    classifier = DefectTypeClassifier.from_dict(calibration.defect_classifier)
    if classifier is None or len(crops) == 0:
        return {}, {}
    kinds, probabilities = classifier.predict(error_features(heatmaps[torch.from_numpy(crops)]))
    return ({int(i): str(k) for i, k in zip(crops, kinds)},
            {int(i): float(p) for i, p in zip(crops, probabilities)})


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what Excel and LibreOffice read as the start of a formula


def spreadsheet_safe(table: pd.DataFrame) -> pd.DataFrame:
    """Text cells that a spreadsheet would run as a formula (a file named "=HYPERLINK(...).png")
    get a leading apostrophe, the OWASP advice for CSV injection; numbers are left as they are."""
    def neutralise(column: pd.Series) -> pd.Series:
        if not (pd.api.types.is_object_dtype(column) or pd.api.types.is_string_dtype(column)):
            return column
        return column.map(lambda v: f"'{v}" if isinstance(v, str) and v.startswith(FORMULA_STARTS) else v)
    return table.apply(neutralise)


def write_report(day_dir: Path, rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write day_dir/scores.csv (every image once: the latest row per image path wins) and
    flagged.csv (flagged only, highest score first), both atomically and safe to open in a
    spreadsheet. Returns (scores, flagged) as they are, for the gallery and drift check."""
    day_dir = Path(day_dir)
    table = pd.DataFrame(rows, columns=REPORT_COLUMNS) if len(rows) else pd.DataFrame(columns=REPORT_COLUMNS)
    table = table[REPORT_COLUMNS].drop_duplicates("image_path", keep="last")
    table["flagged"] = table["flagged"].astype(str).str.lower() == "true"
    table = table.sort_values(["score", "image_path"], ascending=[False, True]).reset_index(drop=True)
    flagged = table[table["flagged"]].reset_index(drop=True)
    atomic_write_csv(day_dir / "scores.csv", spreadsheet_safe(table))
    atomic_write_csv(day_dir / "flagged.csv", spreadsheet_safe(flagged))
    return table, flagged
