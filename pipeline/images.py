"""Image decoding with validation: every failure becomes a reason naming the file."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.io import ImageReadMode, decode_image, encode_png

from pipeline.files import atomic_write_bytes, sha256_bytes


class ImageRejected(ValueError):
    """An input that cannot be used; the message is the quarantine reason."""


@dataclass(frozen=True)
class DecodedImage:
    path: Path
    sha256: str
    pixels: torch.Tensor  # uint8, (1, H, W) grayscale


def _png_is_complete(data: bytes) -> bool:
    # libpng happily decodes a PNG cut short and fills the rest; the IEND chunk tells us.
    return b"IEND" in data[-32:]


def _jpeg_is_complete(data: bytes) -> bool:
    return data.rstrip(b"\x00").endswith(b"\xff\xd9")


def _check_declared_size(data: bytes, max_pixels: int) -> None:
    """Reject decompression bombs from the header alone, before decoding a single pixel."""
    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"too large: {exc} (decompression-bomb guard)") from exc
    except (OSError, ValueError):
        return  # not something PIL can size; the decoder gives the reason
    if width * height > max_pixels:
        raise ImageRejected(f"too large: {width}x{height} exceeds {max_pixels} pixels (decompression-bomb guard)")


def decode_file(path: Path, min_side: int = 32, max_pixels: int = 50_000_000) -> DecodedImage:
    """Read and decode one file to grayscale uint8, or raise ImageRejected with the reason."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageRejected(f"unreadable: {exc.strerror or exc}") from exc
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    if data[:8] == b"\x89PNG\r\n\x1a\n" and not _png_is_complete(data):
        raise ImageRejected("truncated PNG (no IEND chunk)")
    if data[:2] == b"\xff\xd8" and not _jpeg_is_complete(data):
        raise ImageRejected("truncated JPEG (no end-of-image marker)")
    _check_declared_size(data, max_pixels)
    pixels = _decode_gray(data)
    _, height, width = pixels.shape
    if min(height, width) < min_side:
        raise ImageRejected(f"too small: {width}x{height} < {min_side} px")
    if height * width > max_pixels:
        raise ImageRejected(f"too large: {width}x{height} exceeds {max_pixels} pixels")
    return DecodedImage(Path(path), sha256_bytes(data), pixels)


def _decode_gray(data: bytes) -> torch.Tensor:
    """Grayscale uint8 (1, H, W), EXIF orientation applied. torchvision's decoders first (PNG,
    JPEG incl. CMYK, GIF, WebP); PIL for the rest (TIFF, BMP, ...)."""
    try:
        pixels = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.GRAY,
                              apply_exif_orientation=True)
    except (RuntimeError, ValueError) as first:
        try:
            return _decode_with_pil(data)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise ImageRejected(f"not a decodable image: {str(first).splitlines()[0][:120]}; PIL: {str(exc)[:80]}") from exc
    if pixels.dtype != torch.uint8:  # 16-bit PNG: scale the full range, don't clip
        pixels = (pixels.float() / 65535.0 * 255.0).round().clamp(0, 255).to(torch.uint8)
    return pixels


def _decode_with_pil(data: bytes) -> torch.Tensor:
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        image = ImageOps.exif_transpose(opened)
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
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
