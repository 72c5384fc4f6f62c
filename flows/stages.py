"""One Prefect flow per stage, plus the chain. Tasks are the retryable units; they pass paths
and version strings, never tensors."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from prefect import flow, get_run_logger, task
from tqdm.auto import tqdm

from pipeline import stages
from pipeline.config import PanelConfig
from pipeline.datasets.elpv import write_elpv
from pipeline.ingest import IngestResult, ingest
from pipeline.synth import generate


def _config(config: dict | None) -> PanelConfig:
    return PanelConfig.from_dict(config or {})


class _Bar:
    """A tqdm progress bar as a pipeline Progress callback (done, total)."""

    def __init__(self, desc: str) -> None:
        self.desc, self.bar = desc, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.desc, unit="img")
        self.bar.update(done - self.bar.n)
        if done == total:
            self.bar.close()


@task(retries=2, retry_delay_seconds=2)
def ingest_task(raw: str, workdir: str, labels: str | None, config: dict | None) -> IngestResult:
    return ingest(Path(raw), Path(workdir), Path(labels) if labels else None, _config(config).ingest, _Bar("ingest"))


@task
def train_task(workdir: str, config: dict | None, resume: bool) -> stages.TrainOutcome:
    return stages.train_stage(Path(workdir), _config(config), resume=resume)


@task(retries=1, retry_delay_seconds=2)
def calibrate_task(workdir: str, config: dict | None, model_version: str | None, rule: str | None
                   ) -> stages.CalibrateOutcome:
    return stages.calibrate_stage(Path(workdir), _config(config), model_version, rule)


@task(retries=1, retry_delay_seconds=2)
def score_task(raw: str, workdir: str, config: dict | None, model_ref: str, out: str | None,
               day: str | None) -> stages.ScoreOutcome:
    return stages.score_stage(Path(raw), Path(workdir), _config(config), model_ref, Path(out) if out else None,
                              date.fromisoformat(day) if day else None, _Bar("score"))


@flow(name="synth")
def synth_flow(out: str = "data/raw", n: int = 600, seed: int = 0) -> str:
    table = generate(Path(out), n=n, seed=seed)
    get_run_logger().info("wrote %d synthetic frames (%s) to %s", len(table), table["label"].value_counts().to_dict(), out)
    return out


@flow(name="elpv")
def elpv_flow(out: str = "data/elpv", cell_type: str | None = None) -> dict[str, int]:
    """Copy the ELPV set into a raw folder with labels.csv (ok / crack / uncertain)."""
    table = write_elpv(Path(out), cell_type)
    counts = table["label"].value_counts().to_dict()
    get_run_logger().info("wrote %d ELPV cells %s to %s", len(table), counts, out)
    return counts


@flow(name="ingest")
def ingest_flow(raw: str = "data/raw", workdir: str = "data", labels: str | None = None,
                config: dict | None = None) -> IngestResult:
    result = ingest_task(raw, workdir, labels, config)
    for note in result.notes:
        get_run_logger().warning(note)
    get_run_logger().info("ingested %d new crops (%d already known), %d quarantined; splits %s; manifest %s",
                          result.n_new, result.n_skipped, result.n_quarantined, result.split_counts, result.manifest_path)
    return result


@flow(name="train")
def train_flow(workdir: str = "data", config: dict | None = None, resume: bool = False) -> stages.TrainOutcome:
    """Train on a CPU or GPU worker; resume=True continues an interrupted run from its checkpoint."""
    outcome = train_task(workdir, config, resume)
    if outcome.collapsed:
        get_run_logger().warning(outcome.warning)
    get_run_logger().info("trained %s on %s in %.0fs (best epoch %d of %d%s); registered version %s (run %s)",
                          outcome.model_type, outcome.device, outcome.seconds, outcome.best_epoch, outcome.epochs_run,
                          f", resumed after epoch {outcome.resumed_from}" if outcome.resumed_from else "",
                          outcome.model_version, outcome.run_id)
    return outcome


@flow(name="calibrate")
def calibrate_flow(workdir: str = "data", config: dict | None = None, model_version: str | None = None,
                   rule: str | None = None) -> stages.CalibrateOutcome:
    outcome = calibrate_task(workdir, config, model_version, rule)
    cal, logger = outcome.calibration, get_run_logger()
    if cal.fallback:
        logger.warning(cal.note)
    logger.info("v%s: score %s, threshold %.4g (%s); test ROC-AUC %.4f, precision %.3f, recall %.3f, FPR %.3f",
                cal.model_version, cal.score_name, cal.threshold, cal.rule, cal.test.get("roc_auc", float("nan")),
                cal.test.get("precision", 0), cal.test.get("recall", 0), cal.test.get("fpr", 0))
    logger.info("promotion: %s (%s)", outcome.promoted_to, outcome.reason)
    return outcome


@flow(name="score")
def score_flow(raw: str, workdir: str = "data", config: dict | None = None, model_ref: str = "champion",
               out: str | None = None, day: str | None = None) -> stages.ScoreOutcome:
    outcome = score_task(raw, workdir, config, model_ref, out, day)
    get_run_logger().info("scored %d new images with v%s (%d already in the ledger, %d quarantined, %.1f images/s); "
                          "report %s: %d of %d images flagged", outcome.n_scored, outcome.model_version,
                          outcome.n_skipped, outcome.n_quarantined, outcome.images_per_s, outcome.report_dir,
                          outcome.n_flagged, outcome.n_report)
    return outcome


@flow(name="pipeline")
def pipeline_flow(raw: str = "data/raw", labels: str | None = None, workdir: str = "data",
                  config: dict | None = None, resume: bool = False) -> stages.CalibrateOutcome:
    """ingest -> train -> calibrate -> promote; writes <workdir>/calibration.json."""
    ingest_flow(raw, workdir, labels, config)
    outcome = train_flow(workdir, config, resume)
    return calibrate_flow(workdir, config, outcome.model_version)
