"""End to end on a tiny synthetic set: the real Prefect flows (the session's test server) and a temp MLflow store."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.crop import box_iou
from pipeline.report import REPORT_COLUMNS
from pipeline.scoring import score_crops, score_names
from pipeline.synth import generate
from pipeline.training import train_model
from tests.conftest import small_config


@pytest.mark.slow  # end to end: make test runs it, the quick loop leaves it out
def test_pipeline_then_score_end_to_end(synth_raw: Path, tmp_path: Path, capsys):
    from flows.cli import main
    from flows.prefect_flows import pipeline_flow, score_flow

    cfg = small_config().to_dict()
    inbox = tmp_path / "inbox"
    generate(inbox, n=16, seed=99)
    (inbox / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    # before any model exists, scoring fails with one clear line and a non-zero exit code
    assert main(["score", "--raw", str(inbox), "--workdir", str(tmp_path / "work")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("panelscan score: error:") and "no version with alias 'champion'" in error
    outcome = pipeline_flow(str(synth_raw), str(synth_raw / "labels.csv"), str(tmp_path / "work"), cfg)
    first = score_flow(str(inbox), str(tmp_path / "work"), cfg, day="2026-01-02")
    again = score_flow(str(inbox), str(tmp_path / "work"), cfg, day="2026-01-02")

    # calibration + promotion
    cal = outcome.calibration
    assert outcome.promoted_to == "champion" and (tmp_path / "work" / "calibration.json").exists()
    assert {"roc_auc", "pr_auc", "roc_auc_crack", "roc_auc_loose_connector"} <= set(cal.test)
    # MLflow: the training run holds β, KL and ROC-AUC; the version is champion; a score run exists
    client = MlflowClient()
    version = client.get_model_version_by_alias("panel-anomaly", "champion")
    run = client.get_run(version.run_id)
    assert run.data.params["beta"] == "1.0" and "dataset_hash" in run.data.params
    assert {"train/recon", "train/kl", "train/beta", "val/recon", "val/kl", "eval/roc_auc"} <= set(run.data.metrics)
    assert len(client.get_metric_history(version.run_id, "train/kl")) == 3  # one point per epoch
    assert version.tags["threshold_rule"] == "max-f1" and version.tags["model_type"] == "convvae"
    figures = {a.path for a in client.list_artifacts(version.run_id, "calibration")}
    assert figures == {f"calibration/{n}" for n in ("roc_pr.png", "score_histogram.png", "confusion.png",
                                                     "worst_errors.png", "score_functions.md")}
    table = mlflow.artifacts.load_text(f"runs:/{version.run_id}/calibration/score_functions.md")
    assert f"| {cal.score_label} |" in table and table.count("| yes |") == 1
    assert len(table.splitlines()) == 2 + len(score_names("convvae", head=True)) + bool(cal.family_scores)
    assert cal.test["roc_auc_ci_low"] <= cal.test["roc_auc"] <= cal.test["roc_auc_ci_high"]
    assert cal.defect_classifier is not None and 0 <= cal.test["suspected_defect_accuracy"] <= 1
    latent = {a.path for a in client.list_artifacts(version.run_id, "latent")}
    assert latent == {"latent/kl_per_dim.csv", "latent/kl_per_dim.png"}
    kl_table = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path="latent/kl_per_dim.csv"))
    assert len(kl_table) == 16 and run.data.tags["collapse"] == str(not kl_table["active"].any()).lower()
    score_runs = mlflow.search_runs(experiment_names=["panel-score"])
    assert len(score_runs) == 2 and sorted(score_runs["metrics.n_scored"]) == [0, 16]
    assert (score_runs["metrics.n_report"] == 16).all()
    # the report: every image exactly once, flagged sorted and over threshold, broken file quarantined
    assert (first.n_scored, again.n_scored, again.n_skipped, first.n_quarantined) == (16, 0, 16, 1)
    day = tmp_path / "work" / "reports" / "2026-01-02"
    scores = pd.read_csv(day / "scores.csv")
    flagged = pd.read_csv(day / "flagged.csv", keep_default_na=False)
    assert len(scores) == 16 and scores["image_path"].is_unique
    assert list(flagged.columns) == REPORT_COLUMNS
    assert (flagged["score"] >= flagged["threshold"]).all() and flagged["score"].is_monotonic_decreasing
    assert all((day / p).exists() for p in flagged["heatmap_path"])
    assert set(flagged["suspected_defect"]) <= {"crack", "loose_connector"} and (flagged["suspected_defect"] != "").all()
    assert set(scores.loc[~scores["flagged"], "suspected_defect"].fillna("")) <= {""}
    quarantine = pd.read_csv(tmp_path / "work" / "quarantine" / "quarantine.csv")
    assert "broken.png" in set(quarantine["path"])
    # the report's region is where the injected defect is (even for this 3-epoch, 64 px model)
    truth = pd.read_csv(inbox / "panels.csv", keep_default_na=False).set_index("path")["defect_box"]
    defects = scores[scores["image_path"].map(truth).fillna("") != ""]
    ious = [box_iou(_box(r.region), _box(truth[r.image_path])) for r in defects.itertuples()]
    print(f"region IoU with the true defect box: mean {np.mean(ious):.3f} over {len(ious)} defects")
    assert len(ious) >= 4 and np.mean(ious) >= 0.2 and np.mean(np.array(ious) > 0) > 0.5


def _box(text: str) -> tuple[int, ...]:
    return tuple(map(int, text.split(",")))


@pytest.mark.parametrize("model_type", ["convvae", "vqvae"])
def test_registry_model_reproduces_in_memory_scores(tmp_path: Path, model_type: str):
    cfg = small_config().replace("model", model_type=model_type, codebook_size=32)
    data = (torch.rand(40, 1, 64, 64) * 255).to(torch.uint8)
    result = train_model(data[:24], data[24:32], cfg.replace("train", epochs=1), progress=False)
    tracking.configure(cfg.tracking)
    with mlflow.start_run(experiment_id=tracking.experiment_id("panel-train", cfg.tracking)):
        version = tracking.log_model(result.model, data[:2].float() / 255, cfg)
    loaded = tracking.load_model(cfg.tracking.model_name, version)
    before = score_crops(result.model, data[32:], cfg.score, cfg.model)
    after = score_crops(loaded, data[32:], cfg.score, cfg.model)
    for name in before.scores:
        assert after.scores[name] == pytest.approx(before.scores[name], rel=1e-5), name
    assert torch.allclose(after.heatmaps, before.heatmaps, rtol=1e-5, atol=1e-6)
    assert tracking.load_config(cfg.tracking.model_name, version) == cfg


@pytest.mark.slow  # end to end: make test runs it, the quick loop leaves it out
def test_vqvae_and_convvae_register_side_by_side_and_are_compared_on_the_same_crops(synth_raw: Path, tmp_path: Path):
    """Both families go through the same stages; the VQ run shows its codebook metrics per epoch
    and its usage artifact; the second calibrated version is judged on the champion's test crops."""
    from pipeline import stages
    from pipeline.ingest import ingest

    work = tmp_path / "work"
    conv = small_config()
    vq = conv.replace("model", model_type="vqvae", codebook_size=32)
    ingest(synth_raw, work, synth_raw / "labels.csv", conv.ingest)
    first = stages.train_stage(work, conv, progress=False)
    stages.calibrate_stage(work, conv)
    second = stages.train_stage(work, vq, progress=False)
    outcome = stages.calibrate_stage(work, vq)

    client = MlflowClient()
    assert client.get_model_version("panel-anomaly", first.model_version).tags["model_type"] == "convvae"
    assert client.get_model_version("panel-anomaly", second.model_version).tags["model_type"] == "vqvae"
    run = client.get_run(second.run_id)
    assert run.data.params["model_type"] == "vqvae" and run.data.params["codebook_size"] == "32"
    for metric in ("train/vq_loss", "train/commitment", "train/perplexity", "train/codebook_usage"):
        assert len(client.get_metric_history(second.run_id, metric)) == 3, metric
    assert {a.path for a in client.list_artifacts(second.run_id, "latent")} == {
        "latent/codebook_usage.csv", "latent/codebook_usage.png"}
    assert "codebook_dist" in outcome.calibration.score_table and "elbo" not in outcome.calibration.score_table
    n_test = int(outcome.calibration.test["n"])
    assert f"on the same {n_test} test images" in outcome.reason and "paired-bootstrap CI" in outcome.reason and outcome.promoted_to in ("champion", "challenger")
    assert not (work / "checkpoints" / "vqvae.pt").exists()  # registered: no stale checkpoint to resume


