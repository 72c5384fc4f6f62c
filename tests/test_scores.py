"""Score functions from an error map: what each one notices."""

import numpy as np
import pytest
import torch

from pipeline.config import ModelConfig, ScoreConfig
from pipeline.models import ModelOutput
from pipeline.score_choice import ScoreChoice
from pipeline.scoring import scaled_scores, score_maps


def _scores(x: torch.Tensor, recon: torch.Tensor) -> dict[str, float]:
    n = x.shape[0]
    out = ModelOutput(recon, torch.zeros(n), torch.full((n, 1, 64, 64), 1e-3), torch.zeros(n, dtype=torch.long))
    batch = score_maps(x, out, ScoreConfig(), ModelConfig())
    return {name: values.tolist() for name, values in batch.scores.items()}


def test_dark_scores_see_a_dark_area_and_ignore_the_same_change_brighter() -> None:
    recon = torch.full((3, 1, 64, 64), 0.5)
    x = recon.clone()
    x[1, :, 20:36, 20:36] -= 0.2  # an inactive (dark) area
    x[2, :, 20:36, 20:36] += 0.2  # the same change, brighter
    s = _scores(x, recon)
    assert s["blur_max"][1] > s["blur_max"][0] and abs(s["blur_max"][1] - s["blur_max"][2]) < 1e-6
    for name in ("dark_blur_max", "dark_area_max", "dark_norm_area_max"):
        assert s[name][1] > 0.05 and s[name][2] < 1e-3
        assert abs(s[name][0]) < 1e-6


def test_dark_area_max_lets_speckle_cancel_but_keeps_a_solid_area() -> None:
    """Noise of either sign averages out over the wide blur; a solid dark patch of the same
    per-pixel energy does not."""
    gen = torch.Generator().manual_seed(0)
    recon = torch.full((2, 1, 64, 64), 0.5)
    x = recon.clone()
    x[0] += torch.randn(1, 64, 64, generator=gen) * 0.1  # speckle everywhere
    x[1, :, 16:48, 16:48] -= 0.1  # a dark area
    s = _scores(x, recon)
    assert s["dark_area_max"][1] > 3 * s["dark_area_max"][0]


def test_dark_norm_area_max_discounts_darkness_where_clean_panels_reconstruct_badly() -> None:
    """The same dark patch scores lower over a busbar-like band that clean crops never reconstruct
    well (high clean error there) than on plain surface; dark_area_max cannot tell them apart."""
    recon = torch.full((2, 1, 64, 64), 0.5)
    ref = torch.full((2, 1, 64, 64), 1e-4)
    ref[:, :, 8:24, :] = 1e-2  # clean crops always miss this band
    x = recon.clone()
    x[0, :, 8:24, 24:40] -= 0.1  # dark patch on the band
    x[1, :, 40:56, 24:40] -= 0.1  # the same patch on plain surface
    batch = score_maps(x, ModelOutput(recon, torch.zeros(2), ref, torch.zeros(2, dtype=torch.long)),
                       ScoreConfig(), ModelConfig())
    s = batch.scores
    assert abs(s["dark_area_max"][0] - s["dark_area_max"][1]) < 1e-6
    assert s["dark_norm_area_max"][1] > 3 * s["dark_norm_area_max"][0]


def test_a_calibration_made_before_a_score_existed_still_scales_its_own() -> None:
    """Nightly scoring with a calibration whose scale predates a candidate: that candidate is
    left out (it cannot be the calibration's choice), the rest are scaled as before."""
    raw = {"dark_area_max": np.array([2.0, 4.0]), "dark_norm_area_max": np.array([5.0, 6.0])}
    scaled = scaled_scores(raw, np.array([0, 1]), {"dark_area_max": [2.0, 2.0]})
    assert set(scaled) == {"dark_area_max"} and scaled["dark_area_max"].tolist() == [1.0, 2.0]


