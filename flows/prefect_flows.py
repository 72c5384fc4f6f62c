"""One Prefect flow per stage, plus the chain. Tasks are the retryable units; they pass paths
and version strings, never tensors."""

from __future__ import annotations

import json
import time
from datetime import date
from pathlib import Path

from prefect import Flow, State, flow, get_run_logger, serve, task
from prefect.schedules import Cron
from prefect.states import Completed
from tqdm.auto import tqdm

from pipeline import stages
from pipeline.bench import run_splits
from pipeline.bench_sets import bench_datasets
from pipeline.bench_tables import markdown_table
from pipeline.config import PanelConfig
from pipeline.datasets.elpv import write_elpv
from pipeline.errors import is_user_error
from pipeline.files import atomic_write_text
from pipeline.inbox import arrived_on, previous_day
from pipeline.ingest import IngestResult, ingest
from pipeline.review import ReviewImport
from pipeline.synth import generate


def _config(config: dict | None) -> PanelConfig:
    return PanelConfig.from_dict(config or {})


def _worth_retrying(task, task_run, state: State) -> bool:
    """Retry outages and flukes, not a user's mistake: the same labels file fails the same way."""
    return not is_user_error(state.data if isinstance(state.data, BaseException) else None)


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


@task(retries=2, retry_delay_seconds=2, retry_condition_fn=_worth_retrying)
def ingest_task(raw: str, workdir: str, labels: str | None, config: dict | None) -> IngestResult:
    return ingest(Path(raw), Path(workdir), Path(labels) if labels else None, _config(config).ingest, _Bar("ingest"),
                  on_wait=get_run_logger().info)


@task
def train_task(workdir: str, config: dict | None, resume: bool) -> stages.TrainOutcome:
    return stages.train_stage(Path(workdir), _config(config), resume=resume)


@task(retries=1, retry_delay_seconds=2, retry_condition_fn=_worth_retrying)
def calibrate_task(workdir: str, config: dict | None, model_version: str | None, rule: str | None
                   ) -> stages.CalibrateOutcome:
    return stages.calibrate_stage(Path(workdir), _config(config), model_version, rule)


@task(retries=3, retry_delay_seconds=5, retry_condition_fn=_worth_retrying)
def find_arrivals_task(inbox: str, day: str, timezone: str) -> tuple[str, list[str]]:
    folder, paths = arrived_on(Path(inbox), date.fromisoformat(day), timezone)
    return str(folder), [str(p) for p in paths]


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=_worth_retrying)
def plan_task(raw: str, workdir: str, config: dict | None, model_ref: str, day: str | None,
              paths: list[str] | None) -> stages.ScoringPlan:
    return stages.plan_scoring(Path(raw), Path(workdir), _config(config), model_ref,
                               date.fromisoformat(day) if day else None, [Path(p) for p in paths] if paths is not None else None)


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=_worth_retrying)
def score_shard_task(plan: stages.ScoringPlan, paths: list[str], workdir: str, config: dict | None,
                     out: str | None, show_progress: bool) -> stages.ShardResult:
    """A retry resumes: the ledger already holds the batches scored before a failure."""
    return stages.score_shard(plan, paths, Path(workdir), _config(config), Path(out) if out else None,
                              _Bar("score") if show_progress else None)


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=_worth_retrying)
def finish_task(plan: stages.ScoringPlan, shards: list[stages.ShardResult], workdir: str, config: dict | None,
                out: str | None, seconds: float) -> stages.ScoreOutcome:
    return stages.finish_scoring(plan, shards, Path(workdir), _config(config), Path(out) if out else None, seconds)


def _score_in_shards(raw: str, workdir: str, config: dict | None, model_ref: str, out: str | None,
                     day: str | None, paths: list[str] | None, shards: int) -> stages.ScoreOutcome:
    """Plan once (version pinned), score the shards through the flow's task runner (threads, or a
    Dask cluster), then rebuild the report from the ledger; the workdir is locked throughout."""
    logger = get_run_logger()
    with stages.scoring_lock(Path(workdir), on_wait=logger.info):
        start = time.perf_counter()
        plan = plan_task(raw, workdir, config, model_ref, day, paths)
        parts = [plan.todo[i::shards] for i in range(max(1, shards))]
        futures = [score_shard_task.submit(plan, part, workdir, config, out, shards == 1) for part in parts if part]
        results = [future.result() for future in futures]
        outcome = finish_task(plan, results, workdir, config, out, time.perf_counter() - start)
    logger.info("scored %d new images with v%s (%d already in the ledger, %d quarantined, %.1f images/s); "
                "report %s: %d of %d images flagged", outcome.n_scored, outcome.model_version, outcome.n_skipped,
                outcome.n_quarantined, outcome.images_per_s, outcome.report_dir, outcome.n_flagged, outcome.n_report)
    if outcome.drift.drifted:
        logger.warning(outcome.drift.message)
    return outcome


def _final_state(outcome: stages.ScoreOutcome) -> State:
    """Completed either way; a drifted batch says so in the run's state message (not failed)."""
    return Completed(message=outcome.drift.message if outcome.drift.drifted else None, data=outcome)


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


@flow(name="review-import")
def review_flow(review_file: str, workdir: str = "data", config: dict | None = None,
                report_date: str | None = None) -> ReviewImport:
    """An inspector's gallery export back into the workdir's labels (no retries: it is one file)."""
    result = stages.review_stage(Path(review_file), Path(workdir), _config(config), report_date)
    for problem in (*result.problems, *(result.ingest.notes if result.ingest else ())):
        get_run_logger().warning(problem)
    return result