def test_train_stage_resume_continues_the_same_mlflow_run(synth_raw: Path, tmp_path: Path, monkeypatch):
    """A worker dies after epoch 2; the retried stage picks up the checkpoint and the same MLflow
    run, so the analyst sees one unbroken curve of 3 epochs."""
    from pipeline import stages
    from pipeline.ingest import ingest

    work, cfg = tmp_path / "work", small_config()
    ingest(synth_raw, work, synth_raw / "labels.csv", cfg.ingest)
    real_log = tracking.log_epoch

    def dies_after_epoch_2(epoch, metrics):
        real_log(epoch, metrics)
        if epoch == 2:
            raise RuntimeError("worker lost")

    monkeypatch.setattr(tracking, "log_epoch", dies_after_epoch_2)
    with pytest.raises(RuntimeError, match="worker lost"):
        stages.train_stage(work, cfg, progress=False)
    monkeypatch.setattr(tracking, "log_epoch", real_log)
    assert stages.checkpoint_path(work, cfg).exists()
    outcome = stages.train_stage(work, cfg, progress=False, resume=True)
    assert outcome.resumed_from == 2 and outcome.epochs_run == 3
    client = MlflowClient()
    assert [m.step for m in client.get_metric_history(outcome.run_id, "train/recon")] == [1, 2, 3]
    assert len(mlflow.search_runs(experiment_names=["panel-train"])) == 1
    assert not stages.checkpoint_path(work, cfg).exists()


