"""The speed benchmarks run (their CPU mode) and report what they promise."""

from __future__ import annotations

import json
from pathlib import Path


def test_gpu_benchmark_cpu_mode_measures_both_models_and_agrees_with_the_eager_model(tmp_path: Path):
    import benchmarks.gpu as gpu

    out = tmp_path / "gpu.json"
    gpu.main(["--device", "cpu", "--small", "--precisions", "fp32,bf16", "--out", str(out)])
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [(r["model"], r["size"]) for r in rows] == [("convvae", 32), ("vqvae", 32)]
    for row in rows:
        assert row["device"] == "cpu" and row["train_batch"] == 16  # the CPU keeps its batch size
        assert row["train_crops_per_s"] > 0 and row["end_to_end_images_per_s"] > 0
        assert row["end_to_end_steady_images_per_s"] > 0  # more than one chunk: the pipeline overlapped
        assert row["score_fp32_crops_per_s"] > 0
        assert row["score_bf16_crops_per_s"] > 0 and "score_bf16_error" not in row  # both models run under bf16
        assert row["cpu_vs_device_max_rel_diff"] < 1e-3  # the exported program scores like the module
    assert result["table"].count("\n") == 3 and "| cpu | convvae | 32 |" in result["table"]
