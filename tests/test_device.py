"""The device path on a machine without a GPU: the registry's program loaded through the same
move-to-device code a GPU uses scores exactly like the in-memory model; --device reaches the
config; asking for CUDA where there is none is one clear line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from flows.cli import build_config, parser
from pipeline.clean_references import fit_error_reference, fit_latent_bank
from pipeline.device import pick_device
from pipeline.errors import UserError
from pipeline.models import build_model, exported
from pipeline.scoring import LATENT_KNN, score_crops
from tests.conftest import small_config


@pytest.mark.parametrize("model_type", ["convvae", "vqvae"])
def test_exported_program_loaded_for_a_device_scores_like_the_module(tmp_path: Path, model_type: str):
    cfg = small_config().replace("model", model_type=model_type, codebook_size=32)
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.ingest.image_size).eval()
    # noise of a different strength per image: images that differ, so there is a ranking to keep
    crops = (torch.rand(70, 1, 64, 64) * torch.linspace(64, 255, 70).view(-1, 1, 1, 1)).to(torch.uint8)
    fit_error_reference(model, crops[:20])
    fit_latent_bank(model, crops[:20])  # as training leaves it: latent_knn ranks images
    path = exported.save(model, torch.rand(2, 1, 64, 64), tmp_path / "model.pt2")
    loaded = exported.load(path, pick_device("cpu"))
    ours, theirs = (score_crops(m, crops, cfg.score, cfg.model) for m in (model, loaded))  # 70: a ragged last batch
    for name in ours.scores:
        np.testing.assert_allclose(theirs.scores[name], ours.scores[name], rtol=1e-4, atol=1e-7, err_msg=name)
    torch.testing.assert_close(theirs.heatmaps, ours.heatmaps, rtol=1e-4, atol=1e-6)
    with torch.autocast("cpu", torch.bfloat16):  # the GPU box scores under bf16 autocast too
        half, half_module = (score_crops(m, crops, cfg.score, cfg.model) for m in (loaded, model))
    for name in ours.scores:
        # Not latent_knn: an untrained model's codes lie ~1e-3 apart, as close as bf16 rounds its encoder
        if name != LATENT_KNN:
            np.testing.assert_allclose(half.scores[name], half_module.scores[name], rtol=1e-4, atol=1e-7, err_msg=name)
        assert np.corrcoef(half.scores[name], ours.scores[name])[0, 1] > 0.9, name  # bf16 ranks images as fp32 does


def test_device_option_reaches_the_score_config_of_every_scoring_command():
    for argv in (["score", "--raw", "x", "--device", "cpu"], ["nightly", "--device", "cpu"],
                 ["calibrate", "--device", "cpu"], ["bench", "--device", "cpu"]):
        assert build_config(parser().parse_args(argv)).score.device == "cpu", argv
    assert build_config(parser().parse_args(["score", "--raw", "x"])).score.device == "auto"
    assert build_config(parser().parse_args(["train", "--compile"])).train.compile is True
    assert build_config(parser().parse_args(["train", "--no-compile"])).train.compile is False
    assert build_config(parser().parse_args(["train"])).train.compile is False


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_a_gpu_is_one_clear_line():
    assert pick_device("auto").type == "cpu"
    with pytest.raises(UserError, match="--device cuda requested but no CUDA device is available"):
        pick_device("cuda")


def test_the_gpu_batch_grows_with_the_set_and_the_cpu_batch_never_changes():
    from pipeline.batching import device_batch
    from pipeline.config import TrainConfig

    tc = TrainConfig()
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert device_batch(tc, 12_926, cpu) == (16, tc.lr)  # CPU: as configured, whatever the set
    assert device_batch(tc, 244, cuda) == (16, tc.lr)  # a small set trains exactly as on a CPU
    batch, lr = device_batch(tc, 12_926, cuda)
    assert batch == 256 and abs(lr - tc.lr * 4) < 1e-12  # sqrt(256 / 16) = 4
    assert device_batch(tc, 3_200, cuda)[0] == 100  # at least 32 steps an epoch
