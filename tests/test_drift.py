"""Drift watch and the inspector gallery, on real scoring runs."""

from __future__ import annotations

import json
from datetime import date
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image, ImageFilter

from pipeline.drift import check_drift, population_stability
from pipeline.stages import score_stage
from pipeline.synth import generate


def _brighten(folder: Path, gain: float) -> None:
    for path in folder.glob("*.png"):
        pixels = np.asarray(Image.open(path), dtype=np.float64)
        Image.fromarray(np.clip(pixels * gain, 0, 255).astype(np.uint8)).save(path)


def _defocus(folder: Path, radius: float) -> None:
    for path in folder.glob("*.png"):
        Image.open(path).filter(ImageFilter.GaussianBlur(radius)).save(path)


@pytest.mark.slow  # end to end: make test runs it, the quick loop leaves it out
def test_drift_fires_on_a_defocused_or_glaring_camera_and_not_on_a_fresh_clean_batch(champion, tmp_path: Path):
    """A soft lens lowers every clean score and flags no more than usual: only the distribution
    test sees it. Glare flags everything: the flag-rate rule sees it."""
    work, cfg = champion
    cfg = cfg.replace("score", batch_images=64)
    batches = {}
    for seed, (name, change) in enumerate((("clean", None), ("soft", lambda d: _defocus(d, 2)),
                                           ("glaring", lambda d: _brighten(d, 1.6)))):
        batches[name] = tmp_path / name
        generate(batches[name], n=60, seed=31 + seed, defect_frac=0.0)
        if change is not None:
            change(batches[name])
    calm = score_stage(batches["clean"], work, cfg, day=date(2026, 4, 1))
    with pytest.warns(UserWarning, match="DRIFT: clean-looking scores no longer match"):
        shifted = score_stage(batches["soft"], work, cfg, day=date(2026, 4, 2))
    with pytest.warns(UserWarning, match="DRIFT: 100% of 60 images flagged"):
        glaring = score_stage(batches["glaring"], work, cfg, day=date(2026, 4, 3))
    assert not calm.drift.drifted, calm.drift.message
    assert shifted.drift.drifted and shifted.drift.psi > 0.25 and shifted.drift.ks > calm.drift.ks
    assert glaring.drift.drifted
    assert "DRIFT" in (shifted.report_dir / "index.html").read_text()
    assert "DRIFT" not in (calm.report_dir / "index.html").read_text()
    assert json.loads((shifted.report_dir / "drift.json").read_text())["drifted"] is True


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shift():
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 1, 2000)
    assert population_stability(reference, rng.normal(0, 1, 500)) < 0.05
    assert population_stability(reference, rng.normal(1, 1, 500)) > 0.5
    few = check_drift(np.array([0.1, 0.2]), 1.0, list(np.linspace(0, 1, 101)))
    assert not few.drifted and "not checked" in few.message


class _Page(HTMLParser):
    """Collects tags, checks they nest, and gathers image sources."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.images: list[str] = []
        self.rows: list[dict] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img" and dict(attrs).get("src"):  # the enlarged view's images get theirs on click
            self.images.append(unquote(dict(attrs)["src"]))
        if tag == "tr" and "data-image" in dict(attrs):
            self.rows.append(dict(attrs))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f"unbalanced </{tag}>")


def test_gallery_is_valid_html_and_every_image_exists(champion, tmp_path: Path):
    work, cfg = champion
    inbox = tmp_path / "inbox"
    generate(inbox, n=24, seed=41)
    outcome = score_stage(inbox, work, cfg.replace("score", batch_images=64), day=date(2026, 4, 3))
    html = (outcome.report_dir / "index.html").read_text()
    page = _Page()
    page.feed(html)
    assert html.startswith("<!DOCTYPE html>") and not page.errors and not page.stack
    flagged = [r for r in page.rows if r["class"] == "flagged"]
    assert len(flagged) == outcome.n_flagged > 0 and len(page.images) == 2 * len(page.rows)  # crop + heatmap
    assert all((outcome.report_dir / src).is_file() for src in page.images)
    assert all((outcome.report_dir / unquote(r["data-source"])).is_file() for r in page.rows)  # the original
