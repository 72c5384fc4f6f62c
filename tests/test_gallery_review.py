"""The gallery's review in a real browser (headless Chromium driven by Playwright): decide with the
buttons and the keys, keep the decisions across a reload, show the near-threshold images on
request, enlarge, export review-<date>.csv; hostile file names and notes never run as HTML and
leave the export as a formula-free CSV. `make browser-test` installs Chromium and runs this."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
import pytest
import torch

from pipeline.gallery import write_gallery
from pipeline.images import write_png
from pipeline.report import REPORT_COLUMNS, crop_image_path, write_report

pytestmark = [pytest.mark.slow, pytest.mark.browser]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HOSTILE = '<img src=x onerror="window.hacked=1">.png'
FORMULA = "=cmd|' /C calc'!A0.png"


def _day(tmp_path: Path) -> Path:
    """A scored day: three flagged images (one with an HTML name, one with a formula name), one
    unflagged just under the threshold, one far below it; PNG originals beside the report."""
    raw, day = tmp_path / "inbox", tmp_path / "reports" / "2026-05-04"
    names, scores = ["a.png", HOSTILE, FORMULA, "near.png", "calm.png"], [3.0, 2.5, 2.0, 0.95, 0.2]
    rows = []
    for i, (name, score) in enumerate(zip(names, scores)):
        pixels = torch.full((1, 32, 32), 40 * i, dtype=torch.uint8)
        write_png(raw / name, pixels)
        heatmap = f"heatmaps/{i:016d}.png" if score >= 0.9 else ""
        if heatmap:
            write_png(day / heatmap, pixels.expand(3, -1, -1).contiguous())
            write_png(day / crop_image_path(heatmap), pixels)
        rows.append(dict.fromkeys(REPORT_COLUMNS, "") | dict(image_path=name, score=score, threshold=1.0,
                                                             flagged=score >= 1.0, severity=score, region="0,0,8,8",
                                                             heatmap_path=heatmap))
    table, _ = write_report(day, pd.DataFrame(rows))
    write_gallery(day, table, "panelscan 2026-05-04: panel-anomaly v3", raw=raw, date="2026-05-04")
    return day


@pytest.fixture()
def page(tmp_path: Path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="make browser-test installs Playwright")
    if CHROMIUM is None:
        pytest.skip("no Chromium: make browser-test installs Debian's chromium package")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = browser.new_context(accept_downloads=True)
        page = context.new_page()
        page.dialogs = []
        page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
        yield page
        browser.close()


def test_an_inspector_reviews_flagged_images_and_exports_the_decisions(page, tmp_path: Path):
    day = _day(tmp_path)
    page.goto((day / "index.html").as_uri())
    rows = page.locator("tbody tr")
    assert rows.count() == 4 and page.locator("tbody tr:visible").count() == 3  # near.png behind the filter
    page.check("#near")
    assert page.locator("tbody tr:visible").count() == 4
    assert page.locator("tr.near td.path").inner_text() == "near.png"

    first = page.locator("tbody tr").nth(0)
    first.locator("input.note").fill("<b>bold</b> =SUM(A1)")
    first.locator("button[data-label=crack]").click()
    page.keyboard.press("j")  # the clicked row is current; j moves to the next one
    page.keyboard.press("f")
    page.keyboard.press("j")
    page.keyboard.press("u")
    page.locator("tr.near button[data-label=loose_connector]").click()
    assert page.locator("#reviewed").inner_text() == "4 of 4 reviewed"

    page.reload()  # decisions live in the browser's storage while the page is opened from disk
    assert page.locator("button[aria-pressed=true]").count() == 4
    assert page.locator("tbody tr").nth(0).locator("input.note").input_value() == "<b>bold</b> =SUM(A1)"
    assert page.locator("tbody b").count() == 0 and page.locator("tbody img:not([src^=heatmaps])").count() == 0

    page.locator("tbody tr").nth(1).locator("button.view").click()
    viewer = page.locator("#viewer")
    assert viewer.is_visible() and viewer.locator("figcaption").inner_text() == HOSTILE
    assert viewer.locator("img.crop").get_attribute("src") == "heatmaps/0000000000000001.crop.png"
    original = viewer.locator("a.original").get_attribute("href")
    assert (day / unquote(original)).resolve() == (tmp_path / "inbox" / HOSTILE).resolve()
    page.keyboard.press("Escape")
    assert not viewer.is_visible()

    with page.expect_download() as download:
        page.click("#export")
    assert download.value.suggested_filename == "review-2026-05-04.csv"
    exported = tmp_path / "review.csv"
    download.value.save_as(exported)
    review = pd.read_csv(exported, dtype=str, keep_default_na=False)
    assert list(review.columns) == ["path", "label", "reviewed_at", "note"]
    assert dict(zip(review["path"], review["label"])) == {
        "a.png": "crack", HOSTILE: "false_alarm", f"'{FORMULA}": "unsure", "near.png": "loose_connector"}
    assert review.loc[review["path"] == "a.png", "note"].item() == "<b>bold</b> =SUM(A1)"
    assert not any(cell.startswith(("=", "+", "-", "@")) for cell in review.to_numpy().ravel())
    assert page.evaluate("window.hacked") is None and page.dialogs == []


def test_from_a_scored_day_three_clicks_reach_the_labels_calibration_and_mlflow(page, champion, tmp_path: Path):
    """The issue's scenario end to end: a real scoring run's gallery, one decision of each kind
    clicked, exported, imported with the review stage, calibration re-run."""
    from datetime import date

    import mlflow

    from pipeline.stages import calibrate_stage, review_stage, score_stage
    from pipeline.synth import generate

    work, cfg = champion
    generate(tmp_path / "inbox" / "2026-04-03", n=24, seed=41)
    day = score_stage(tmp_path / "inbox" / "2026-04-03", work, cfg, day=date(2026, 4, 3)).report_dir
    page.goto((day / "index.html").as_uri())
    rows = page.locator("tbody tr.flagged")
    names = [rows.nth(i).get_attribute("data-image") for i in range(3)]
    for i, label in enumerate(("crack", "false_alarm", "unsure")):
        rows.nth(i).locator(f"button[data-label={label}]").click()
    with page.expect_download() as download:
        page.click("#export")
    exported = tmp_path / download.value.suggested_filename
    download.value.save_as(exported)

    result = review_stage(exported, work, cfg)
    assert result.added == 3 and result.precision["1"]["precision"] == 0.5
    manifest = pd.read_csv(work / "processed" / "manifest.csv", dtype=str, keep_default_na=False)
    labels = dict(zip(manifest["source_path"], manifest["label"]))
    assert [labels[f"2026-04-03/{n}"] for n in names] == ["crack", "ok", "uncertain"]
    assert calibrate_stage(work, cfg).calibration.val["n_reviewed_images"] == 2
    runs = mlflow.search_runs(experiment_names=["panel-score"])
    assert runs.loc[runs["tags.mlflow.runName"] == "review-2026-04-03", "metrics.review_precision"].tolist() == [0.5]
