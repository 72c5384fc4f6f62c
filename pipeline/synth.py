"""Synthetic equipment panels: the embedded default data set.

Each camera frame holds one panel (brushed-metal texture, four screws, a connector block with
pins) on a background, with varied offset, small rotation, illumination and white balance.
Defects are subtle on purpose: thin dark branching cracks, or a loose connector (block shifted
and tilted with a dark gap, or a missing pin). The image mean barely moves; the structure does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from pipeline.files import atomic_write_csv
from pipeline.labels import CRACK, LOOSE_CONNECTOR, OK

FRAME = 256
PANEL_W, PANEL_H = 168, 128
CONNECTOR = (54, 86, 114, 112)  # x0, y0, x1, y1 inside the panel
N_PINS = 6
LABELS = (OK, CRACK, LOOSE_CONNECTOR)


@dataclass(frozen=True)
class Scene:
    """Camera conditions drawn per frame. The default is the embedded demo set; HARD_SCENE
    stresses panel localisation (dim or glaring light, backgrounds brighter or darker than the
    panel with strong gradients, heavy sensor noise, panels that nearly fill the frame)."""

    light: tuple[float, float] = (0.82, 1.18)  # panel illumination gain
    light_slope: float = 0.08  # illumination gradient across the panel
    background: tuple[float, float] = (0.12, 0.32)  # background level in [0, 1]
    background_slope: float = 0.1  # background gradient across the frame
    noise: float = 1.5  # sensor noise, grey levels
    scale: tuple[float, float] = (1.0, 1.0)  # panel size relative to PANEL_W x PANEL_H


HARD_SCENE = Scene(light=(0.45, 1.6), light_slope=0.3, background=(0.05, 0.85), background_slope=0.35,
                   noise=6.0, scale=(0.7, 1.4))


@dataclass(frozen=True)
class SynthFrame:
    image: Image.Image  # RGB frame
    label: str
    panel_box: tuple[int, int, int, int]  # true panel box in the frame (x0, y0, x1, y1)
    defect_box: tuple[int, int, int, int] | None  # true defect box in the frame


def _texture(rng: np.random.Generator, base: float) -> np.ndarray:
    """Brushed metal: horizontal streaks plus fine noise, values in [0, 1]."""
    streaks = rng.normal(0, 1, (PANEL_H, PANEL_W + 32))
    kernel = np.ones(32) / 32.0
    streaks = np.stack([np.convolve(row, kernel, mode="valid")[:PANEL_W] for row in streaks])
    return base + 0.035 * streaks / streaks.std() + rng.normal(0, 0.008, (PANEL_H, PANEL_W))


def _draw_connector(draw: ImageDraw.ImageDraw, box: tuple[float, ...], level: int, missing: set[int]) -> None:
    x0, y0, x1, y1 = box
    draw.rectangle((x0, y0, x1, y1), fill=int(level * 0.35))
    draw.rectangle((x0, y0, x1, y1), outline=int(level * 0.2), width=2)
    pitch = (x1 - x0) / N_PINS
    for i in range(N_PINS):
        px = x0 + pitch * (i + 0.5)
        fill = int(level * 0.12) if i in missing else min(255, int(level * 1.45))
        draw.rectangle((px - 2.5, y0 + 7, px + 2.5, y1 - 7), fill=fill)


def _crack(draw: ImageDraw.ImageDraw, rng: np.random.Generator) -> tuple[float, float, float, float]:
    """A thin branching polyline; returns its bounding box inside the panel."""
    x, y = rng.uniform(18, PANEL_W - 18), rng.uniform(14, PANEL_H - 14)
    angle = rng.uniform(0, 2 * math.pi)
    points_all: list[tuple[float, float]] = []
    stack = [(x, y, angle, int(rng.integers(6, 13)))]
    while stack:
        x, y, angle, steps = stack.pop()
        points = [(x, y)]
        for _ in range(steps):
            angle += rng.normal(0, 0.45)
            step = rng.uniform(3.0, 6.0)
            x = float(np.clip(x + step * math.cos(angle), 4, PANEL_W - 4))
            y = float(np.clip(y + step * math.sin(angle), 4, PANEL_H - 4))
            points.append((x, y))
            if rng.random() < 0.12 and len(stack) < 2:
                stack.append((x, y, angle + rng.choice([-1, 1]) * rng.uniform(0.6, 1.2), int(rng.integers(2, 5))))
        draw.line(points, fill=255, width=int(rng.choice([2, 3], p=[0.6, 0.4])), joint="curve")
        points_all += points
    xs, ys = zip(*points_all)
    return min(xs) - 2, min(ys) - 2, max(xs) + 2, max(ys) + 2


def _panel(rng: np.random.Generator, label: str) -> tuple[np.ndarray, tuple[float, float, float, float] | None]:
    """Grayscale panel in [0,1] (PANEL_H, PANEL_W) and the defect box inside it."""
    surface = _texture(rng, base=rng.uniform(0.5, 0.6))
    layer = Image.fromarray(np.clip(surface * 255, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(layer)
    level = int(surface.mean() * 255)
    draw.rectangle((0, 0, PANEL_W - 1, PANEL_H - 1), outline=int(level * 0.7), width=3)  # bevelled rim
    for cx, cy in ((10, 10), (PANEL_W - 11, 10), (10, PANEL_H - 11), (PANEL_W - 11, PANEL_H - 11)):
        draw.ellipse((cx - 5, cy - 5, cx + 5, cy + 5), fill=int(level * 0.75), outline=int(level * 0.5))
        a = rng.uniform(0, math.pi)
        dx, dy = 4 * math.cos(a), 4 * math.sin(a)
        draw.line((cx - dx, cy - dy, cx + dx, cy + dy), fill=int(level * 0.35), width=1)
    defect_box = None
    if label == LOOSE_CONNECTOR and rng.random() < 0.5:
        missing = {int(rng.integers(0, N_PINS))}
        _draw_connector(draw, CONNECTOR, level, missing)
        pitch = (CONNECTOR[2] - CONNECTOR[0]) / N_PINS
        px = CONNECTOR[0] + pitch * (min(missing) + 0.5)
        defect_box = (px - 4, CONNECTOR[1] + 5, px + 4, CONNECTOR[3] - 5)
    elif label == LOOSE_CONNECTOR:
        # Shifted and tilted block; the socket it left behind shows as a dark gap.
        draw.rectangle(CONNECTOR, fill=int(level * 0.08))
        block = Image.new("L", (PANEL_W, PANEL_H), 0)
        mask = Image.new("L", (PANEL_W, PANEL_H), 0)
        _draw_connector(ImageDraw.Draw(block), CONNECTOR, level, set())
        ImageDraw.Draw(mask).rectangle(CONNECTOR, fill=255)
        dx, dy = rng.choice([-1, 1]) * rng.uniform(2.5, 5), rng.uniform(-4, -1.5)
        tilt = rng.choice([-1, 1]) * rng.uniform(2.5, 6)
        centre = ((CONNECTOR[0] + CONNECTOR[2]) / 2, (CONNECTOR[1] + CONNECTOR[3]) / 2)
        moved = dict(angle=tilt, center=centre, translate=(dx, dy), resample=Image.BILINEAR)
        layer.paste(block.rotate(**moved), (0, 0), mask.rotate(**moved))
        defect_box = (CONNECTOR[0] - 8, CONNECTOR[1] - 8, CONNECTOR[2] + 8, CONNECTOR[3] + 8)
    else:
        _draw_connector(draw, CONNECTOR, level, set())
    panel = np.asarray(layer, dtype=np.float64) / 255.0
    if label == CRACK:
        mask = Image.new("L", (PANEL_W, PANEL_H), 0)
        defect_box = _crack(ImageDraw.Draw(mask), rng)
        crack = np.asarray(mask.filter(ImageFilter.GaussianBlur(0.4)), dtype=np.float64) / 255.0
        panel = panel * (1.0 - rng.uniform(0.5, 0.65) * crack)
    return panel, defect_box


def _background(rng: np.random.Generator, scene: Scene) -> np.ndarray:
    yy, xx = np.mgrid[0:FRAME, 0:FRAME] / FRAME
    gx, gy = rng.uniform(-scene.background_slope, scene.background_slope, 2)
    base = rng.uniform(*scene.background) + gx * xx + gy * yy
    return base + rng.normal(0, 0.02, (FRAME, FRAME))


def render_frame(rng: np.random.Generator, label: str, scene: Scene = Scene()) -> SynthFrame:
    """One camera frame holding one panel with the given label."""
    panel, defect = _panel(rng, label)
    yy, xx = np.mgrid[0:PANEL_H, 0:PANEL_W]
    slope = scene.light_slope
    light = rng.uniform(*scene.light) * (1 + rng.uniform(-slope, slope) * (xx / PANEL_W - 0.5)
                                         + rng.uniform(-slope, slope) * (yy / PANEL_H - 0.5))
    panel_img = Image.fromarray(np.clip(panel * light * 255, 0, 255).astype(np.uint8))
    if scene.scale != (1.0, 1.0):
        k = rng.uniform(*scene.scale)
        panel_img = panel_img.resize((round(PANEL_W * k), round(PANEL_H * k)), Image.BILINEAR)
        defect = None if defect is None else tuple(v * k for v in defect)
    angle = rng.uniform(-4, 4)
    rotated = panel_img.rotate(angle, resample=Image.BILINEAR, expand=True)
    alpha = Image.new("L", panel_img.size, 255).rotate(angle, resample=Image.BILINEAR, expand=True)
    ox = int(rng.integers(4, FRAME - rotated.width - 4))
    oy = int(rng.integers(4, FRAME - rotated.height - 4))
    frame = Image.fromarray(np.clip(_background(rng, scene) * 255, 0, 255).astype(np.uint8))
    frame.paste(rotated, (ox, oy), alpha)
    frame = frame.filter(ImageFilter.GaussianBlur(0.35))  # camera optics
    noisy = np.asarray(frame, dtype=np.float64) + rng.normal(0, scene.noise, (FRAME, FRAME))
    tint = rng.uniform(0.94, 1.06, 3)  # white balance
    rgb = np.clip(noisy[..., None] * tint, 0, 255).astype(np.uint8)
    panel_box = _bbox_in_frame(alpha, ox, oy)
    defect_box = None
    if defect is not None:
        defect_box = _rotate_box(defect, angle, panel_img.size, rotated.size, ox, oy)
    return SynthFrame(Image.fromarray(rgb, "RGB"), label, panel_box, defect_box)


def _bbox_in_frame(alpha: Image.Image, ox: int, oy: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = alpha.point(lambda v: 255 if v > 127 else 0).getbbox()
    return ox + x0, oy + y0, ox + x1, oy + y1


def _rotate_box(box, angle, size, rotated_size, ox, oy) -> tuple[int, int, int, int]:
    """Axis-aligned frame box of a panel-space box after PIL's rotate(angle, expand=True)."""
    (w, h), (rw, rh) = size, rotated_size
    a = math.radians(angle)
    corners = [(box[0], box[1]), (box[2], box[1]), (box[0], box[3]), (box[2], box[3])]
    pts = []
    for x, y in corners:  # PIL rotates counter-clockwise about the centre
        cx, cy = x - w / 2, y - h / 2
        pts.append((cx * math.cos(a) + cy * math.sin(a) + rw / 2, -cx * math.sin(a) + cy * math.cos(a) + rh / 2))
    xs, ys = zip(*pts)
    return int(min(xs)) + ox, int(min(ys)) + oy, int(math.ceil(max(xs))) + ox, int(math.ceil(max(ys))) + oy


