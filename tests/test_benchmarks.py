"""The speed benchmarks run (their CPU mode) and report what they promise."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("small_patchcore")


def test_gpu_benchmark_cpu_mode_measures_both_models_and_agrees_with_the_eager_model(tmp_path: Path):
    import benchmarks.gpu as gpu

    out = tmp_path / "gpu.json"
    gpu.main(["--device", "cpu", "--small", "--sizes", "48", "--precisions", "fp32,bf16", "--out", str(out)])
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [(r["model"], r["size"]) for r in rows] == [("convvae", 48), ("vqvae", 48)]  # --sizes over --small
    for row in rows:
        assert row["device"] == "cpu" and row["train_batch"] == 16  # the CPU keeps its batch size
        assert row["train_crops_per_s"] > 0 and row["end_to_end_images_per_s"] > 0
        assert row["end_to_end_steady_images_per_s"] > 0  # more than one chunk: the pipeline overlapped
        assert row["score_fp32_crops_per_s"] > 0
        assert row["score_bf16_crops_per_s"] > 0 and "score_bf16_error" not in row  # both models run under bf16
        assert row["cpu_vs_device_max_rel_diff"] < 1e-3  # the exported program scores like the module
    assert result["table"].count("\n") == 3 and "| cpu | convvae | 48 |" in result["table"]


@pytest.mark.slow  # end to end: make test runs it, the quick loop leaves it out
def test_gpu_bench_runs_a_config_variant_through_the_bench_and_writes_its_tables(synth_raw: Path, tmp_path: Path,
                                                                             capsys) -> None:
    """The GPU box's quality bench (no MLflow, no Prefect there): a config variant through the bench,
    on a folder of sets as ../shared/datasets (the session's 120 frames, not the 600-frame synthetic set)."""
    import benchmarks.gpu_bench as gpu_bench

    shutil.copytree(synth_raw, tmp_path / "sets" / "tiny")
    tiny = {"ingest": {"image_size": 32}, "model": {"latent_dim": 8, "channels": [8, 16, 16], "head_steps": 0},
            "train": {"epochs": 1, "batch_size": 64, "members": 1}}  # one member: the variant plumbing is under test
    head = tiny | {"model": tiny["model"] | {"head_steps": 2, "head_width": 4}}
    gpu_bench.main(["--variant", f"head={json.dumps(head)}", "--train-seeds", "0,1", "--datasets", str(tmp_path / "sets"),
                    "--sets", "tiny", "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("head tiny: ")]
    assert len(lines) == 1 and " val " in lines[0] and " test " in lines[0] and "best head head_" in lines[0]
    assert "Over split seeds 0 × training seeds 0, 1 (" in out  # the mean over both trainings, on stdout too
    result = json.loads((tmp_path / "out" / "bench-head.json").read_text())
    assert list(result["datasets"]) == ["tiny"] and result["config"]["ingest"]["train_frac"] == 0.7
    assert not (tmp_path / "out" / "synth-600").exists()  # --sets: the synthetic set was not generated
    assert result["config"]["model"]["head_steps"] == 2
    assert "panelscan_convvae" in (tmp_path / "out" / "bench-head.md").read_text()
