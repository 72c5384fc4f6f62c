"""The ELPV adapter on a tiny folder in the set's own format (the real set is for `make elpv`)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.config import IngestConfig
from pipeline.datasets.elpv import write_elpv
from pipeline.ingest import ingest
from pipeline.workspace import load_split
from tests.test_ingest import _png_of


@pytest.fixture()
def fake_elpv(tmp_path: Path) -> Path:
    source = tmp_path / "elpv_source"
    (source / "images").mkdir(parents=True)
    rows = []
    rng = np.random.default_rng(0)
    for i, (prob, kind) in enumerate([(0.0, "mono"), (1.0, "mono"), (1 / 3, "poly"), (2 / 3, "poly"),
                                      (0.0, "poly"), (0.0, "mono")] * 4):
        name = f"images/cell{i:04d}.png"
        (source / name).write_bytes(_png_of((rng.random((300, 300)) * 255).astype(np.uint8)))
        rows.append(f"{name}  {prob!r}  {kind}")
    (source / "labels.csv").write_text("\n".join(rows) + "\n")
    return source


def test_elpv_labels_map_probabilities_and_uncertain_stays_out_of_calibration(fake_elpv: Path, tmp_path: Path):
    out = tmp_path / "raw"
    table = write_elpv(out, source=fake_elpv)
    assert table["label"].value_counts().to_dict() == {"ok": 12, "crack": 8, "uncertain": 4}
    labels = pd.read_csv(out / "labels.csv")
    assert list(labels.columns) == ["path", "label", "panel_id", "family"] and labels["panel_id"].is_unique
    assert labels["family"].value_counts().to_dict() == {"mono": 12, "poly": 12}  # the cell type
    assert (out / "images" / "cell0000.png").read_bytes() == (fake_elpv / "images" / "cell0000.png").read_bytes()
    assert len(write_elpv(tmp_path / "poly", cell_type="poly", source=fake_elpv)) == 12

    result = ingest(out, tmp_path / "work", out / "labels.csv", IngestConfig(image_size=32, crop="none"))
    assert result.n_new == 24 and result.notes == ()  # uncertain is a known label; sidecar elpv.csv skipped
    manifest = pd.read_csv(result.manifest_path, keep_default_na=False)
    assert set(manifest.loc[manifest["label"] == "uncertain", "split"]) == {"unlabelled"}
    assert set(manifest["family"]) == {"mono", "poly"}
    calibration_rows = load_split(result.manifest_path, ["train", "val", "test", "unlabelled"])
    assert "uncertain" not in set(calibration_rows["label"])


def test_a_folder_that_is_not_elpv_gets_a_clear_error(tmp_path: Path):
    (tmp_path / "labels.csv").write_text("path,label\nx.png,ok\n")
    with pytest.raises(ValueError, match="labels.csv: expected rows"):
        write_elpv(tmp_path / "out", source=tmp_path)
