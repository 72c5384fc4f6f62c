"""Panel families: the router sends each image to its family's model, the classifier learns
families from metadata, scores are made comparable across families, and the whole pipeline
(ingest -> train -> calibrate -> score) runs per family from a labels-file column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.clean_references import fit_latent_bank
from pipeline.config import ModelConfig
from pipeline.families import FamilyModels, fit_family_classifier, train_models, training_families
from pipeline.models import build_model
from pipeline.scoring import PIXEL_COMBINED, fit_score_scale, scaled_scores
from pipeline.training import train_model
from tests.conftest import small_config


def _crops(n: int, grainy: bool, seed: int) -> torch.Tensor:
    """uint8 (n, 1, 32, 32): smooth gradients (mono-like) or fine grain (poly-like)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.linspace(0.3, 0.7, 32).expand(n, 1, 32, 32) + 0.05 * torch.rand(n, 1, 1, 1, generator=g)
    if grainy:
        base = base + 0.15 * (torch.rand(n, 1, 32, 32, generator=g) - 0.5)
    return (base.clamp(0, 1) * 255).round().to(torch.uint8)


def test_training_families_needs_two_complete_families_of_enough_crops():
    assert training_families(pd.Series(["a"] * 30 + ["b"] * 25)) == ("a", "b")
    assert training_families(pd.Series(["a"] * 60)) == ()  # one family: one shared model
    assert training_families(pd.Series(["a"] * 30 + ["b"] * 5)) == ()  # too few to train a model
    assert training_families(pd.Series(["a"] * 30 + ["b"] * 25 + [""])) == ()  # no crop is left out
    val = pd.Series(["a", "a", "b"])
    assert training_families(pd.Series(["a"] * 30 + ["b"] * 25), val) == ("a", "b")
    assert training_families(pd.Series(["a"] * 30 + ["b"] * 25), val[:2]) == ()  # b's model could not be validated


def test_classifier_learns_families_and_the_router_uses_each_familys_model():
    train = torch.cat([_crops(40, False, 0), _crops(40, True, 1)])
    val = torch.cat([_crops(10, False, 2), _crops(10, True, 3)])
    names = ("mono", "poly")
    classifier = fit_family_classifier(train, np.array(["mono"] * 40 + ["poly"] * 40), val,
                                       np.array(["mono"] * 10 + ["poly"] * 10), names)
    assert classifier.names == names and classifier.accuracy == 1.0
    models = [build_model(ModelConfig(latent_dim=8, channels=(8, 16)), 32).eval() for _ in names]
    models[1].error_ref.fill_(2.0)  # tell the two families' outputs apart
    fit_latent_bank(models[1], train[40:])  # and their banks: family 0 keeps an empty one
    router = FamilyModels(models, classifier.mean, classifier.scale, classifier.weight, classifier.bias).eval()
    x = val.float() / 255.0
    with torch.inference_mode():
        out = router(x)
        recon, latent, ref, family = out.recon, out.latent_score, out.error_ref, out.family
        own = [m(x) for m in models]
    assert family.tolist() == [0] * 10 + [1] * 10
    for k in (0, 1):
        pick = family == k
        assert torch.equal(recon[pick], own[k][0][pick]) and torch.equal(latent[pick], own[k][1][pick])
        assert (ref[pick] == (1.0 if k == 0 else 2.0)).all()
        assert torch.equal(out.latent_knn[pick], own[k].latent_knn[pick])  # each family's own clean codes
    exported = torch.export.export(router, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)).module()
    assert torch.equal(exported(x[:3])[3], family[:3])  # routing survives the pt2 export, any batch size


def test_family_models_run_the_whole_schedule_and_keep_the_last_epoch(monkeypatch):
    """Clean val reconstruction that worsens every epoch stops one shared model at its first
    epoch; a family's model (default settings) trains every epoch and keeps the final weights."""
    import pipeline.training as train_module

    real_pass, passes = train_module._epoch_pass, iter(range(1, 1000))

    def worsening_val(model, loader, n, cfg, beta, device, optimizer, *args):
        metrics = real_pass(model, loader, n, cfg, beta, device, optimizer, *args)
        if optimizer is None:
            metrics["recon"] = float(next(passes))
        return metrics

    monkeypatch.setattr(train_module, "_epoch_pass", worsening_val)
    cfg = small_config(epochs=3, min_epochs=1, patience=1).replace("ingest", image_size=32)
    assert cfg.train.select_by == "recon"  # the default
    train = torch.cat([_crops(32, False, 0), _crops(32, True, 1)])
    val = torch.cat([_crops(8, False, 2), _crops(8, True, 3)])
    families = np.array(["mono"] * 32 + ["poly"] * 32), np.array(["mono"] * 8 + ["poly"] * 8)

    def fit_one(name, train_x, val_x, config):
        return train_model(train_x, val_x, config, progress=False, family=name)

    per_family = train_models(train, families[0], val, families[1], cfg, fit_one)
    assert set(per_family.results) == {"mono", "poly"}
    for result in per_family.results.values():
        assert len(result.history) == 3 and result.best_epoch == 3 and not result.stopped_early
    shared = train_models(train, np.array([""] * 64), val, np.array([""] * 16), cfg, fit_one)
    assert shared.results[""].best_epoch == 1 and shared.results[""].stopped_early


