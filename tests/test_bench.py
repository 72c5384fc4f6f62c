"""The benchmark harness on a tiny run: JSON schema, and every method judged on the same images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from pipeline import bench_sets
from pipeline.bench import BASELINES, run_bench, run_splits
from pipeline.bench_sets import BenchDataset, shared_datasets
from pipeline.bench_tables import markdown_table
from pipeline.errors import UserError
from pipeline.scoring import score_names
from tests.conftest import small_config

pytestmark = pytest.mark.usefixtures("small_patchcore")


def _box_masks(raw: Path, out: Path) -> dict[str, Path]:
    """A mask per defect frame: white over the true defect box the generator recorded."""
    masks = {}
    for row in pd.read_csv(raw / "panels.csv", dtype=str, keep_default_na=False).itertuples():
        if row.defect_box:
            x0, y0, x1, y1 = map(int, row.defect_box.split(","))
            width, height = Image.open(raw / row.path).size
            mask = np.zeros((height, width), dtype=np.uint8)
            mask[y0:y1, x0:x1] = 255
            Image.fromarray(mask).save(out / row.path)
            masks[row.path] = out / row.path
    return masks


def test_tiny_bench_has_the_schema_and_identical_test_images_for_every_method(synth_raw: Path, tmp_path: Path):
    groups = {p: ("even" if i % 2 else "odd") for i, p in enumerate(sorted(q.name for q in synth_raw.glob("*.png")))}
    (tmp_path / "masks").mkdir()
    dataset = BenchDataset("tiny", synth_raw, synth_raw / "labels.csv", groups, _box_masks(synth_raw, tmp_path / "masks"))
    cfg = small_config(epochs=2).replace("ingest", train_frac=0.7).replace("model", codebook_size=32)
    said: list[str] = []
    result = json.loads(json.dumps(run_bench([dataset], tmp_path, cfg, log=said.append), default=str))
    for model_type in ("convvae", "vqvae"):  # hours of training on a CPU say how far they are
        assert any(line.startswith(f"[tiny] {model_type}: trained 2 epochs") for line in said), said

    assert result["schema_version"] == 2
    assert {"date", "machine", "config", "datasets", "peak_memory_mb", "summary"} <= set(result)
    tiny = result["datasets"]["tiny"]
    methods = tiny["methods"]
    assert set(methods) == {"panelscan_convvae", "panelscan_vqvae", *BASELINES}
    ids = {m["image_ids"] for m in methods.values()}
    assert ids == {tiny["split"]["test_image_ids"]}  # every method judged on the identical test images
    assert len({m["n"] for m in methods.values()}) == 1 and tiny["split"]["test_images"] == methods["pca_recon"]["n"]
    for name, m in methods.items():
        assert 0 <= m["roc_auc"] <= 1 and 0 <= m["pr_auc"] <= 1, name
        assert {"roc_auc_crack", "roc_auc_loose_connector", "roc_auc_even", "roc_auc_odd"} <= set(m), name
        assert m["roc_auc_ci_low"] <= m["roc_auc"] <= m["roc_auc_ci_high"], name
    for name in ("panelscan_convvae", "panelscan_vqvae"):  # localisation where masks exist: models have maps
        assert 0 <= methods[name]["pixel_roc_auc"] <= 1 and 0 < methods[name]["pixel_defect_share"] < 1
    assert "pixel_roc_auc" not in methods["pca_recon"]
    for name in ("panelscan_convvae", "panelscan_vqvae"):  # the self-supervised check beside the labelled val
        assert 0 <= methods[name]["val_synthetic_auc"] <= 1 and 0 <= methods[name]["val_roc_auc"] <= 1
    # the one set here is not the synthetic one by name, so it is the summary's only real set
    assert result["summary"]["pca_recon"] == {"mean_roc_auc": methods["pca_recon"]["roc_auc"],
                                              "min_roc_auc": methods["pca_recon"]["roc_auc"], "sets": 1}
    for name in ("panelscan_convvae", "panelscan_vqvae"):  # no families here: one score decides
        assert methods[name]["score"] in score_names(name.removeprefix("panelscan_"))
    for name in ("panelscan_convvae", "panelscan_vqvae"):  # every candidate's test figure, the chosen one's = the row's
        chosen = methods[name]["candidates"][methods[name]["score"]]
        assert chosen["test_roc_auc"] == pytest.approx(methods[name]["roc_auc"])
    for speed in tiny["speed"].values():
        assert speed["io_floor_images_per_s"] > 0 and speed["end_to_end_images_per_s"] > 0
        assert speed["seconds_per_epoch"] > 0 and np.isfinite(speed["end_to_end_share_of_floor"])
    table = markdown_table(result)
    assert table.count("| tiny |") == len(methods) + 2 and "peak memory" in table
    assert table.count("**mean of 1 real sets**") == len(methods)


@pytest.mark.slow  # end to end: make test runs it, the quick loop leaves it out
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
    chosen = methods["panelscan_convvae"]["score"]  # one score or each family's, its row among the candidates
    assert methods["panelscan_convvae"]["candidates"][chosen]["test_roc_auc"] == pytest.approx(
        methods["panelscan_convvae"]["roc_auc"])


def test_shared_sets_are_found_with_their_masks(tmp_path: Path):
    (tmp_path / "boards" / "a").mkdir(parents=True)
    (tmp_path / "boards" / "labels.csv").write_text("path,label\na/1.png,crack\n")
    (tmp_path / "masks" / "boards").mkdir(parents=True)
    (tmp_path / "masks" / "boards" / "masks.csv").write_text("path,mask\na/1.png,a/1.png\n")
    (tmp_path / "notes").mkdir()  # no labels.csv: not a data set
    found = shared_datasets(tmp_path)
    assert [d.name for d in found] == ["boards"] and found[0].masks == {"a/1.png": tmp_path / "masks" / "boards" / "a" / "1.png"}
    assert shared_datasets(tmp_path / "missing") == []


def test_full_bench_without_the_elpv_package_runs_the_other_sets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A GPU box or a user's machine without `make elpv`: ELPV is skipped, not an error."""
    (tmp_path / "shared" / "boards").mkdir(parents=True)
    (tmp_path / "shared" / "boards" / "labels.csv").write_text("path,label\n")
    monkeypatch.setattr(bench_sets, "elpv_installed", lambda: False)
    (tmp_path / "out" / "synth-600").mkdir(parents=True)  # generated by an earlier run: kept, not made again
    (tmp_path / "out" / "synth-600" / "labels.csv").write_text("path,label\n")
    found = bench_sets.bench_datasets(tmp_path / "out", quick=False, shared=tmp_path / "shared")
    assert [d.name for d in found] == ["synthetic", "boards"]
    assert (tmp_path / "out" / "synth-600" / "labels.csv").read_text() == "path,label\n"


