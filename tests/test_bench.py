"""The benchmark harness on a tiny run: JSON schema, and every method judged on the same images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.bench import BASELINES, BenchDataset, markdown_table, run_bench
from pipeline.scoring import score_names
from tests.conftest import small_config


def test_tiny_bench_has_the_schema_and_identical_test_images_for_every_method(synth_raw: Path, tmp_path: Path):
    groups = {p: ("even" if i % 2 else "odd") for i, p in enumerate(sorted(q.name for q in synth_raw.glob("*.png")))}
    dataset = BenchDataset("tiny", synth_raw, synth_raw / "labels.csv", groups)
    cfg = small_config(epochs=2).replace("ingest", train_frac=0.7).replace("model", codebook_size=32)
    result = json.loads(json.dumps(run_bench([dataset], tmp_path, cfg, log=lambda _: None), default=str))

    assert result["schema_version"] == 1 and {"date", "machine", "config", "datasets", "peak_memory_mb"} <= set(result)
    tiny = result["datasets"]["tiny"]
    methods = tiny["methods"]
    assert set(methods) == {"panelscan_convvae", "panelscan_vqvae", *BASELINES}
    ids = {m["image_ids"] for m in methods.values()}
    assert ids == {tiny["split"]["test_image_ids"]}  # every method judged on the identical test images
    assert len({m["n"] for m in methods.values()}) == 1 and tiny["split"]["test_images"] == methods["pca_recon"]["n"]
    for name, m in methods.items():
        assert 0 <= m["roc_auc"] <= 1 and 0 <= m["pr_auc"] <= 1, name
        assert {"roc_auc_crack", "roc_auc_loose_connector", "roc_auc_even", "roc_auc_odd"} <= set(m), name
    assert methods["panelscan_convvae"]["score"] in score_names("convvae")
    for speed in tiny["speed"].values():
        assert speed["io_floor_images_per_s"] > 0 and speed["end_to_end_images_per_s"] > 0
        assert speed["seconds_per_epoch"] > 0 and np.isfinite(speed["end_to_end_share_of_floor"])
    table = markdown_table(result)
    assert table.count("| tiny |") == len(methods) + 2 and "peak memory" in table


def test_bench_with_families_trains_per_family_and_gives_baselines_the_same_metadata(two_family_raw: Path,
                                                                                    tmp_path: Path):
    dataset = BenchDataset("families", two_family_raw, two_family_raw / "labels.csv")
    cfg = small_config(epochs=2).replace("ingest", crop="none")
    result = run_bench([dataset], tmp_path, cfg, model_types=("convvae",), log=lambda _: None)["datasets"]["families"]
    methods = result["methods"]
    assert methods["panelscan_convvae"]["families"] == ["negative", "plain"]
    assert methods["panelscan_convvae"]["router_val_accuracy"] == methods["panelscan_convvae"]["router_test_accuracy"] == 1.0
    assert set(methods) == {"panelscan_convvae", *BASELINES, *(f"{name}_per_family" for name in BASELINES)}
    assert {m["image_ids"] for m in methods.values()} == {result["split"]["test_image_ids"]}
    assert all(0 <= m["roc_auc"] <= 1 for m in methods.values())