def test_scores_are_scaled_per_family_so_families_compare():
    """A grainy family's clean crops score 3x a plain one's: raw, its clean crops outrank the plain
    family's defects; scaled by each family's clean median, defects come first in both."""
    family = np.array([0, 0, 0, 1, 1, 1])
    clean = np.array([True, True, False, True, True, False])
    raw = {"dark_area_max": np.array([1.0, 1.0, 2.0, 3.0, 3.0, 6.0]),
           "norm_blur_max": np.array([2.0, 2.0, 5.0, 4.0, 4.0, 10.0]),
           "latent_knn": np.array([0.5, 0.5, 2.0, 1.0, 1.0, 1.0])}
    scale = fit_score_scale(raw, family, clean, 2)
    assert scale == {"dark_area_max": [1.0, 3.0], "norm_blur_max": [2.0, 4.0], "latent_knn": [0.5, 1.0]}
    scaled = scaled_scores(raw, family, scale)
    assert scaled["dark_area_max"].tolist() == [1.0, 1.0, 2.0, 1.0, 1.0, 2.0]
    assert set(PIXEL_COMBINED) == {"dark_norm_mean", "dark_knn_mean"}
    assert scaled["dark_norm_mean"].tolist() == [1.0, 1.0, 2.25, 1.0, 1.0, 2.25]  # mean of the two scaled parts
    assert scaled["dark_knn_mean"].tolist() == [1.0, 1.0, 3.0, 1.0, 1.0, 1.5]
    without_knn = scaled_scores({k: raw[k] for k in ("dark_area_max", "norm_blur_max")}, family, scale)
    assert "dark_knn_mean" not in without_knn and "dark_norm_mean" in without_knn  # only whole pairs combine


@pytest.mark.slow  # end to end: make test runs it, the quick loop leaves it out
def test_pipeline_trains_one_model_per_family_and_reports_each_images_family(two_family_raw: Path, synth_raw: Path,
                                                                            tmp_path: Path):
    from pipeline import tracking
    from pipeline.ingest import ingest, prepare
    from pipeline.scoring import score_crops
    from pipeline.stages import calibrate_stage, score_stage, train_stage

    raw = two_family_raw
    cfg = small_config(epochs=2).replace("ingest", crop="none")
    work = tmp_path / "work"
    result = ingest(raw, work, raw / "labels.csv", cfg.ingest)
    assert result.notes == ()  # the family column is part of the contract, not an unknown column
    outcome = train_stage(work, cfg, progress=False)
    assert outcome.families == ("negative", "plain")
    run = MlflowClient().get_run(outcome.run_id)
    assert run.data.tags["families"] == "negative,plain" and "plain/train/recon" in run.data.metrics
    assert run.data.metrics["families/router_val_accuracy"] == 1.0  # inverted frames are easy to tell apart

    calibration = calibrate_stage(work, cfg).calibration
    assert calibration.families == ["negative", "plain"]
    assert set(calibration.score_scale) >= {"dark_area_max", "norm_blur_max"}
    assert all(len(v) == 2 for v in calibration.score_scale.values())
    assert calibration.test["router_accuracy"] == 1.0  # test crops, defects included

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for name in ("plain_" + Path(p).name for p in sorted(synth_raw.glob("*.png"))[:3]):
        (inbox / name).write_bytes((raw / name).read_bytes())
        negative = name.replace("plain_", "negative_", 1)
        (inbox / negative).write_bytes((raw / negative).read_bytes())
    report = score_stage(inbox, work, cfg, out=tmp_path / "reports")
    scores = pd.read_csv(report.report_dir / "scores.csv", keep_default_na=False)
    assert len(scores) == 6
    assert (scores["family"] == scores["image_path"].str.split("_").str[0]).all()

    # the report's score is the registry model's, routed and scaled as calibration decided
    model = tracking.load_model(cfg.tracking.model_name, calibration.model_version)
    crops = torch.stack([prepare(inbox / path, cfg.ingest)[0].pixels for path in scores["image_path"]])
    scored = score_crops(model, crops, cfg.score, cfg.model)
    expected = calibration.choice.values(scaled_scores(scored.scores, scored.family, calibration.score_scale),
                                         scored.family)  # one score, or each family's own
    assert scores["score"].to_numpy() == pytest.approx(expected, rel=1e-6)