def label_plan(n: int, rng: np.random.Generator, defect_frac: float = 0.3) -> list[str]:
    """Exactly balanced defects: defect_frac of frames split evenly between crack and loose_connector."""
    n_defect = int(round(n * defect_frac))
    labels = [CRACK] * (n_defect // 2) + [LOOSE_CONNECTOR] * (n_defect - n_defect // 2)
    labels += [OK] * (n - len(labels))
    return list(rng.permutation(labels))


def generate(out: Path, n: int = 600, seed: int = 0, defect_frac: float = 0.3,
             prefix: str = "frame", progress=None, scene: Scene = Scene()) -> pd.DataFrame:
    """Write n frames + labels.csv + panels.csv (true boxes) under out; deterministic per seed."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i, label in enumerate(label_plan(n, rng, defect_frac)):
        frame = render_frame(np.random.default_rng([seed, i]), label, scene)
        name = f"{prefix}_{seed:03d}_{i:05d}.png"
        # zlib level 1: 4x faster than PIL's default 6 for 2 % larger files (noisy frames barely compress)
        frame.image.save(out / name, compress_level=1)
        rows.append(dict(path=name, label=label, panel_id=f"panel-{seed:03d}-{i:05d}",
                         panel_box=",".join(map(str, frame.panel_box)),
                         defect_box="" if frame.defect_box is None else ",".join(map(str, frame.defect_box))))
        if progress is not None:
            progress(i + 1, n)
    table = pd.DataFrame(rows)
    atomic_write_csv(out / "labels.csv", table[["path", "label", "panel_id"]])
    atomic_write_csv(out / "panels.csv", table[["path", "panel_box", "defect_box"]])
    return table
