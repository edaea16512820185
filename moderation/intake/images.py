"""Image intake: validate by decoding, normalise, and compute the content hashes.

One function, `inspect_image`, is the gate every upload passes (HTTP and queue-side) before
anything is stored or queued. It decodes with JPEG draft mode at about `hash_side` pixels (a
fraction of a full decode, and it still reads every entropy-coded byte, so truncation is
caught), applies EXIF orientation, flattens odd modes to RGB and hashes the thumbnail:
the decode is paid once, here, rather than again in the worker.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import imagehash
import numpy as np
import pdqhash
from PIL import Image, ImageOps, UnidentifiedImageError

from moderation.errors import ModerationError

# Decoders we accept; Pillow is told to try only these, so anything else is a 415.
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")  # JPEG includes MPO (camera multi-picture)


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_pixels: int
    max_frames: int
    max_total_pixels: int
    hash_side: int = 256


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int
    frames: int
    byte_size: int
    sha256: str
    phash: str
    pdq: str
    pdq_quality: int


def check_size(size: int, limits: Limits) -> None:
    if size == 0:
        raise ModerationError("EMPTY_FILE")
    if size > limits.max_bytes:
        raise ModerationError(
            "IMAGE_TOO_LARGE",
            f"Upload is {size} bytes; the limit is {limits.max_bytes}.",
            limit=limits.max_bytes,
        )


def inspect_image(data: bytes, limits: Limits) -> tuple[ImageInfo, Image.Image]:
    """Validate `data` and return its facts and the RGB thumbnail they were hashed from (long side
    about hash_side).

    Raises ModerationError (final, 4xx) for every kind of bad input.
    """
    check_size(len(data), limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            except Image.DecompressionBombError as exc:
                # Pillow's own guard (about 179M pixels) checks width x height at open.
                raise ModerationError(
                    "IMAGE_TOO_MANY_PIXELS", f"{exc} The limit is {limits.max_pixels}.", limit=limits.max_pixels
                ) from exc
            fmt = "JPEG" if im.format == "MPO" else str(im.format)
            width, height = im.size
            if width <= 0 or height <= 0:
                raise ModerationError("IMAGE_CORRUPT", "Image has no pixels.")
            if width * height > limits.max_pixels:
                raise ModerationError(
                    "IMAGE_TOO_MANY_PIXELS",
                    f"{width}x{height} is over the limit of {limits.max_pixels} pixels.",
                    limit=limits.max_pixels,
                )
            frames = _count_frames(im, limits)
            if width * height * frames > limits.max_total_pixels:
                raise ModerationError(
                    "DECOMPRESSION_BOMB",
                    f"{frames} frames of {width}x{height} decode to more than {limits.max_total_pixels} pixels.",
                )
            thumb = _decode_thumbnail(im, limits.hash_side)
    except ModerationError:
        raise
    except Image.DecompressionBombError as exc:
        raise ModerationError("DECOMPRESSION_BOMB", str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise ModerationError("UNSUPPORTED_MEDIA_TYPE") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError) as exc:
        # Pillow's decoders signal broken data with any of these.
        raise ModerationError("IMAGE_CORRUPT", f"Image cannot be decoded: {exc}") from exc
    except (MemoryError, RuntimeError) as exc:
        raise ModerationError("DECOMPRESSION_BOMB", f"Image is too costly to decode: {exc}") from exc

    phash, pdq, quality = compute_hashes(thumb)
    info = ImageInfo(
        format=fmt,
        width=width,
        height=height,
        frames=frames,
        byte_size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        phash=phash,
        pdq=pdq,
        pdq_quality=quality,
    )
    return info, thumb


def _count_frames(im: Image.Image, limits: Limits) -> int:
    if not getattr(im, "is_animated", False):
        return 1
    n = int(getattr(im, "n_frames", 1))
    if n > limits.max_frames:
        raise ModerationError(
            "TOO_MANY_FRAMES", f"{n} frames; the limit is {limits.max_frames}.", limit=limits.max_frames
        )
    return n


def _decode_thumbnail(im: Image.Image, side: int) -> Image.Image:
    if im.format in ("JPEG", "MPO"):
        # Draft picks the smallest DCT scale (1/2..1/8) that stays >= the requested size.
        im.draft("RGB", (side, side))
    im.seek(0)
    im.load()
    im = ImageOps.exif_transpose(im) or im
    im = to_rgb(im)
    if max(im.size) > side * 2:
        im.thumbnail((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return im


# PDQ and pHash both work on a small square (PDQ on 64x64 after its own filtering, pHash on
# 32x32). Hashing a bilinear 64x64 resize keeps PDQ within a few bits of the hash of the
# full-size image (mean 3.5, max 10 bits on the benchmark set; bench/RESULTS.md) at a fraction
# of the cost; pdqhash's own downsampling from 100-300 px inputs drifts 15-25 bits.
HASH_INPUT = (64, 64)


def to_rgb(im: Image.Image) -> Image.Image:
    """Flatten any Pillow mode to 8-bit RGB: alpha over white, 16-bit and float rescaled, CMYK converted."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        if mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
        return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "La":
        im = im.convert("LA")
        mode = "LA"
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def sample_frames(im: Image.Image, n: int) -> list[Image.Image]:
    """Up to `n` frames spread over an animation, after the first (RGB copies); [] for stills."""
    total = int(getattr(im, "n_frames", 1))
    if total <= 1 or n <= 0:
        return []
    picks = sorted({round(i * (total - 1) / n) for i in range(1, n + 1)} - {0})
    out = []
    for index in picks:
        im.seek(index)
        out.append(to_rgb(im.convert("RGBA") if im.mode == "P" else im.copy()))
    im.seek(0)
    return out


def compute_hashes(rgb: Image.Image) -> tuple[str, str, int]:
    """pHash (64-bit, hex) and PDQ (256-bit, hex, with its quality 0..100) of an RGB image."""
    if rgb.size != HASH_INPUT:
        rgb = rgb.resize(HASH_INPUT, Image.Resampling.BILINEAR, reducing_gap=3.0)
    phash = str(imagehash.phash(rgb))
    bits, quality = pdqhash.compute(np.asarray(rgb))
    pdq = np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes().hex()
    return phash, pdq, int(quality)


def hamming_hex(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()
