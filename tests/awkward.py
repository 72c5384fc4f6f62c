"""A raw folder of awkward and broken files, as cameras, people and spreadsheets make them, with
what ingest must do with each: accept it (and keep its label) or quarantine it with a plain reason.
The README's list of input kinds tried is this list."""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 96


@dataclass(frozen=True)
class Kind:
    name: str  # file name in the raw folder
    what: str  # the kind of input, for the README
    make: Callable[[np.ndarray], bytes]  # the frame's pixels -> the file's bytes
    reason: str | None = None  # None: accepted; else the start of its quarantine reason
    label: str = "ok"  # its row in labels.csv ("" for no row)


def _pil(mode: str | None = None, fmt: str = "PNG", convert: Callable[[np.ndarray], Image.Image] | None = None,
         **save) -> Callable[[np.ndarray], bytes]:
    def make(pixels: np.ndarray) -> bytes:
        image = convert(pixels) if convert else Image.fromarray(pixels)
        if mode:
            image = image.convert(mode)
        out = io.BytesIO()
        image.save(out, fmt, **save)
        return out.getvalue()
    return make


def _png16_grey_alpha(pixels: np.ndarray) -> bytes:
    """16-bit grey + alpha PNG (colour type 4), which PIL cannot write."""
    height, width = pixels.shape
    rows = b"".join(b"\x00" + b"".join(struct.pack(">HH", int(v) * 257, 65535) for v in row) for row in pixels)
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 16, 4, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _png_header_declaring(width: int, height: int) -> bytes:
    small = _pil()(np.zeros((8, 8), np.uint8))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return small[:8] + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + small[33:]


def _jpeg_declaring(width: int, height: int) -> bytes:
    data = bytearray(_pil(fmt="JPEG")(np.zeros((8, 8), np.uint8)))
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _tiff_bomb(_: np.ndarray) -> bytes:
    """A 2 kB TIFF that decodes to 60 million pixels (CCITT group 4 compresses blank pages to nothing)."""
    out = io.BytesIO()
    Image.new("1", (10_000, 6_000)).save(out, "TIFF", compression="group4")
    return out.getvalue()


def _animated_gif(pixels: np.ndarray) -> bytes:
    frames = [Image.fromarray(pixels), Image.fromarray(255 - pixels)]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return out.getvalue()


def _multipage_tiff(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "TIFF", save_all=True, append_images=[Image.fromarray(255 - pixels)])
    return out.getvalue()


def _exif_rotated(pixels: np.ndarray) -> bytes:
    image = Image.fromarray(np.ascontiguousarray(np.rot90(pixels)))  # stored on its side ...
    exif = image.getexif()
    exif[0x0112] = 6  # ... with the camera's "rotate 90° clockwise" tag
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif.tobytes(), quality=95)
    return out.getvalue()


def _rgb(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.stack([pixels] * 3, axis=-1))


