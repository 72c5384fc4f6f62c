"""Ensembles (train.members): trainings from consecutive seeds scored as one model, each score the
members' mean, through training, the registry copy, calibration and nightly scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.clean_references import fit_error_reference, fit_latent_bank
from pipeline.config import ModelConfig, ScoreConfig
from pipeline.ensemble import Ensemble, member_count, train_members
from pipeline.errors import UserError
from pipeline.models import build_model
from pipeline.scoring import score_crops
from tests.conftest import small_config


def _member(seed: int, crops: torch.Tensor, cfg: ModelConfig) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(cfg, 32).eval()
    fit_error_reference(model, crops)
    fit_latent_bank(model, crops, seed)
    return model


@pytest.mark.parametrize("model_type", ["convvae", "vqvae"])
def test_every_ensemble_score_and_heatmap_is_the_members_mean(model_type: str):
    cfg = ModelConfig(model_type=model_type, latent_dim=8, channels=(8, 16))
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(60, 200, (24, 1, 32, 32), dtype=torch.uint8, generator=g)
    crops = torch.randint(0, 256, (10, 1, 32, 32), dtype=torch.uint8, generator=g)
    members = [_member(seed, clean, cfg) for seed in (0, 1)]
    score_cfg = ScoreConfig(blur_sigma=1.0)  # a blur before the maxima too: still per member
    each = [score_crops(m, crops, score_cfg, cfg) for m in members]
    both = score_crops(Ensemble(members).eval(), crops, score_cfg, cfg)
    assert set(both.scores) == set(each[0].scores)
    for name, values in both.scores.items():
        assert not np.allclose(each[0].scores[name], each[1].scores[name]), name  # the members differ ...
        assert values == pytest.approx((each[0].scores[name] + each[1].scores[name]) / 2, rel=1e-5), name  # ... mean
    assert torch.allclose(both.heatmaps, (each[0].heatmaps + each[1].heatmaps) / 2, rtol=1e-5, atol=1e-7)


def test_members_below_one_is_a_clear_error():
    cfg = small_config().replace("train", members=0)
    crops = torch.zeros(4, 1, 64, 64, dtype=torch.uint8)
    with pytest.raises(UserError, match="train.members is 0"):
        train_members(crops, np.array([""] * 4), crops, np.array([""] * 4), cfg, lambda *a: None)


@pytest.mark.slow  # end to end: make test runs it, the quick loop leaves it out
def test_pipeline_trains_each_member_per_family_and_scores_with_the_registry_ensemble(two_family_raw: Path,
                                                                                    tmp_path: Path):
    from pipeline import tracking
    from pipeline.ingest import ingest, prepare
    from pipeline.scoring import scaled_scores
    from pipeline.stages import calibrate_stage, score_stage, train_stage

    raw = two_family_raw
    cfg = small_config(epochs=2, members=2).replace("ingest", crop="none")
    work = tmp_path / "work"
    ingest(raw, work, raw / "labels.csv", cfg.ingest)
    outcome = train_stage(work, cfg, progress=False)
    assert outcome.families == ("negative", "plain") and outcome.members == 2
    metrics = MlflowClient().get_run(outcome.run_id).data.metrics
    for name in ("plain", "member1-plain", "negative", "member1-negative"):  # every member's curves, apart
        assert f"{name}/train/recon" in metrics
    assert metrics["plain/train/recon"] != metrics["member1-plain/train/recon"]  # seeds 0 and 1
    assert not list((work / "checkpoints").glob("*.pt"))  # registered: every member's checkpoint gone

    calibration = calibrate_stage(work, cfg).calibration
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    for path in sorted(raw.glob("*.png"))[:4]:
        (inbox / path.name).write_bytes(path.read_bytes())
    report = score_stage(inbox, work, cfg, out=tmp_path / "reports")
    scores = pd.read_csv(report.report_dir / "scores.csv", keep_default_na=False)
    assert len(scores) == 4

    # the registry copy is the whole ensemble: its scores are the report's, in calibration's unit
    model = tracking.load_model(cfg.tracking.model_name, calibration.model_version)
    crops = torch.stack([prepare(inbox / path, cfg.ingest)[0].pixels for path in scores["image_path"]])
    scored = score_crops(model, crops, cfg.score, cfg.model)
    expected = calibration.choice.values(scaled_scores(scored.scores, scored.family, calibration.score_scale),
                                         scored.family)
    assert scores["score"].to_numpy() == pytest.approx(expected, rel=1e-6)
    with torch.inference_mode():
        assert model(crops[:2].float() / 255)[0].shape[1] == 2  # one reconstruction per member


def test_a_feature_model_trains_once_whatever_train_members_says():
    from pipeline.training import TrainResult

    cfg = small_config().replace("train", members=2).replace("model", backbone="efficientnet_lite0")
    crops, families = torch.zeros(4, 1, 64, 64, dtype=torch.uint8), np.array([""] * 4)
    fitted: list[str] = []

    def fit(name: str, *_) -> TrainResult:
        fitted.append(name)
        return TrainResult(torch.nn.Identity())
    train_members(crops, families, crops, families, cfg, fit)
    assert fitted == [""] and member_count(cfg) == 1  # what the train stage reports
    train_members(crops, families, crops, families, cfg.replace("model", backbone="none"), fit)
    assert fitted == ["", "", "member1"]