@pytest.mark.slow  # end to end: make test runs it, the quick loop leaves it out
def test_gate_refuses_to_compare_models_tested_on_other_images(synth_raw: Path, tmp_path: Path):
    """A champion from one data set is never displaced by (or compared with) a model calibrated on
    other images with other preprocessing: the newcomer waits as challenger, with the reason."""
    from pipeline import stages
    from pipeline.ingest import ingest

    first_cfg, other_cfg = small_config(epochs=1), small_config(epochs=1).replace("ingest", image_size=32)
    other_raw = tmp_path / "other_raw"
    labels = pd.read_csv(synth_raw / "labels.csv").iloc[60:]
    other_raw.mkdir()
    for name in labels["path"]:
        shutil.copy(synth_raw / name, other_raw / name)
    labels.to_csv(other_raw / "labels.csv", index=False)
    ingest(synth_raw, tmp_path / "a", synth_raw / "labels.csv", first_cfg.ingest)
    stages.train_stage(tmp_path / "a", first_cfg, progress=False)
    assert stages.calibrate_stage(tmp_path / "a", first_cfg).promoted_to == "champion"
    ingest(other_raw, tmp_path / "b", other_raw / "labels.csv", other_cfg.ingest)
    stages.train_stage(tmp_path / "b", other_cfg, progress=False)
    outcome = stages.calibrate_stage(tmp_path / "b", other_cfg)
    assert outcome.promoted_to == "challenger" and "not comparable" in outcome.reason
    assert str(MlflowClient().get_model_version_by_alias("panel-anomaly", "champion").version) == "1"


def test_calibration_without_defect_labels_falls_back_and_says_so(synth_raw: Path, tmp_path: Path):
    from pipeline import stages
    from pipeline.ingest import ingest

    labels = pd.read_csv(synth_raw / "labels.csv")
    labels[labels["label"] == "ok"].to_csv(tmp_path / "ok_only.csv", index=False)  # defects unlabelled
    cfg = small_config(epochs=1)
    ingest(synth_raw, tmp_path / "w", tmp_path / "ok_only.csv", cfg.ingest)
    stages.train_stage(tmp_path / "w", cfg, progress=False)
    with pytest.warns(UserWarning, match="no defect labels"):
        outcome = stages.calibrate_stage(tmp_path / "w", cfg)
    cal = outcome.calibration
    assert cal.fallback and cal.rule == "quantile:0.99" and cal.defect_classifier is None
    version = MlflowClient().get_model_version("panel-anomaly", cal.model_version)
    assert version.tags["threshold_fallback"] == "true" and version.tags["threshold_rule"] == "quantile:0.99"
    assert MlflowClient().get_run(version.run_id).data.tags["calibration.fallback"] == "true"