def _truncated(make: Callable[[np.ndarray], bytes]) -> Callable[[np.ndarray], bytes]:
    return lambda pixels: make(pixels)[: len(make(pixels)) // 2]


def _damaged_jpeg(pixels: np.ndarray) -> bytes:
    data = bytearray(_pil(fmt="JPEG")(pixels))
    data[200:-200] = bytes(len(data) - 400)  # the scan data zeroed, the end marker intact
    return bytes(data)


def _pdf(_: np.ndarray) -> bytes:
    return b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def _noise(_: np.ndarray) -> bytes:
    return np.random.default_rng(5).integers(0, 256, 4096, dtype=np.uint8).tobytes()


KINDS: list[Kind] = [
    Kind("grey8.png", "8-bit grey PNG", _pil()),
    Kind("grey16.png", "16-bit grey PNG", _pil(convert=lambda p: Image.fromarray(p.astype(np.uint16) * 257))),
    Kind("grey16_alpha.png", "16-bit grey + alpha PNG", _png16_grey_alpha),
    Kind("rgb.png", "RGB PNG", _pil(convert=_rgb)),
    Kind("rgba.png", "RGBA PNG", _pil("RGBA", convert=_rgb)),
    Kind("palette.png", "palette PNG", _pil("P", convert=_rgb)),
    Kind("palette_transparent.png", "palette PNG with a transparent colour", _pil("P", convert=_rgb, transparency=0)),
    Kind("baseline.jpg", "baseline JPEG", _pil(fmt="JPEG", quality=95)),
    Kind("progressive.jpg", "progressive JPEG", _pil(fmt="JPEG", quality=95, progressive=True)),
    Kind("cmyk.jpg", "CMYK JPEG", _pil("CMYK", fmt="JPEG", convert=_rgb, quality=95)),
    Kind("exif_rotated.jpg", "JPEG stored sideways with an EXIF orientation tag", _exif_rotated),
    Kind("grey16.tif", "16-bit grey TIFF", _pil(fmt="TIFF", convert=lambda p: Image.fromarray(p.astype(np.uint16) * 257))),
    Kind("float.tif", "32-bit float TIFF", _pil(fmt="TIFF", convert=lambda p: Image.fromarray(p.astype(np.float32) / 255))),
    Kind("bilevel.tif", "1-bit TIFF", _pil("1", fmt="TIFF")),
    Kind("cmyk.tif", "CMYK TIFF", _pil("CMYK", fmt="TIFF", convert=_rgb)),
    Kind("multipage.tif", "multi-page TIFF (first page used)", _multipage_tiff),
    Kind("frame.bmp", "BMP", _pil(fmt="BMP")),
    Kind("animated.gif", "animated GIF (first frame used)", _animated_gif),
    Kind("frame.webp", "lossless WebP", _pil(fmt="WEBP", lossless=True)),
    Kind("frame.pgm", "PGM (netpbm)", _pil(fmt="PPM")),
    Kind("pänel 1 é.png", "name with spaces and accents", _pil()),
    Kind("=HYPERLINK(1).png", "name a spreadsheet would run as a formula", _pil(), label="crack"),
    Kind("UPPER.PNG", "upper-case extension", _pil()),
    Kind("no_extension", "no file extension", _pil()),
    Kind("png_named.jpg", "PNG bytes under a .jpg name", _pil()),
    Kind("sub/folder/deep.png", "file in a sub-folder", _pil(), label="loose_connector"),
    Kind("zero.png", "zero-byte file", lambda _: b"", "empty file"),
    Kind("truncated.png", "PNG cut short", _truncated(_pil()), "PNG ends early"),
    Kind("truncated.jpg", "JPEG cut short", _truncated(_pil(fmt="JPEG")), "JPEG ends early"),
    Kind("damaged.jpg", "JPEG with its scan data zeroed", _damaged_jpeg, "JPEG data is damaged"),
    Kind("page.jpg", "HTML page saved as .jpg", lambda _: b"<!DOCTYPE html><html><body>404</body></html>",
         "not an image: the bytes are HTML"),
    Kind("notes.png", "text file named .png", lambda _: b"camera 3 lens cleaned 02:10\n", "not an image: the bytes are plain text"),
    Kind("scan.png", "PDF named .png", _pdf, "not an image: the bytes are a PDF document"),
    Kind("noise.jpg", "random bytes", _noise, "not an image: the bytes are not in any image format"),
    Kind("one_pixel.png", "1x1 PNG", _pil(convert=lambda p: Image.fromarray(p[:1, :1])), "too small: 1x1 px"),
    Kind("bomb.png", "PNG header declaring 60000x60000", lambda _: _png_header_declaring(60_000, 60_000), "too large"),
    Kind("bomb.jpg", "JPEG header declaring 60000x60000", lambda _: _jpeg_declaring(60_000, 60_000), "too large"),
    Kind("bomb.tif", "2 kB TIFF decoding to 60 Mpx", _tiff_bomb, "too large: 10000x6000"),
    Kind("a_copy_of_labelled.png", "unlabelled copy of a labelled file", _pil(), "duplicate of labelled_original.png",
         label=""),
    Kind("labelled_original.png", "labelled file with an identical copy", _pil(), label="crack"),
]
SKIPPED = {".DS_Store": b"\x00\x00\x00\x01Bud1", "notes.md": b"# shift notes\n", "._grey8.png": b"\x00\x05\x16\x07"}


def frame(seed: int) -> np.ndarray:
    """A textured panel frame, different per seed (identical bytes only where a kind says so)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    image = 110 + 40 * np.sin(xx / (5 + seed % 7)) + 20 * np.cos(yy / 9) + rng.normal(0, 6, (SIDE, SIDE))
    return np.clip(image, 0, 255).astype(np.uint8)


def write_awkward_raw(raw: Path, outside: Path) -> dict[str, Kind]:
    """Write every kind under raw (plus hidden/sidecar files ingest must skip, a symlink inside
    and one out of raw) and a labels.csv as a spreadsheet saves it (UTF-8 with BOM, `;`, CRLF)
    holding one conflicting row. Returns path -> kind for everything ingest should list."""
    raw.mkdir(parents=True, exist_ok=True)
    kinds = {}
    for i, kind in enumerate(KINDS):
        path = raw / kind.name
        path.parent.mkdir(parents=True, exist_ok=True)
        seed = 999 if kind.name in ("a_copy_of_labelled.png", "labelled_original.png") else i
        path.write_bytes(kind.make(frame(seed)))
        kinds[kind.name] = kind
    for name, data in SKIPPED.items():
        (raw / name).write_bytes(data)
    outside.write_bytes(_pil()(frame(77)))
    os.symlink(outside, raw / "link_out.png")
    kinds["link_out.png"] = Kind("link_out.png", "symlink leading out of the raw folder", _pil(), "symlink leaves the raw root")
    os.symlink(raw / "grey8.png", raw / "link_in.png")
    kinds["link_in.png"] = Kind("link_in.png", "symlink to another file of the raw folder", _pil(),
                                "duplicate of grey8.png", label="")
    rows = [f"{k.name};{k.label.replace('_', ' ').title() if i % 3 == 0 else k.label};panel-{i}"
            for i, k in enumerate(KINDS) if k.label]
    rows.append("grey8.png;crack;panel-0")  # conflicts with grey8.png;Ok above
    text = "Path;Label;panel_id\r\n" + "\r\n".join(rows) + "\r\n"
    (raw / "labels.csv").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    return kinds


def readme_list() -> str:
    """The README's list of kinds tried (python -c 'from tests.awkward import readme_list; print(readme_list())')."""
    accepted = [k.what for k in KINDS if k.reason is None]
    refused = [f"{k.what} ({k.reason}...)" for k in KINDS if k.reason]
    refused += ["symlink leading out of the raw folder (symlink leaves the raw root...)",
                "symlink to another file of the folder (duplicate of ...)"]
    return (f"Accepted ({len(accepted)}): " + "; ".join(accepted) + f".\n\nQuarantined ({len(refused)}): "
            + "; ".join(refused) + f".\n\nSkipped (not images): {', '.join(SKIPPED)}.")
