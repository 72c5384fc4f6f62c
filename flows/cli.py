"""`panelscan` command line: each subcommand runs the matching Prefect flow.

Exit code is non-zero on failure, with a one-line reason on stderr.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import typing
from pathlib import Path

from pipeline.config import ModelConfig, PanelConfig, cli_options, settings_reference
from pipeline.errors import ENVIRONMENT_ERRNOS, UserError, is_user_error, one_line


def _add_settings(p: argparse.ArgumentParser, *sections: str, only: tuple[str, ...] = ()) -> None:
    """The config settings of these sections that are command-line options (pipeline/config.py),
    or only the named ones."""
    for o in (o for section in sections for o in cli_options(section) if not only or o.name in only):
        if o.type is bool:  # --compile / --no-compile
            p.add_argument(o.flag, dest=f"{o.section}.{o.name}", action=argparse.BooleanOptionalAction,
                           default=None, help=f"{o.help} (default: {'on' if o.default else 'off'})")
            continue
        p.add_argument(o.flag, dest=f"{o.section}.{o.name}", type=o.type, choices=o.choices,
                       metavar=None if o.choices else o.name.upper(), help=f"{o.help} (default: {o.default})")


def _model_types(text: str) -> tuple[str, ...]:
    """--models: known model types only, so a typo stops at the command line, not mid-benchmark."""
    known = typing.get_args(typing.get_type_hints(ModelConfig)["model_type"])
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown model type(s) {unknown or [text]}; choose from {', '.join(known)}")
    return names


def _names(text: str) -> tuple[str, ...]:
    """--sets: comma-separated names; which exist is known only once the sets are found."""
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names:
        raise argparse.ArgumentTypeError(f"no data set named in {text!r}")
    return names


def _seeds(text: str) -> tuple[int, ...]:
    """--split-seeds / --train-seeds: whole numbers, comma-separated, each once."""
    try:
        seeds = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: seeds are whole numbers, comma-separated (e.g. 0,1,2)") from None
    if not seeds or len(set(seeds)) < len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more different non-negative seeds (e.g. 0,1,2)")
    return seeds


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="JSON file overriding config defaults (see pipeline/config.py)")
    p.add_argument("--workdir", default="data", help="where processed/, quarantine/, reports/ live (default: data)")
    _add_settings(p, "tracking")


def _add_train(p: argparse.ArgumentParser) -> None:
    _add_settings(p, "model", "train")
    p.add_argument("--resume", action="store_true", help="continue an interrupted training run from its checkpoint")


def _add_scale(p: argparse.ArgumentParser) -> None:
    _add_settings(p, "score")
    p.add_argument("--model-uri", help="models:/<name>@<alias> or models:/<name>/<version> "
                                       "(default: the champion of --model-name)")
    p.add_argument("--out", help="report root (default: <workdir>/reports)")
    p.add_argument("--shards", type=int, default=1, help="split the images into this many scoring tasks")
    p.add_argument("--dask-address", help="run the shards on this Dask scheduler (tcp://host:8786)")
    p.add_argument("--dask-workers", type=int, help="run the shards on a local Dask cluster of this many processes")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="panelscan", description="Anomaly detection for equipment panel images.")
    sub = root.add_subparsers(dest="command", required=True)
    p = sub.add_parser("synth", help="write synthetic panels + labels.csv")
    p.add_argument("--out", default="data/raw")
    p.add_argument("--n", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("elpv", help="write the ELPV solar-cell set (pip elpv-dataset) as a raw folder + labels.csv")
    p.add_argument("--out", default="data/elpv")
    p.add_argument("--type", choices=["mono", "poly"], help="only this cell type (default: both)")
    p = sub.add_parser("ingest", help="validate, crop and split raw images")
    p.add_argument("--raw", default="data/raw")
    p.add_argument("--labels", help="labels CSV (path,label[,panel_id])")
    _add_config(p), _add_settings(p, "ingest")
    p = sub.add_parser("train", help="train a model on clean crops and register it")
    _add_config(p), _add_train(p)
    p = sub.add_parser("calibrate", help="choose score + threshold on val, report test, promote")
    _add_config(p)
    p.add_argument("--rule", help="max-f1 | fpr:<x> | recall:<x> | fixed:<value>")
    p.add_argument("--model-version", help="registered version to calibrate (default: the last trained)")
    _add_settings(p, "score", only=("device",))
    p = sub.add_parser("score", help="score a folder of images with the champion model")
    p.add_argument("--raw", required=True)
    p.add_argument("--date", help="report date YYYY-MM-DD (default: today)")
    _add_config(p), _add_scale(p)
    p = sub.add_parser("nightly", help="score the images that arrived for a date (what the nightly deployment runs)")
    p.add_argument("--inbox", default="data/inbox", help="<inbox>/YYYY-MM-DD/ folders, or files by modification time")
    p.add_argument("--date", help="YYYY-MM-DD (default: yesterday in --timezone)")
    p.add_argument("--timezone", default="UTC", help="the site's timezone, e.g. Europe/Berlin (default: UTC)")
    _add_config(p), _add_scale(p)
    p = sub.add_parser("review", help="an inspector's gallery export (review-<date>.csv) back into the labels")
    p.add_argument("action", choices=["import"])
    p.add_argument("file", help="review-<date>.csv, as the gallery's Export button saved it")
    p.add_argument("--date", help="the report date it reviews (default: from the file name)")
    _add_config(p), _add_settings(p, "ingest")
    p = sub.add_parser("serve", help="run the nightly-score, calibrate and train deployments on this machine")
    p.add_argument("--inbox", default="data/inbox")
    p.add_argument("--timezone", default="UTC", help="timezone of the nightly schedule (default: UTC)")
    p.add_argument("--cron", default="0 2 * * *", help="nightly schedule (default: 02:00 every day)")
    _add_config(p)
    p = sub.add_parser("bench", help="quality + speed next to baselines on identical splits (JSON + Markdown)")
    p.add_argument("--quick", action="store_true", help="synthetic set only (no ELPV, no shared sets): minutes on a CPU")
    p.add_argument("--models", default="convvae,vqvae", type=_model_types,
                   help="model types to train, comma-separated (default: %(default)s)")
    p.add_argument("--datasets", default="../shared/datasets",
                   help="folder of real sets (each a raw folder with labels.csv; masks/<set>/masks.csv) (default: %(default)s)")
    p.add_argument("--split-seeds", type=_seeds,
                   help="run the bench once per split seed, e.g. 0,1,2, and report each and their mean "
                        "(default: the config's ingest.split_seed, 0)")
    p.add_argument("--train-seeds", type=_seeds,
                   help="... and once per training seed on each split, e.g. 0,1: one training moves the mean "
                        "as much as a split does (default: the config's train.seed, 0)")
    p.add_argument("--sets", type=_names, default=(),
                   help="only these data sets, comma-separated, e.g. elpv,kolektorsdd (default: every set found)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--raw", help="also benchmark this folder of images ...")
    p.add_argument("--labels", help="... with this labels CSV (default: <raw>/labels.csv)")
    p.add_argument("--config", type=Path, help="JSON file overriding config defaults")
    _add_settings(p, "score", only=("device",))
    p = sub.add_parser("settings", help="every setting with its value (defaults, or as a --config file sets them)")
    p.add_argument("--config", type=Path, help="JSON file overriding config defaults")
    p = sub.add_parser("pipeline", help="ingest -> train -> calibrate -> promote")
    p.add_argument("--raw", default="data/raw")
    p.add_argument("--labels")
    _add_config(p), _add_settings(p, "ingest"), _add_train(p)
    return root


def build_config(args: argparse.Namespace) -> PanelConfig:
    """Defaults, then the --config file, then the options given on the command line."""
    cfg = PanelConfig.load(getattr(args, "config", None))
    for section in ("ingest", "model", "train", "score", "tracking"):
        cfg = cfg.replace(section, **{o.name: getattr(args, f"{section}.{o.name}", None) for o in cli_options(section)})
    return cfg


class _UserErrorsInOneLine(logging.Filter):
    """Prefect logs a failed task's traceback and 'Finished in state Failed(...)' lines. For a
    user's mistake the command line prints one line instead, so those records stay off the
    console (Prefect's own run log keeps them); any other error keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and is_user_error(record.exc_info[1]):
            return False
        message = record.getMessage()
        return not ("Failed" in message or "exception" in message) or not any(m in message for m in _user_error_marks())


@functools.cache
def _user_error_marks() -> tuple[str, ...]:
    """How Prefect's state messages name a user error: 'LabelsError: ...', 'UserError(...)', '[Errno 28]'."""
    classes, todo = [], [UserError]
    while todo:
        cls = todo.pop()
        classes.append(cls)
        todo += cls.__subclasses__()
    return (*(f"{c.__name__}{end}" for c in classes for end in (": ", "(")),
            *(f"[Errno {n}]" for n in ENVIRONMENT_ERRNOS))


def _quiet_console() -> None:
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _UserErrorsInOneLine) for f in handler.filters):
            handler.addFilter(_UserErrorsInOneLine())


