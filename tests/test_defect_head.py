"""The defect head: it learns where pasted defects are, and travels with the model to the registry."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from pipeline import tracking
from pipeline.defect_head import WithHead, focal_loss, train_head
from pipeline.models import ModelOutput
from pipeline.scoring import COMBINED, HEAD_SCORES, score_crops, score_names
from pipeline.selfcheck import pasted_copies, synthetic_check
from pipeline.training import train_model
from tests.conftest import small_config


def _striped_panels(n: int, size: int = 64) -> torch.Tensor:
    """A brushed-metal-like surface: fine stripes at a random phase, a little noise."""
    g = torch.Generator().manual_seed(0)
    x = torch.arange(size, dtype=torch.float32)
    phase = torch.rand(n, 1, 1, 1, generator=g) * 6.28
    stripes = 0.5 + 0.2 * torch.sin(x[None, None, :, None] * 0.9 + phase) + 0.03 * torch.randn(n, 1, size, size, generator=g)
    return (stripes.expand(n, 1, size, size).clamp(0, 1) * 255).round().to(torch.uint8)


def test_focal_loss_discounts_what_is_already_right():
    target = torch.tensor([[1.0, 0.0]])
    confident, unsure = torch.tensor([[4.0, -4.0]]), torch.tensor([[0.5, -0.5]])
    assert focal_loss(confident, target) < 0.01 * focal_loss(unsure, target)
    assert focal_loss(unsure, target) < torch.nn.functional.binary_cross_entropy_with_logits(unsure, target)


@pytest.fixture(scope="module")
def headed():
    data = _striped_panels(160)
    cfg = small_config(epochs=2, select_by="recon").replace("model", head_steps=200, head_width=8, head_lr=3e-3)
    model = train_model(data[:96], data[96:128], cfg, progress=False).model
    with_head, seconds = train_head(model, data[:96], cfg, progress=False)
    return with_head, data[128:], cfg, seconds


def test_the_head_finds_pasted_defects_the_reconstruction_error_misses(headed):
    model, held_out, cfg, seconds = headed
    aucs = synthetic_check(model, held_out, pasted_copies(held_out, seed=5), cfg)
    assert set(HEAD_SCORES) <= set(aucs) and seconds > 0
    assert aucs["head_blur_max"] > 0.8 and aucs["head_blur_max"] > aucs["blur_max"] + 0.1


def test_a_model_with_a_head_scores_the_same_from_the_registry(headed):
    model, held_out, cfg, _ = headed
    assert isinstance(model, WithHead)
    tracking.configure(cfg.tracking)
    with tracking.train_run(cfg, "data", 96, 32):
        version = tracking.log_model(model, held_out[:2].float() / 255, cfg)
    loaded = tracking.load_model(cfg.tracking.model_name, version)
    before, after = score_crops(model, held_out, cfg.score, cfg.model), score_crops(loaded, held_out, cfg.score, cfg.model)
    assert set(before.scores) == set(score_names("convvae", head=True)) - set(COMBINED)
    for name in before.scores:
        assert after.scores[name] == pytest.approx(before.scores[name], rel=1e-4, abs=1e-6), name
    assert torch.allclose(after.heatmaps, before.heatmaps, atol=1e-5)
    assert torch.allclose(after.head_maps, before.head_maps, atol=1e-5)
    # Scoring whose chosen score does not read the head loads the version without it: the same
    # other scores and maps, no head output, and none of the head's convolutions left to run.
    headless = tracking.load_model(cfg.tracking.model_name, version, head=False)
    assert ModelOutput.of(headless(held_out[:2].float() / 255)).anomaly_map is None
    def convolutions(module):
        return sum(node.target == torch.ops.aten.conv2d.default for node in module.graph.nodes)
    assert convolutions(headless) < convolutions(loaded) and convolutions(headless) > 0
    pruned = score_crops(headless, held_out, cfg.score, cfg.model)
    assert set(pruned.scores) == set(before.scores) - set(HEAD_SCORES) and pruned.head_maps is None
    for name in pruned.scores:
        assert pruned.scores[name] == pytest.approx(after.scores[name], rel=1e-5, abs=1e-7), name
    assert torch.equal(pruned.heatmaps, after.heatmaps)


def test_the_heatmap_follows_the_chosen_score_the_head_map_only_for_a_head_score(headed):
    model, held_out, cfg, _ = headed
    score_cfg = replace(cfg.score, blur_sigma=cfg.score.heatmap_sigma)  # the map blurred as its score
    with_head, without = (score_crops(m, held_out, score_cfg, cfg.model) for m in (model, model.model))
    assert torch.allclose(with_head.maps("norm_blur_max"), without.heatmaps)  # a head leaves the error map alone
    head_map = with_head.maps("head_blur_max")
    assert not torch.allclose(head_map, without.heatmaps)
    assert torch.allclose(head_map.flatten(1).amax(dim=1).double(),
                          torch.from_numpy(with_head.scores["head_blur_max"]))  # the map whose peak is the score
    picked = with_head.take(np.arange(len(held_out)) % 2 == 0)
    assert torch.equal(picked.maps("head_area_max"), head_map[::2])
