import pandas as pd
import torch

from pipeline.report import REPORT_COLUMNS, heatmap_overlay, merge_report
from pipeline.scoring import strongest_region


def _rows(scores, version="1"):
    return pd.DataFrame([dict(image_path=f"img{i}.png", crop_id=f"c{i}", panel_id=f"p{i}", score=s, threshold=1.0,
                              flagged=s >= 1.0, severity=s, region="0,0,1,1", heatmap_path="", score_name="blur_max",
                              model_name="panel-anomaly", model_version=version, scored_at="t")
                         for i, s in enumerate(scores)], columns=REPORT_COLUMNS)


def test_flagged_is_sorted_and_above_threshold_and_reruns_do_not_duplicate(tmp_path):
    merge_report(tmp_path, _rows([0.5, 3.0, 1.5, 0.9]))
    scores, flagged = merge_report(tmp_path, _rows([0.5, 3.0, 1.5, 0.9]))
    assert len(scores) == 4
    on_disk = pd.read_csv(tmp_path / "flagged.csv")
    assert list(on_disk["image_path"]) == ["img1.png", "img2.png"]
    assert (on_disk["score"] >= on_disk["threshold"]).all()
    assert list(on_disk.columns) == REPORT_COLUMNS
    assert not list(tmp_path.glob(".*tmp"))


def test_strongest_region_maps_back_to_source_coordinates():
    heat = torch.zeros(64, 64)
    heat[10, 40] = 1.0
    x0, y0, x1, y1 = strongest_region(heat, (100, 50, 228, 178), size_frac=0.125)  # crop scale 2
    assert x0 <= 100 + 2 * 40 <= x1 and y0 <= 50 + 2 * 10 <= y1


def test_heatmap_overlay_is_rgb_uint8():
    image = heatmap_overlay(torch.zeros(1, 32, 32, dtype=torch.uint8), torch.rand(32, 32), (2, 2, 8, 8))
    assert image.shape == (3, 32, 32) and image.dtype == torch.uint8


def test_rescoring_with_a_new_model_replaces_rows(tmp_path):
    merge_report(tmp_path, _rows([0.5, 3.0], version="1"))
    scores, _ = merge_report(tmp_path, _rows([0.4, 2.0], version="2"))
    assert len(scores) == 2 and set(scores["model_version"].astype(str)) == {"2"}
