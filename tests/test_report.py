import pandas as pd
import torch

from pipeline.regions import strongest_region
from pipeline.report import REPORT_COLUMNS, heatmap_overlay, write_report


def _rows(scores, version="1"):
    return pd.DataFrame([dict(image_path=f"img{i}.png", crop_id=f"c{i}", panel_id=f"p{i}", score=s, threshold=1.0,
                              flagged=s >= 1.0, severity=s, region="0,0,1,1", heatmap_path="", suspected_defect="",
                              suspected_confidence=float("nan"), score_name="blur_max",
                              model_name="panel-anomaly", model_version=version, scored_at="t")
                         for i, s in enumerate(scores)], columns=REPORT_COLUMNS)


def test_flagged_is_sorted_and_above_threshold_and_each_image_once(tmp_path):
    scores, flagged = write_report(tmp_path, pd.concat([_rows([0.5, 3.0, 1.5, 0.9])] * 2))
    assert len(scores) == 4
    on_disk = pd.read_csv(tmp_path / "flagged.csv")
    assert list(on_disk["image_path"]) == ["img1.png", "img2.png"]
    assert (on_disk["score"] >= on_disk["threshold"]).all()
    assert list(on_disk.columns) == REPORT_COLUMNS
    assert not list(tmp_path.glob(".*tmp"))


def test_strongest_region_maps_back_to_source_coordinates():
    heat = torch.zeros(64, 64)
    heat[10, 40] = 1.0
    x0, y0, x1, y1 = strongest_region(heat, (100, 50, 228, 178), min_frac=0.125)  # crop scale 2
    assert x0 <= 100 + 2 * 40 <= x1 and y0 <= 50 + 2 * 10 <= y1
    assert (x1 - x0, y1 - y0) == (18, 18)  # a single hot pixel: the minimum box, 2 x (4 + 1 + 4) px


def test_strongest_region_follows_the_shape_of_the_anomaly():
    heat = torch.rand(64, 64) * 0.1
    heat[30:33, 5:55] = 1.0  # a long horizontal crack
    heat[5:8, 5:8] = 0.9  # a separate, weaker spot: not part of the strongest region
    x0, y0, x1, y1 = strongest_region(heat, (0, 0, 64, 64), min_frac=0.05)
    assert x0 <= 5 and x1 >= 55 and y0 <= 30 and y1 >= 33  # the whole crack ...
    assert y0 > 8 and (x1 - x0) > 5 * (y1 - y0)  # ... shaped like it, without the weaker spot


def test_heatmap_overlay_is_rgb_uint8():
    image = heatmap_overlay(torch.zeros(1, 32, 32, dtype=torch.uint8), torch.rand(32, 32), (2, 2, 8, 8))
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8


def test_a_later_row_for_the_same_image_replaces_the_earlier(tmp_path):
    scores, _ = write_report(tmp_path, pd.concat([_rows([0.5, 3.0], version="1"), _rows([0.4, 2.0], version="2")]))
    assert len(scores) == 2 and set(scores["model_version"].astype(str)) == {"2"}