def test_bench_runs_only_the_named_sets_and_a_wrong_name_lists_the_sets_there_are(tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch):
    """`--sets plates`: the other sets are neither generated nor trained; a typo is a user error."""
    for name in ("boards", "plates"):
        (tmp_path / "shared" / name).mkdir(parents=True)
        (tmp_path / "shared" / name / "labels.csv").write_text("path,label\n")
    monkeypatch.setattr(bench_sets, "elpv_installed", lambda: False)
    found = bench_sets.bench_datasets(tmp_path / "out", quick=False, shared=tmp_path / "shared", sets=("plates",))
    assert [d.name for d in found] == ["plates"]
    assert not (tmp_path / "out" / "synth-600").exists()
    with pytest.raises(UserError, match="no data set named elpv, plate in this run; it has synthetic, boards, plates"):
        bench_sets.bench_datasets(tmp_path / "out", quick=False, shared=tmp_path / "shared", sets=("elpv", "plate"))


def test_pixel_roc_auc_reads_masks_either_way_round(tmp_path: Path):
    """A map that is high exactly on the defect scores 1 whether the mask marks the defect white on
    black or (as PIPED's masks do) black on white; clean images count with empty masks."""
    from pipeline.localisation import pixel_roc_auc

    truth = np.zeros((64, 64), dtype=np.uint8)
    truth[20:30, 10:40] = 255
    Image.fromarray(truth).save(tmp_path / "white.png")
    Image.fromarray(255 - truth).save(tmp_path / "black.png")
    rows = pd.DataFrame({"source_path": ["a.png", "b.png", "c.png"], "source_sha256": ["a", "b", "c"],
                         "bbox": ["0,0,64,64"] * 3, "label": ["crack", "crack", "ok"]})
    heat = torch.zeros(3, 64, 64)
    heat[:2, 20:30, 10:40] = 1.0
    result = pixel_roc_auc(heat, rows, {"a.png": tmp_path / "white.png", "b.png": tmp_path / "black.png"})
    assert result["pixel_roc_auc"] == 1.0 and result["pixel_images"] == 3


