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
import struct
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import imagehash
import numpy as np
import pdqhash
from PIL import Image, ImageOps, UnidentifiedImageError

from moderation.errors import ModerationError

# Decoders we accept; Pillow is told to try only these, so anything else is a 415.
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")  # JPEG includes MPO (camera multi-picture)


# Bytes per pixel of a decoded frame, by Pillow mode: one byte for single-band 8-bit modes, two for
# 16-bit, and four for every multi-band mode (Pillow stores RGB, LA, YCbCr… in 32-bit pixels).
BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}


class DecodeBudget:
    """The memory all concurrent decodes of a process may hold at once: a decode waits for its
    estimated share (`decode_cost`), so forty threads decoding hostile images cannot add up to
    forty worst cases. A decode that waits longer than `wait_s` is refused as busy (503)."""

    def __init__(self, capacity: int, wait_s: float = 30.0) -> None:
        self.capacity = capacity
        self.wait_s = wait_s
        self.in_use = 0
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, cost: int) -> Iterator[None]:
        cost = min(cost, self.capacity)  # one decode over the whole budget still runs, alone
        with self._cond:
            if not self._cond.wait_for(lambda: self.in_use + cost <= self.capacity, timeout=self.wait_s):
                raise ModerationError("SERVICE_UNAVAILABLE", "Too many large images are being decoded; retry.")
            self.in_use += cost
        try:
            yield
        finally:
            with self._cond:
                self.in_use -= cost
                self._cond.notify_all()


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_pixels: int
    max_frames: int
    max_total_pixels: int
    hash_side: int = 256
    max_decode_bytes: int = 512 * 1024 * 1024  # one image's decode, estimated from its header
    budget: DecodeBudget | None = None