# The folders and files a command reads, and what each is called in its error.
_INPUT_FOLDERS = {"raw": "raw folder", "inbox": "inbox folder"}
_INPUT_FILES = {"labels": "labels file", "file": "review file"}


def check_inputs(args: argparse.Namespace) -> None:
    """The folders and files named on the command line exist. Checked before any flow runs: Prefect
    starts a temporary server first, which took half a minute on a busy box, so a typo in a path
    would otherwise cost that wait before its one-line error. (The flows check again: they are run
    by deployments too.)"""
    folders = {**_INPUT_FOLDERS} if args.command == "nightly" else {"raw": _INPUT_FOLDERS["raw"]}
    for name, what in folders.items():
        value = getattr(args, name, None)
        if value is not None and not Path(value).is_dir():
            raise UserError(f"{value}: {what} does not exist")
    for name, what in _INPUT_FILES.items():
        value = getattr(args, name, None)
        if value is not None and not Path(value).is_file():
            raise UserError(f"{value}: {what} does not exist")


def run(args: argparse.Namespace) -> str:
    """Run the flow for args.command; returns the line to print."""
    if args.command == "settings":  # no flow: nothing runs, nothing to wait for
        return settings_reference(PanelConfig.load(args.config)).rstrip()
    cfg = build_config(args) if args.command not in ("synth", "elpv") else None
    check_inputs(args)
    from flows import prefect_flows as f  # Prefect import is slow: only after the arguments are checked

    _quiet_console()

    if args.command == "synth":
        return f"synthetic panels written to {f.synth_flow(args.out, args.n, args.seed)}"
    if args.command == "elpv":
        counts = f.elpv_flow(args.out, args.type)
        return f"ELPV written to {args.out} ({counts}); labels: {args.out}/labels.csv"
    assert cfg is not None
    config = cfg.to_dict()
    if args.command == "ingest":
        r = f.ingest_flow(args.raw, args.workdir, args.labels, config)
        return f"manifest: {r.manifest_path} ({r.n_new} new, {r.n_quarantined} quarantined, splits {r.split_counts})"
    if args.command == "train":
        r = f.train_flow(args.workdir, config, args.resume)
        return f"registered {cfg.tracking.model_name} version {r.model_version} ({r.model_type}, run {r.run_id})"
    if args.command == "calibrate":
        r = f.calibrate_flow(args.workdir, config, args.model_version, args.rule)
        return _calibration_line(r)
    if args.command in ("score", "nightly"):
        scorer = f.on_dask(f.score_flow if args.command == "score" else f.nightly_flow, args.dask_address, args.dask_workers)
        common = dict(workdir=args.workdir, config=config, model_ref=args.model_uri or "champion", out=args.out,
                      day=args.date, shards=args.shards)
        r = scorer(raw=args.raw, **common) if args.command == "score" else scorer(
            inbox=args.inbox, timezone=args.timezone, **common)
        drift = f"\n{r.drift.message}" if r.drift.drifted else ""
        return (f"report: {r.report_dir}/flagged.csv ({r.n_flagged} of {r.n_report} images flagged by "
                f"{cfg.tracking.model_name} v{r.model_version}; {r.n_scored} newly scored, {r.n_skipped} already "
                f"in the ledger, {r.n_quarantined} quarantined){drift}")
    if args.command == "bench":
        result = f.bench_flow(args.out, args.quick, args.raw, args.labels, config, args.datasets, args.models,
                              args.split_seeds, args.train_seeds, args.sets)
        from pipeline.bench_tables import markdown_table
        return markdown_table(result)
    if args.command == "review":
        r = f.review_flow(args.file, args.workdir, config, args.date)
        precision = "; ".join(f"v{v}: {p['confirmed']} of {p['reviewed_flags']} flags confirmed"
                              for v, p in r.precision.items())
        return (f"review of {r.report_date}: {r.added} new label(s), {r.unchanged} unchanged, {len(r.problems)} "
                f"row(s) left out{'; ' + precision if precision else ''}")
    if args.command == "serve":
        f.serve_here(args.inbox, args.workdir, args.timezone, args.cron, config)
        return "served"
    if args.command == "pipeline":
        return _calibration_line(f.pipeline_flow(args.raw, args.labels, args.workdir, config, args.resume))
    raise ValueError(f"unknown command {args.command}")


def _calibration_line(r) -> str:
    cal = r.calibration
    test = cal.test
    per_class = ", ".join(f"{k.removeprefix('roc_auc_')} {v:.3f}" for k, v in test.items()
                          if k.startswith("roc_auc_") and not k.startswith("roc_auc_ci"))
    ci = f", 95% CI {test['roc_auc_ci_low']:.3f}-{test['roc_auc_ci_high']:.3f}" if "roc_auc_ci_low" in test else ""
    return (f"{cal.model_name} v{cal.model_version}: test ROC-AUC {test.get('roc_auc', float('nan')):.3f}{ci} "
            f"({per_class}); score {cal.score_label}, threshold {cal.threshold:.4g} ({cal.rule}); {r.promoted_to}: {r.reason}")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # offline sites: no telemetry ERROR line
    # Prefect's temporary server gets 20 s to start by default; on a box busy with training it took 2 min.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    try:
        print(run(args))
    except KeyboardInterrupt:
        print("panelscan: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for the operator; for anything but a user error Prefect logged the traceback
        print(f"panelscan {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2 if is_user_error(exc) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