@pytest.mark.slow  # end to end: make test runs it, the quick loop leaves it out
def test_bench_over_split_seeds_reports_each_split_and_their_mean(synth_raw: Path, tmp_path: Path):
    """One headline split can be luck: with several split seeds each set is split anew per seed
    (other test images), every method still sees identical test images within a split, and the
    mean over the seeds is what the extra table shows."""
    dataset = BenchDataset("tiny", synth_raw, synth_raw / "labels.csv")
    cfg = small_config(epochs=1).replace("ingest", train_frac=0.7)
    result = run_splits([dataset], tmp_path, cfg, ("convvae",), (0, 3), log=lambda _: None)
    result = json.loads(json.dumps(result, default=str))
    over = result["over_splits"]
    first, other = result["datasets"]["tiny"], over["runs"]["3"]["datasets"]["tiny"]
    assert over["seeds"] == [0, 3] and result["config"]["ingest"]["split_seed"] == 0
    assert first["split"]["test_image_ids"] != other["split"]["test_image_ids"]  # a new split
    for run in (first, other):
        assert {m["image_ids"] for m in run["methods"].values()} == {run["split"]["test_image_ids"]}
    for method, t in over["methods"].items():
        pair = [first["methods"][method]["roc_auc"], other["methods"][method]["roc_auc"]]
        assert t["roc_auc"]["tiny"] == pair and t["mean_roc_auc"]["tiny"] == pytest.approx(np.mean(pair))
        assert t["real_sets_per_split"] == pair and t["real_sets_mean"] == pytest.approx(np.mean(pair))
    table = markdown_table(result)
    assert "Over split seeds 0, 3 (" in table
    ours = over["methods"]["panelscan_convvae"]
    assert f"| panelscan_convvae | {ours['mean_roc_auc']['tiny']:.3f} (" in table
    assert f"| {ours['real_sets_mean']:.3f} |" in table


@pytest.mark.slow  # end to end: make test runs it, the quick loop leaves it out
def test_bench_over_training_seeds_trains_each_seed_on_the_same_split(synth_raw: Path, tmp_path: Path):
    """One training can be luck too: with training seeds, each split is ingested once and trained
    once per seed (identical test images, other weights), and the mean is over every run."""
    dataset = BenchDataset("tiny", synth_raw, synth_raw / "labels.csv")
    cfg = small_config(epochs=1).replace("ingest", train_frac=0.7)
    result = run_splits([dataset], tmp_path, cfg, ("convvae",), (0,), log=lambda _: None, train_seeds=(0, 5))
    result = json.loads(json.dumps(result, default=str))
    over = result["over_splits"]
    first, other = result["datasets"]["tiny"], over["runs"]["0-5"]["datasets"]["tiny"]
    assert (over["seeds"], over["train_seeds"]) == ([0, 0], [0, 5]) and result["config"]["train"]["seed"] == 0
    assert first["split"]["test_image_ids"] == other["split"]["test_image_ids"]  # the same split
    assert not (tmp_path / "split-0").exists()  # ingested once, in the first run's workdir
    ours = [first["methods"]["panelscan_convvae"], other["methods"]["panelscan_convvae"]]
    assert ours[0]["candidates"] != ours[1]["candidates"]  # other weights, other scores
    pair = [m["roc_auc"] for m in ours]
    assert over["methods"]["panelscan_convvae"]["roc_auc"]["tiny"] == pair
    assert over["methods"]["pca_recon"]["roc_auc"]["tiny"][0] == over["methods"]["pca_recon"]["roc_auc"]["tiny"][1]
    assert "Over split seeds 0 × training seeds 0, 5 (" in markdown_table(result)