def return_large_blocks_to_the_os(threshold: int = 1 << 20) -> bool:
    """Have glibc serve allocations above `threshold` with mmap, always. Pillow holds a large
    frame in 16 MB blocks; by default glibc raises its mmap threshold to the largest block
    freed (up to 32 MB), after which such blocks come from per-thread heaps that are not given
    back, and forty request threads decoding in turn leave gigabytes resident. With a fixed
    threshold each frame's memory goes back when it is freed, so the decode budget is what the
    process holds. Returns False where the C library has no mallopt (not glibc)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    m_mmap_threshold = -3
    return bool(mallopt(m_mmap_threshold, threshold))


def decode_cost(im: Image.Image, full_size: tuple[int, int] | None = None) -> int:
    """Peak bytes the decode of one frame will hold, from the header (after JPEG draft scaling):
    the frame in its own mode (a large one is reduced before any conversion, so no full-size
    copy is made), plus a little for the reduced copies. Where the decoder holds more than the
    frame, that too: a progressive or CMYK JPEG keeps every DCT coefficient of the full-size
    image (2 bytes each) whatever scale it is drawn at; animated WebP and PNG keep a canvas and
    the frame being composed onto it."""
    width, height = im.size
    cost = width * height * BYTES_PER_PIXEL.get(im.mode, 4) + (1 << 20)
    full_w, full_h = full_size or (width, height)
    if im.format in ("JPEG", "MPO") and (im.info.get("progressive") or im.info.get("progression") or im.mode == "CMYK"):
        cost += full_w * full_h * max(len(im.getbands()), 3) * 2
    if im.format in ("WEBP", "PNG") and getattr(im, "is_animated", False):
        cost += 2 * full_w * full_h * 4
    return cost


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
            frames = _count_frames(im, limits, data)
            if width * height * frames > limits.max_total_pixels:
                raise ModerationError(
                    "DECOMPRESSION_BOMB",
                    f"{frames} frames of {width}x{height} decode to more than {limits.max_total_pixels} pixels.",
                )
            if im.format in ("JPEG", "MPO"):
                # Draft picks the smallest DCT scale (1/2..1/8) that stays >= the requested size.
                im.draft("RGB", (limits.hash_side, limits.hash_side))
            cost = decode_cost(im, (width, height))
            if cost > limits.max_decode_bytes:
                raise ModerationError(
                    "DECOMPRESSION_BOMB",
                    f"{width}x{height} {im.mode} would take {cost >> 20} MiB to decode; the limit is "
                    f"{limits.max_decode_bytes >> 20} MiB.",
                )
            if limits.budget is None:
                thumb = _decode_thumbnail(im, limits.hash_side)
            else:
                with limits.budget.hold(cost):
                    thumb = _decode_thumbnail(im, limits.hash_side)
                    if thumb is not im:
                        im.close()  # the full-size frame goes while its share of the budget is held
    except ModerationError:
        raise
    except Image.DecompressionBombError as exc:
        raise ModerationError("DECOMPRESSION_BOMB", str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise ModerationError("UNSUPPORTED_MEDIA_TYPE") from exc
    except (
        OSError,
        SyntaxError,
        ValueError,
        EOFError,
        IndexError,
        KeyError,
        TypeError,
        struct.error,
        ArithmeticError,
    ) as exc:
        # Pillow's decoders signal broken data with any of these (a GIF whose frame descriptor is
        # cut short: struct.error; a header field that divides by zero: ArithmeticError).
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


def _count_frames(im: Image.Image, limits: Limits, data: bytes) -> int:
    """Frames of an animation or pages of a TIFF, counted without decoding any (and never past
    the cap): GIF by walking its blocks, TIFF by seeking page to page; APNG and WebP say it in
    their headers. Pillow's `n_frames` composes every GIF frame on the full canvas (minutes of
    CPU for a 14 KB file of 1x1 frames on a 7000x7000 canvas) and walks every TIFF page."""
    stop_at = limits.max_frames + 1
    if im.format == "GIF":
        n = gif_frame_count(data, stop_at)
        if n <= 1:
            return 1
    elif not getattr(im, "is_animated", False):
        return 1
    elif im.format == "TIFF":
        n = _count_pages(im, stop_at)
    else:
        n = int(getattr(im, "n_frames", 1))
    if n > limits.max_frames:
        raise ModerationError(
            "TOO_MANY_FRAMES", f"{n} frames; the limit is {limits.max_frames}.", limit=limits.max_frames
        )
    return n


def gif_frame_count(data: bytes, stop_at: int) -> int:
    """Image descriptors in a GIF, counted by walking its blocks (nothing is decoded), up to
    `stop_at`. A truncated or malformed file counts what was found before the damage."""
    if len(data) < 13 or not data.startswith((b"GIF87a", b"GIF89a")):
        return 1
    pos = 13
    packed = data[10]
    if packed & 0x80:  # global colour table
        pos += 3 * (2 ** ((packed & 0x07) + 1))
    frames = 0
    size = len(data)
    while pos < size and frames < stop_at:
        block = data[pos]
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # extension: label, then sub-blocks
            pos += 2
        elif block == 0x2C:  # image descriptor (9 bytes), local colour table, LZW code size
            if pos + 10 > size:
                break
            local = data[pos + 9]
            pos += 10
            if local & 0x80:
                pos += 3 * (2 ** ((local & 0x07) + 1))
            pos += 1
            frames += 1
        else:
            break
        while pos < size:  # data sub-blocks until the zero-length terminator
            length = data[pos]
            pos += 1 + length
            if length == 0:
                break
    return max(frames, 1)


def _count_pages(im: Image.Image, stop_at: int) -> int:
    n = 1
    try:
        while n < stop_at:
            im.seek(n)
            n += 1
    except EOFError:
        pass
    im.seek(0)
    return n


ORIENTATIONS = _TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _decode_thumbnail(im: Image.Image, side: int) -> Image.Image:
    im.seek(0)
    im.load()
    if max(im.size) > side * 8:
        # Reduce first (a box filter works in every mode, 16-bit included), then orient and
        # convert the small copy: converting or compositing the full-size frame would hold
        # several copies of it (a 50 Mpx 16-bit PNG: over 1 GB) for a 128 px thumbnail.
        orientation = im.getexif().get(0x0112)
        scale = side * 4 / max(im.size)
        size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
        im = im.resize(size, Image.Resampling.BOX)
        if orientation in _TRANSPOSE:
            im = im.transpose(_TRANSPOSE[orientation])
    else:
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
    if mode.startswith("I;16"):
        # The high byte: 1 byte per pixel of working memory, not the 8 of a float64 copy.
        high = (np.asarray(im).astype(np.uint16, copy=False) >> 8).astype(np.uint8)
        return Image.fromarray(high, "L").convert("RGB")
    if mode in ("I", "F"):
        arr = np.array(im, dtype=np.float32)  # a copy of our own (F's buffer is read-only), scaled in place
        np.nan_to_num(arr, copy=False, nan=0.0, posinf=0.0, neginf=0.0)  # NaN/inf pixels: black, not arbitrary
        lo, hi = float(arr.min()), float(arr.max())
        if hi <= lo:
            return Image.new("RGB", im.size)
        arr -= lo
        arr *= 255.0 / (hi - lo)
        return Image.fromarray(np.clip(arr, 0, 255, out=arr).astype(np.uint8), "L").convert("RGB")
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
