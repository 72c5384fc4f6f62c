"""Image decoding with validation: every failure becomes a reason naming the file."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.io import ImageReadMode, decode_image, encode_png
from torchvision.transforms.v2.functional import rgb_to_grayscale

from pipeline.files import atomic_write_bytes, sha256_bytes


class ImageRejected(ValueError):
    """An input that cannot be used; the message is the quarantine reason."""


@dataclass(frozen=True)
class DecodedImage:
    path: Path
    sha256: str
    pixels: torch.Tensor  # uint8, (1, H, W) grayscale


_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
          (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"RIFF", "WebP"))
_NOT_IMAGES = ((b"%PDF", "a PDF document"), (b"PK\x03\x04", "a ZIP archive"), (b"\x1f\x8b", "gzip data"),
               (b"<?xml", "XML"), (b"{", "JSON or text"))


TORCHVISION_DECODES = ("JPEG", "GIF", "WebP")  # survived 3,000 fuzzed files each (tests/fuzz.py)


def image_format(data: bytes) -> str | None:
    """The image format the first bytes announce, or None."""
    return next((name for magic, name in _MAGIC if data.startswith(magic)), None)


def what_the_bytes_are(data: bytes) -> str:
    """A plain-words guess at a file that is not an image, for the quarantine reason."""
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
        return "HTML (a web page saved under an image name?)"
    found = next((name for magic, name in _NOT_IMAGES if head.startswith(magic.lower())), None)
    if found:
        return found
    if all(32 <= b < 127 or b in b"\r\n\t" for b in data[:512]):
        return "plain text"
    return "not in any image format panelscan reads (PNG, JPEG, TIFF, BMP, GIF, WebP)"


def _cut_short(data: bytes) -> str | None:
    """libpng and libjpeg happily decode a file cut short and fill in the rest: check the end marker."""
    kind = image_format(data)
    if kind == "PNG" and b"IEND" not in data[-32:]:
        return "PNG ends early (no IEND chunk): the file was cut short"
    if kind == "JPEG" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return "JPEG ends early (no end-of-image marker): the file was cut short"
    return None


def _too_large(width: int, height: int, max_pixels: int) -> ImageRejected:
    return ImageRejected(f"too large: {width}x{height} is more than {max_pixels:,} pixels (decompression-bomb guard; "
                         f"raise ingest.max_pixels if such frames are real)")


def _check_declared_size(data: bytes, max_pixels: int) -> None:
    """Reject decompression bombs from the header alone, before decoding a single pixel."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's remarks on damaged headers: the reason comes from decoding
            with Image.open(io.BytesIO(data)) as header:
                width, height = header.size
    except Image.DecompressionBombError:
        raise ImageRejected(f"too large: the header declares over {2 * Image.MAX_IMAGE_PIXELS:,} pixels "
                            f"(decompression-bomb guard)") from None
    except (OSError, ValueError, SyntaxError):
        return  # not something PIL can size; the decoder gives the reason
    if width * height > max_pixels:
        raise _too_large(width, height, max_pixels)


def decode_file(path: Path, min_side: int = 32, max_pixels: int = 50_000_000) -> DecodedImage:
    """Read and decode one file to grayscale uint8, or raise ImageRejected with the reason."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageRejected(f"cannot be read: {(exc.strerror or str(exc)).lower()}") from exc
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    cut = _cut_short(data)
    if cut:
        raise ImageRejected(cut)
    _check_declared_size(data, max_pixels)
    pixels = _decode_gray(data)
    _, height, width = pixels.shape
    if min(height, width) < min_side:
        raise ImageRejected(f"too small: {width}x{height} px, under the {min_side} px minimum side")
    if height * width > max_pixels:
        raise _too_large(width, height, max_pixels)
    return DecodedImage(Path(path), sha256_bytes(data), pixels)


def _decode_gray(data: bytes) -> torch.Tensor:
    """Grayscale uint8 (1, H, W), EXIF orientation applied, the first frame of an animation.
    torchvision's decoders for JPEG (incl. CMYK), GIF and WebP; PIL for PNG and the rest (TIFF,
    BMP, ...): torchvision 0.29's PNG decoder kills the process on a libpng error (found by
    tests/fuzz.py), PIL raises an exception."""
    kind = image_format(data)
    if kind not in TORCHVISION_DECODES:
        return _decode_with_pil_or_reject(data)
    try:
        mode = ImageReadMode.RGB if kind == "WebP" else ImageReadMode.GRAY  # WebP warns on GRAY
        pixels = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode, apply_exif_orientation=True)
    except (RuntimeError, ValueError):
        return _decode_with_pil_or_reject(data)
    if pixels.ndim == 4:  # an animated GIF: its frames, in colour whatever the mode asked
        pixels = pixels[0]
    if pixels.shape[0] != 1:
        pixels = rgb_to_grayscale(pixels[:3])
    return pixels


def _decode_with_pil_or_reject(data: bytes) -> torch.Tensor:
    try:
        return _decode_with_pil(data)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError) as exc:
        kind = image_format(data)
        raise ImageRejected(f"{kind} data is damaged and cannot be decoded" if kind else
                            f"not an image: the bytes are {what_the_bytes_are(data)}") from exc


def _float_to_uint8(array: np.ndarray) -> np.ndarray:
    """Float pixels (a 32-bit TIFF): [0, 1] as is, any other range stretched; NaN and inf as black."""
    array = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 1:
        array = (array - low) / (high - low) if high > low else np.zeros_like(array)
    return np.round(array * 255.0).astype(np.uint8)


def _decode_with_pil(data: bytes) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the size was checked already; a damaged file gets its reason
        with Image.open(io.BytesIO(data)) as opened:
            opened.seek(0)  # a multi-page TIFF: the first page
            opened.load()
            image = ImageOps.exif_transpose(opened)
    if image.mode == "F":
        array = _float_to_uint8(np.asarray(image))
    elif image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit (or 32-bit) grayscale: scale the type's range to 8 bits, never clip at 255
        array = np.asarray(image).astype(np.float64)
        full = 65535.0 if image.mode.startswith("I;16") or array.max() <= 65535 else float(array.max())
        array = np.clip(np.round(array / full * 255.0), 0, 255).astype(np.uint8)
    else:
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA").convert("RGB")  # drop alpha: the camera's pixels are what count
        array = np.asarray(image.convert("L"))
    return torch.from_numpy(array.copy())[None]


def write_png(path: Path, pixels: torch.Tensor) -> Path:
    """Write a uint8 (C, H, W) tensor as PNG, atomically."""
    return atomic_write_bytes(path, encode_png(pixels.contiguous()).numpy().tobytes())


def to_float(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> floats in [0, 1], the models' input."""
    return pixels.float() / 255.0


def float_batches(crops: torch.Tensor, batch_size: int, device: torch.device | None = None) -> Iterator[torch.Tensor]:
    """uint8 (N, C, S, S) crops as float batches in [0, 1], on device: the one chunked-inference loop."""
    for start in range(0, len(crops), batch_size):
        batch = crops[start:start + batch_size]
        yield to_float(batch if device is None else batch.to(device))


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    return (image.clamp(0, 1) * 255.0).round().to(torch.uint8)
