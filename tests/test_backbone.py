"""The pretrained backbone loads from its package (never the network), strictly and frozen; bad
weights are one line; a feature-space VAE trained on clean panels finds pasted defects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from sklearn.metrics import roc_auc_score

from pipeline.backbone import LITE0, BackboneError, lite0_weights_file, load_backbone
from pipeline.baselines import baseline_scores, patchcore_scores
from pipeline.config import ModelConfig
from pipeline.models import ModelOutput, build_model, exported
from pipeline.scoring import score_crops
from pipeline.selfcheck import pasted_copies
from pipeline.synth import generate
from pipeline.training import train_model
from tests.conftest import small_config


def test_lite0_loads_strictly_from_its_package_frozen_and_gives_the_same_features_twice():
    backbone = load_backbone(LITE0)
    assert lite0_weights_file().name == "efficientnet-lite0-57934424.pth"
    assert not any(p.requires_grad for p in backbone.parameters())
    x = torch.rand(2, 1, 64, 64)
    backbone.train()  # frozen: stays the eval network
    with torch.no_grad():
        first, second = backbone(x), backbone(x)
    assert first.shape == (2, backbone.channels, 8, 8) and backbone.channels == 120
    assert torch.equal(first, second) and first.abs().sum() > 0


def test_damaged_or_wrong_weights_are_one_line_naming_the_file(tmp_path: Path):
    damaged = tmp_path / "damaged.pth"
    damaged.write_bytes(lite0_weights_file().read_bytes()[:1000])
    with pytest.raises(BackboneError, match=r"damaged.pth: not a readable torch state dict"):
        load_backbone(LITE0, damaged)
    with pytest.raises(BackboneError, match=r"missing.pth: cannot read backbone weights"):
        load_backbone("resnet18", tmp_path / "missing.pth")
    other = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), other)
    with pytest.raises(BackboneError, match=r"resnet.pth: not efficientnet_lite0 weights") as error:
        load_backbone(LITE0, other)
    assert "\n" not in str(error.value)
    with pytest.raises(BackboneError, match="set model.backbone_weights"):
        load_backbone("resnet18")


def test_a_users_torchvision_checkpoint_loads(tmp_path: Path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)  # randomly initialised
    backbone = load_backbone("resnet18", path)
    with torch.no_grad():
        assert backbone(torch.rand(1, 1, 64, 64)).shape == (1, 128 + 256, 8, 8)


@pytest.fixture(scope="module")
def clean_panels(tmp_path_factory) -> tuple[torch.Tensor, torch.Tensor]:
    """64 px crops of clean synthetic panels: (train, held out)."""
    from pipeline.crop import crop_resize, panel_box
    from pipeline.images import decode_file

    root = tmp_path_factory.mktemp("panels")
    table = generate(root, n=96, seed=5)
    clean = table[table["label"] == "ok"]
    crops = torch.stack([crop_resize(image.pixels, panel_box(image.pixels, "auto", None), 64)
                         for image in (decode_file(root / p) for p in clean["path"])])
    split = len(crops) * 3 // 4
    return crops[:split], crops[split:]


@pytest.fixture(scope="module")
def feature_vae(clean_panels):
    """A feature VAE trained on clean synthetic panels (64 px, a few epochs), and clean test crops."""
    train, held_out = clean_panels
    cfg = small_config(epochs=6, min_epochs=2).replace("model", backbone=LITE0, latent_dim=8, channels=(32,))
    return train_model(train, held_out, cfg, progress=False), held_out, cfg


def test_feature_vae_trained_on_clean_panels_finds_pasted_defects(feature_vae):
    result, clean, cfg = feature_vae
    assert {"train/kl", "val/recon", "active_units"} <= set(result.history[-1])
    assert result.latent is not None and len(result.latent.table) == cfg.model.latent_dim
    pasted = pasted_copies(clean, seed=0)
    scored = score_crops(result.model, torch.cat([clean, pasted]), cfg.score, cfg.model)
    y = np.r_[np.zeros(len(clean)), np.ones(len(pasted))]
    assert scored.heatmaps.shape == (2 * len(clean), 64, 64)
    best = max(roc_auc_score(y, scored.scores[name]) for name in ("feature_sq_max", "patch_knn_max"))
    assert best > 0.75


def test_exported_feature_vae_scores_as_the_in_memory_model(feature_vae, tmp_path: Path):
    result, clean, cfg = feature_vae
    path = exported.save(result.model, torch.rand(2, 1, 64, 64), tmp_path / "model.pt2")
    loaded = exported.load(path, torch.device("cpu"))
    x = clean[:5].float() / 255
    with torch.no_grad():
        eager, copy = result.model(x), ModelOutput.of(loaded(x))
    assert copy.feature_maps is not None and copy.anomaly_map is None
    for a, b in zip(eager, copy):
        if a is not None:
            assert torch.allclose(a, b, atol=1e-4)


def test_the_pixel_vae_stays_one_setting_away():
    assert type(build_model(ModelConfig(latent_dim=8, channels=(8, 16)), 32)).__name__ == "ConvVAE"


def test_the_patchcore_baseline_fitted_on_clean_panels_finds_pasted_defects(clean_panels, small_patchcore):
    train, held_out = clean_panels
    pasted = pasted_copies(held_out, seed=0)
    scores = baseline_scores(train, {"clean": held_out, "pasted": pasted}, seed=0)["patchcore"]
    y = np.r_[np.zeros(len(held_out)), np.ones(len(pasted))]
    assert roc_auc_score(y, np.r_[scores["clean"], scores["pasted"]]) > 0.8
    again = patchcore_scores(train, {"clean": held_out}, seed=0)["clean"]
    np.testing.assert_allclose(again, scores["clean"], rtol=1e-5)  # the coreset is seeded
