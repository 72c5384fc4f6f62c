from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from pipeline.config import IngestConfig
from pipeline.ingest import prepare
from pipeline.synth import generate, label_plan
from tests.conftest import tree_digest


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path):
    generate(tmp_path / "a", n=12, seed=5)
    generate(tmp_path / "b", n=12, seed=5)
    generate(tmp_path / "c", n=12, seed=6)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    a, c = tree_digest(tmp_path / "a"), tree_digest(tmp_path / "c")
    assert a["frame_005_00000.png"] != c.get("frame_006_00000.png")


def test_labels_are_balanced_and_boxes_recorded(synth_raw: Path):
    labels = pd.read_csv(synth_raw / "labels.csv")
    counts = labels["label"].value_counts().to_dict()
    assert counts == {"ok": 84, "crack": 18, "loose_connector": 18}
    assert labels["panel_id"].is_unique
    panels = pd.read_csv(synth_raw / "panels.csv", keep_default_na=False)
    assert (panels["defect_box"] != "").sum() == 36  # every defect has its true box
    for box in panels["panel_box"]:
        x0, y0, x1, y1 = map(int, box.split(","))
        assert 0 <= x0 < x1 <= 256 and 0 <= y0 < y1 <= 256


def test_label_plan_is_exact_for_any_size():
    for n in (10, 33, 600):
        plan = label_plan(n, np.random.default_rng(0))
        assert len(plan) == n and plan.count("crack") + plan.count("loose_connector") == round(0.3 * n)


def test_defects_are_subtle_for_mean_intensity(synth_raw: Path):
    """A trivial score (mean intensity of the crop) must stay below 0.75 ROC-AUC."""
    labels = pd.read_csv(synth_raw / "labels.csv")
    means = np.array([prepare(synth_raw / p, IngestConfig())[0].pixels.float().mean().item() for p in labels["path"]])
    y = labels["label"].ne("ok").to_numpy()
    auc = roc_auc_score(y, means)
    assert max(auc, 1 - auc) < 0.75
