"""The nightly scoring flow: the day's images, the pinned champion, a clear failure without
one, a drift message on the run's state, and Dask shards giving the same report."""

from __future__ import annotations

import os
import shutil
from datetime import date, datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from pipeline.errors import UserError
from pipeline.inbox import arrived_on
from pipeline.synth import generate


def _report(day_dir: Path) -> pd.DataFrame:
    return pd.read_csv(day_dir / "scores.csv", keep_default_na=False).sort_values("image_path").reset_index(drop=True)


def test_arrivals_by_day_folder_or_by_modification_time_in_the_site_timezone(tmp_path: Path):
    inbox = tmp_path / "inbox"
    generate(inbox / "2026-05-01", n=3, seed=1)
    folder, paths = arrived_on(inbox, date(2026, 5, 1))
    assert folder == inbox / "2026-05-01" and len([p for p in paths if p.suffix == ".png"]) == 3
    loose = tmp_path / "loose"
    generate(loose, n=4, seed=2)
    pngs = sorted(loose.glob("*.png"))
    late_evening_utc = datetime(2026, 5, 1, 23, 30, tzinfo=timezone.utc).timestamp()  # 2 May 01:30 in Berlin
    for path in pngs[:2]:
        os.utime(path, (late_evening_utc, late_evening_utc))
    assert arrived_on(loose, date(2026, 5, 1), "UTC")[1] == pngs[:2]
    assert arrived_on(loose, date(2026, 5, 1), "Europe/Berlin")[1] == []
    assert arrived_on(loose, date(2026, 5, 2), "Europe/Berlin")[1] == pngs[:2]
    with pytest.raises(UserError, match="inbox folder does not exist"):
        arrived_on(tmp_path / "nowhere", date(2026, 5, 1))


def test_nightly_without_a_champion_fails_with_a_clear_reason(tmp_path: Path):
    from flows.prefect_flows import nightly_flow

    generate(tmp_path / "inbox" / "2026-05-01", n=2, seed=3)
    state = nightly_flow(str(tmp_path / "inbox"), str(tmp_path / "w"), day="2026-05-01", return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="no version with alias 'champion'"):
        state.result()


@pytest.mark.slow  # end to end: make test runs it, the quick loop leaves it out
def test_nightly_scores_only_the_days_images_and_dask_shards_match(champion, tmp_path: Path):
    from flows.prefect_flows import nightly_flow, on_dask

    work, cfg = champion
    config = cfg.replace("score", batch_images=8).to_dict()
    inbox = tmp_path / "inbox"
    generate(inbox / "2026-05-01", n=20, seed=4)
    generate(inbox / "2026-05-02", n=5, seed=5)
    state = nightly_flow(str(inbox), str(work), day="2026-05-01", config=config, return_state=True)
    outcome = state.result()
    assert state.is_completed() and (outcome.n_scored, outcome.n_report) == (20, 20)
    again = nightly_flow(str(inbox), str(work), day="2026-05-01", config=config)
    assert (again.n_scored, again.n_skipped, again.n_report) == (0, 20, 20)

    shutil.copytree(inbox / "2026-05-01", inbox / "2026-05-03")  # the same images on another day
    sharded = on_dask(nightly_flow, workers=2)(str(inbox), str(work), day="2026-05-03", config=config, shards=2)
    assert (sharded.n_scored, sharded.n_report) == (20, 20)
    single, dask = _report(outcome.report_dir), _report(sharded.report_dir)
    columns = ["image_path", "crop_id", "score", "flagged", "region", "heatmap_path", "suspected_defect"]
    assert single[columns].equals(dask[columns])


def test_a_drifted_night_completes_with_the_drift_in_its_state_message(champion, tmp_path: Path):
    from flows.prefect_flows import nightly_flow
    from tests.test_drift import _brighten

    work, cfg = champion
    inbox = tmp_path / "inbox"
    generate(inbox / "2026-05-04", n=30, seed=6, defect_frac=0.0)
    _brighten(inbox / "2026-05-04", 1.6)
    with pytest.warns(UserWarning, match="DRIFT"):
        state = nightly_flow(str(inbox), str(work), day="2026-05-04", config=cfg.to_dict(), return_state=True)
    assert state.is_completed() and state.message.startswith("DRIFT")