def test_blur_equals_torchvisions_gaussian_blur() -> None:
    from torchvision.transforms.v2 import functional as TF

    from pipeline.scoring import blur

    maps = torch.rand(3, 1, 128, 128, generator=torch.Generator().manual_seed(1))
    for sigma in (2.0, 8.0):
        size = 2 * int(-(-3 * sigma // 1)) + 1
        assert torch.allclose(blur(maps, sigma), TF.gaussian_blur(maps, [size, size], [sigma, sigma]), atol=1e-5)


def test_area_blur_works_on_maps_smaller_than_its_kernel() -> None:
    from pipeline.scoring import blur

    tiny = torch.zeros(1, 1, 16, 16)
    tiny[..., 8, 8] = 1.0
    out = blur(tiny, 8.0)  # a 49-tap kernel, truncated to the map
    assert out.shape == tiny.shape and torch.isfinite(out).all() and out.max() < 1.0


def test_a_one_pixel_wide_crack_keeps_its_full_score_while_its_heatmap_shows_an_area() -> None:
    """Thin cracks (KolektorSDD, a 2-px crack in a 500-px tile) vanish under a score blur; with
    score.blur_sigma 0 the score keeps them while the map people read stays blurred
    (score.heatmap_sigma), so its region is an area around the same peak."""
    recon = torch.full((2, 1, 64, 64), 0.5)
    x = recon.clone()
    x[1, :, 10:50, 32] -= 0.3  # a one-pixel-wide crack
    out = ModelOutput(recon, torch.zeros(2), torch.full((2, 1, 64, 64), 1e-3), torch.zeros(2, dtype=torch.long))
    cfg = ScoreConfig(blur_sigma=0.0)
    batch = score_maps(x, out, cfg, ModelConfig())
    normalised = (x - recon).pow(2) / (1e-3 * (1 + cfg.norm_eps))
    assert batch.scores["norm_blur_max"][1] == pytest.approx(normalised[1].max().item(), rel=1e-6)  # the full error
    heat = batch.heatmaps[1]
    assert heat.max() < 0.5 * normalised[1].max() and heat[30, 32] == heat[30].max()  # smoothed, peak on the crack
    assert (heat[30] > 0.1 * heat.max()).sum() >= 3  # an area, not a pixel
    blurred = score_maps(x, out, ScoreConfig(blur_sigma=cfg.heatmap_sigma), ModelConfig())
    assert blurred.scores["norm_blur_max"][1] < 0.5 * batch.scores["norm_blur_max"][1]  # what the old 2-px blur lost


def _surface(n: int, seed: int, checker: bool = False) -> torch.Tensor:
    """uint8 (n, 1, 32, 32) crops: smooth horizontal gradients, or the same under a checkerboard."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0.2, 0.8, 32).expand(32, 32)
    x = ramp * (0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=g)) + 0.02 * torch.randn(n, 1, 32, 32, generator=g)
    if checker:
        x = x + 0.3 * ((torch.arange(32)[:, None] // 4 + torch.arange(32) // 4) % 2)
    return (x.clamp(0, 1) * 255).to(torch.uint8)


@pytest.mark.parametrize("model_type", ["convvae", "vqvae"])
def test_latent_knn_is_higher_for_a_surface_unlike_every_clean_training_crop(model_type):
    """The bank holds the clean training crops' codes (the unfilled rows never count), and a crop
    of another surface sits farther from them than held-out clean crops do."""
    from sklearn.metrics import roc_auc_score

    from pipeline.clean_references import fit_latent_bank
    from pipeline.models import build_model
    from pipeline.models.blocks import BANK_FAR
    from pipeline.scoring import LATENT_KNN, score_crops

    cfg = ModelConfig(model_type=model_type, latent_dim=8, channels=(8, 16), codebook_size=16)
    model = build_model(cfg, 32).eval()
    train = _surface(40, 0)
    bank = fit_latent_bank(model, train)
    with torch.inference_mode():
        assert torch.allclose(bank[:40], model.codes(train.float() / 255), atol=1e-6)
    assert (bank[40:] == BANK_FAR).all()
    clean, other = _surface(20, 1), _surface(20, 2, checker=True)
    scores = score_crops(model, torch.cat([clean, other]), ScoreConfig(), cfg).scores[LATENT_KNN]
    assert roc_auc_score([0] * 20 + [1] * 20, scores) > 0.95
    assert scores[:20].max() < 1.0  # near codes: no far row is among the nearest
    seen = score_crops(model, train[:5], ScoreConfig(), cfg).scores[LATENT_KNN]
    assert np.allclose(seen, 0.0, atol=1e-3)  # a training crop's own code is its nearest


def test_the_convvae_code_is_its_last_grid_on_principal_axes_fitted_on_the_clean_crops():
    """Fewer crops than axes: the projection keeps every distance between training grids, so the
    nearest clean code is the nearest clean grid; a crop's own code sits at the grids' mean offset."""
    from pipeline.clean_references import fit_latent_bank
    from pipeline.models import build_model

    model = build_model(ModelConfig(latent_dim=8, channels=(8, 16)), 32).eval()
    train = _surface(40, 0)
    with torch.inference_mode():
        assert not model.codes(train.float() / 255).any()  # unfitted: every code 0
        fit_latent_bank(model, train)
        grids, codes = model.code_features(train.float() / 255), model.codes(train.float() / 255)
    assert codes.shape == (40, model.latent_bank.shape[1])
    assert torch.allclose(torch.cdist(codes.double(), codes.double()), torch.cdist(grids.double(), grids.double()),
                          atol=1e-3)
    assert torch.allclose(codes.mean(dim=0), torch.zeros(codes.shape[1]), atol=1e-4)  # centred on the clean mean


def test_the_latent_bank_samples_a_large_training_set_the_same_way_every_time():
    from pipeline.clean_references import fit_latent_bank
    from pipeline.models import build_model
    from pipeline.models.blocks import BANK_FAR, BANK_ROWS

    model = build_model(ModelConfig(latent_dim=4, channels=(4, 8)), 16).eval()
    many = (torch.rand(BANK_ROWS + 300, 1, 16, 16) * 255).to(torch.uint8)
    first = fit_latent_bank(model, many, seed=3).clone()
    assert not (first == BANK_FAR).all(dim=1).any()  # every row a training code
    assert torch.equal(fit_latent_bank(model, many, seed=3), first)
    assert not torch.equal(fit_latent_bank(model, many, seed=4), first)


def test_nightly_scoring_computes_only_what_decides_and_gets_the_same_values() -> None:
    """A per-family choice with a combined score: scoring with only the choice's needs gives each
    crop exactly the value the full candidate set gives, without the scores nobody reads."""
    gen = torch.Generator().manual_seed(1)
    recon = torch.rand(4, 1, 64, 64, generator=gen)
    x = (recon + 0.1 * torch.randn(4, 1, 64, 64, generator=gen)).clamp(0, 1)
    family = torch.tensor([0, 1, 0, 1])
    out = ModelOutput(recon, torch.zeros(4), torch.full((4, 1, 64, 64), 1e-3), family,
                      latent_knn=torch.rand(4, generator=gen))
    choice = ScoreChoice("dark_norm_area_max", ("dark_norm_area_max", "dark_knn_mean"))
    assert choice.needs() == {"dark_norm_area_max", "dark_area_max", "latent_knn"}
    full = score_maps(x, out, ScoreConfig(), ModelConfig())
    lean = score_maps(x, out, ScoreConfig(), ModelConfig(), only=choice.needs())
    assert set(lean.scores) == choice.needs()
    scale = {name: [1.0, 2.0] for name in full.scores}
    fam = family.numpy()
    np.testing.assert_array_equal(choice.values(scaled_scores(lean.scores, fam, scale), fam),
                                  choice.values(scaled_scores(full.scores, fam, scale), fam))
    torch.testing.assert_close(choice.maps(lean), choice.maps(full))
