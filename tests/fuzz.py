"""Seeded mutations of real image files (byte flips, cuts, splices of one format's header onto
another's body, inserted junk): what a flaky link or a broken camera writes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

FORMATS = {"png": ("PNG", {}), "jpg": ("JPEG", {"quality": 90}), "tif": ("TIFF", {}), "gif": ("GIF", {}),
           "bmp": ("BMP", {}), "webp": ("WEBP", {"lossless": True})}


def seeds(side: int = 48) -> dict[str, bytes]:
    """One small valid file per format."""
    yy, xx = np.mgrid[0:side, 0:side]
    pixels = (120 + 60 * np.sin(xx / 4.0) * np.cos(yy / 6.0)).astype(np.uint8)
    out = {}
    for ext, (fmt, options) in FORMATS.items():
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, fmt, **options)
        out[ext] = buffer.getvalue()
    return out


def mutate(data: bytes, donor: bytes, rng: np.random.Generator) -> bytes:
    data = bytearray(data)
    kind = rng.integers(5)
    if kind == 0:  # flip a few bytes
        for i in rng.integers(0, len(data), rng.integers(1, 20)):
            data[i] ^= int(rng.integers(1, 256))
    elif kind == 1:  # cut short
        data = data[: rng.integers(0, len(data))]
    elif kind == 2:  # this header, another file's body
        cut = int(rng.integers(8, 64))
        data = data[:cut] + donor[cut:]
    elif kind == 3:  # junk inserted
        at = int(rng.integers(0, len(data)))
        data = data[:at] + rng.integers(0, 256, rng.integers(1, 200), dtype=np.uint8).tobytes() + data[at:]
    else:  # a run of bytes overwritten with zeros or 0xff
        at, n = int(rng.integers(0, len(data))), int(rng.integers(1, 64))
        data[at:at + n] = bytes([0 if rng.random() < 0.5 else 255]) * len(data[at:at + n])
    return bytes(data)


def write_mutants(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """n mutated files under folder (names keep the original format's extension)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng, originals = np.random.default_rng(seed), seeds()
    names = list(originals)
    paths = []
    for i in range(n):
        ext, donor = names[i % len(names)], names[int(rng.integers(len(names)))]
        path = folder / f"m{i:05d}.{ext}"
        path.write_bytes(mutate(originals[ext], originals[donor], rng))
        paths.append(path)
    return paths