@flow(name="train")
def train_flow(workdir: str = "data", config: dict | None = None, resume: bool = False) -> stages.TrainOutcome:
    """Train on a CPU or GPU worker; resume=True continues an interrupted run from its checkpoint."""
    outcome = train_task(workdir, config, resume)
    if outcome.collapsed:
        get_run_logger().warning(outcome.warning)
    get_run_logger().info("trained %s%s%s on %s in %.0fs (best epoch %d of %d%s); registered version %s (run %s)",
                          outcome.model_type, f" x{outcome.members} (seeds scored as one)" if outcome.members > 1 else "",
                          f" per family ({', '.join(outcome.families)})" if outcome.families else "",
                          outcome.device, outcome.seconds, outcome.best_epoch, outcome.epochs_run,
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
                cal.model_version, cal.score_label, cal.threshold, cal.rule, cal.test.get("roc_auc", float("nan")),
                cal.test.get("precision", 0), cal.test.get("recall", 0), cal.test.get("fpr", 0))
    logger.info("promotion: %s (%s)", outcome.promoted_to, outcome.reason)
    return outcome


@flow(name="score")
def score_flow(raw: str, workdir: str = "data", config: dict | None = None, model_ref: str = "champion",
               out: str | None = None, day: str | None = None, shards: int = 1) -> stages.ScoreOutcome:
    """Score every image under raw into the day's report."""
    return _final_state(_score_in_shards(raw, workdir, config, model_ref, out, day, None, shards))


@flow(name="nightly-score")
def nightly_flow(inbox: str = "data/inbox", workdir: str = "data", day: str | None = None, timezone: str = "UTC",
                 config: dict | None = None, model_ref: str = "champion", out: str | None = None,
                 shards: int = 1) -> stages.ScoreOutcome:
    """Score the images that arrived for `day` (default: yesterday in `timezone`) with the
    champion, pinned for the whole run; write the day's report, gallery and drift check."""
    day = day or previous_day(timezone).isoformat()
    folder, paths = find_arrivals_task(inbox, day, timezone)
    get_run_logger().info("%d files arrived for %s in %s", len(paths), day, folder)
    return _final_state(_score_in_shards(folder, workdir, config, model_ref, out, day, paths, shards))


@flow(name="pipeline")
def pipeline_flow(raw: str = "data/raw", labels: str | None = None, workdir: str = "data",
                  config: dict | None = None, resume: bool = False) -> stages.CalibrateOutcome:
    """ingest -> train -> calibrate -> promote; writes <workdir>/calibration.json."""
    ingest_flow(raw, workdir, labels, config)
    outcome = train_flow(workdir, config, resume)
    return calibrate_flow(workdir, config, outcome.model_version)


@flow(name="bench")
def bench_flow(out: str = "benchmarks/results", quick: bool = False, raw: str | None = None, labels: str | None = None,
               config: dict | None = None, shared: str | None = None,
               model_types: tuple[str, ...] = ("convvae", "vqvae"), split_seeds: tuple[int, ...] | None = None,
               train_seeds: tuple[int, ...] | None = None, sets: tuple[str, ...] = ()) -> dict:
    """Quality + speed, panelscan next to the baselines on identical splits; JSON + Markdown in out.
    split_seeds / train_seeds: run it once per split seed and training seed and report the mean too
    (default: the config's seeds); sets: only the data sets of these names (default: all)."""
    logger = get_run_logger()
    cfg = _config(config)
    datasets = bench_datasets(Path(out), quick, raw, labels, Path(shared) if shared else None, tuple(sets))
    logger.info("data sets: %s", ", ".join(d.name for d in datasets))
    result = run_splits(datasets, Path(out) / "work", cfg.replace("ingest", train_frac=0.7), model_types,
                        tuple(split_seeds or (cfg.ingest.split_seed,)), logger.info, tuple(train_seeds or ()))
    name = "bench-quick" if quick else "bench"
    atomic_write_text(Path(out) / f"{name}.json", json.dumps(result, indent=2, default=str))
    atomic_write_text(Path(out) / f"{name}.md", markdown_table(result))
    return result


def on_dask(scoring_flow: Flow, address: str | None = None, workers: int | None = None) -> Flow:
    """The flow with its scoring shards on a Dask cluster: an existing scheduler, or a local
    cluster of worker processes; unchanged when neither is given."""
    if not address and not workers:
        return scoring_flow
    from prefect_dask import DaskTaskRunner

    runner = DaskTaskRunner(address=address) if address else DaskTaskRunner(
        cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True})
    return scoring_flow.with_options(task_runner=runner)


def site_deployments(inbox: str, workdir: str, timezone: str = "UTC", cron: str = "0 2 * * *",
                     config: dict | None = None) -> list:
    """What `panelscan serve` runs for a small site: the nightly scoring on a schedule, and
    calibrate / train on demand (`prefect deployment run 'calibrate/calibrate'`)."""
    nightly = nightly_flow.to_deployment(
        name="nightly-score", schedule=Cron(cron, timezone=timezone),
        parameters={"inbox": inbox, "workdir": workdir, "timezone": timezone, "config": config or {}})
    calibrate = calibrate_flow.to_deployment(name="calibrate", parameters={"workdir": workdir, "config": config or {}})
    train = train_flow.to_deployment(name="train", parameters={"workdir": workdir, "config": config or {}})
    return [nightly, calibrate, train]


def serve_here(inbox: str, workdir: str, timezone: str, cron: str, config: dict | None) -> None:
    serve(*site_deployments(inbox, workdir, timezone, cron, config))  # blocks until interrupted
