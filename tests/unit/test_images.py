"""Unit tests for moderation.intake.images: intake validation, normalisation to RGB and content hashes.

Every fixture image is generated in memory with Pillow (or hand-crafted bytes); nothing is mocked.
"""

from __future__ import annotations

import hashlib
import io
import random
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from moderation.errors import CATALOGUE, ModerationError
from moderation.intake.images import (
    ALLOWED_FORMATS,
    ImageInfo,
    Limits,
    check_size,
    compute_hashes,
    hamming_hex,
    inspect_image,
    to_rgb,
)

# The service defaults (moderation/settings.py), restated so the tests do not depend on the environment.
DEFAULT = Limits(max_bytes=20 * 1024 * 1024, max_pixels=50_000_000, max_frames=500, max_total_pixels=400_000_000)

HEX64 = re.compile(r"^[0-9a-f]{64}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")


# --------------------------------------------------------------------------- fixtures / helpers


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def scene(w: int, h: int, seed: int) -> Image.Image:
    """A structured picture (gradients plus shapes), so that perceptual hashes are meaningful."""
    rng = random.Random(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    angle = rng.uniform(0, 6.28)
    g = np.cos(angle) * x / w + np.sin(angle) * y / h
    arr = np.stack([(g * 200) % 256, x / w * 255, y / h * 255], axis=-1).astype(np.uint8)
    im = Image.fromarray(arr)
    draw = ImageDraw.Draw(im)
    for _ in range(12):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        s = rng.randrange(w // 10, w // 3)
        colour = tuple(rng.randrange(256) for _ in range(3))
        if rng.random() < 0.5:
            draw.ellipse([x0, y0, x0 + s, y0 + s], fill=colour)
        else:
            draw.rectangle([x0, y0, x0 + s, y0 + s // 2], fill=colour)
    return im


def animated_gif(n: int, side: int = 32) -> bytes:
    frames = [scene(side, side, seed) for seed in range(n)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == n  # the fixture really has n distinct frames
    return data


def mpo(n: int, size: tuple[int, int] = (64, 48)) -> bytes:
    colours = ["red", "green", "blue", "yellow", "white", "black"]
    frames = [Image.new("RGB", size, colours[i % len(colours)]) for i in range(n)]
    data = encode(frames[0], "MPO", save_all=True, append_images=frames[1:])
    opened = Image.open(io.BytesIO(data))
    assert opened.format == "MPO" and opened.n_frames == n
    return data


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def bilevel_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit grayscale PNG, hand-built so huge dimensions cost almost nothing to make."""
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then packed bits
    comp = zlib.compressobj(9)
    parts, left = [], height
    while left:
        n = min(left, 1000)
        parts.append(comp.compress(row * n))
        left -= n
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"".join(parts)) + png_chunk(b"IEND", b"")
    )


def jpeg_claiming_size(width: int, height: int) -> bytes:
    """A small real JPEG whose SOF header is patched to claim width x height."""
    data = bytearray(encode(scene(32, 32, 1), "JPEG", quality=90))
    i = 2
    while i < len(data):
        assert data[i] == 0xFF
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5 : i + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        i += 2 + length
    raise AssertionError("no SOF marker")


def exif_with_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


def expect_error(data: bytes, code: str, limits: Limits = DEFAULT) -> ModerationError:
    with pytest.raises(ModerationError) as caught:
        inspect_image(data, limits)
    err = caught.value
    assert err.code == code, f"expected {code}, got {err.code}: {err.message}"
    assert err.http_status == CATALOGUE[code][0]
    assert err.final
    return err


def close(a: tuple[int, ...], b: tuple[int, ...], tol: int = 40) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


# --------------------------------------------------------------------------- check_size


def test_check_size_empty_is_empty_file():
    with pytest.raises(ModerationError) as caught:
        check_size(0, DEFAULT)
    assert caught.value.code == "EMPTY_FILE"
    assert caught.value.http_status == 422


def test_check_size_over_limit_is_too_large_with_limit_detail():
    limits = Limits(max_bytes=1000, max_pixels=10**6, max_frames=10, max_total_pixels=10**7)
    with pytest.raises(ModerationError) as caught:
        check_size(1001, limits)
    assert caught.value.code == "IMAGE_TOO_LARGE"
    assert caught.value.http_status == 413
    assert caught.value.data == {"limit": 1000}
    assert "1001" in caught.value.message


def test_check_size_exactly_at_limit_and_one_byte_pass():
    limits = Limits(max_bytes=1000, max_pixels=10**6, max_frames=10, max_total_pixels=10**7)
    assert check_size(1000, limits) is None
    assert check_size(1, limits) is None


# --------------------------------------------------------------------------- bad input: size


def test_empty_bytes_is_empty_file():
    expect_error(b"", "EMPTY_FILE")


def test_upload_over_max_bytes_is_too_large_even_if_it_is_a_valid_image():
    data = encode(scene(64, 48, 0), "JPEG")
    limits = Limits(max_bytes=len(data) - 1, max_pixels=10**6, max_frames=10, max_total_pixels=10**7)
    err = expect_error(data, "IMAGE_TOO_LARGE", limits)
    assert err.http_status == 413
    assert err.data["limit"] == len(data) - 1
    # the same bytes with one more byte of allowance are accepted
    ok_limits = Limits(max_bytes=len(data), max_pixels=10**6, max_frames=10, max_total_pixels=10**7)
    info, _ = inspect_image(data, ok_limits)
    assert info.byte_size == len(data)


# --------------------------------------------------------------------------- bad input: not an allowed image


def test_allowed_formats_are_all_registered_pillow_openers():
    # Regression: "MPO" used to be listed; Pillow opens MPO through the JPEG factory and has no "MPO" opener, so
    # Image.open(formats=...) raised KeyError for every non-JPEG upload (reported as IMAGE_CORRUPT).
    Image.init()
    missing = [f for f in ALLOWED_FORMATS if f not in Image.OPEN]
    assert missing == [], f"Image.open(formats=...) raises KeyError for {missing}"


NOT_IMAGES = {
    "plain_text": b"hello, this is certainly not an image\nsecond line\n",
    "pdf": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n",
    "svg": (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100">'
        b'<rect width="100" height="100" fill="red"/></svg>\n'
    ),
    "random_bytes": random.Random(1234).randbytes(4096),
    "html": b"<!doctype html><html><body><img src=x></body></html>",
}


@pytest.mark.parametrize("name", sorted(NOT_IMAGES))
def test_non_images_are_unsupported_media_type(name):
    expect_error(NOT_IMAGES[name], "UNSUPPORTED_MEDIA_TYPE")


@pytest.mark.parametrize("fmt", ["ICO", "PCX", "TGA", "PPM", "SGI", "QOI"])
def test_pillow_known_but_not_allowed_formats_are_refused(fmt):
    data = encode(scene(48, 32, 2), fmt)
    # Pillow can read this file when not restricted, so only ALLOWED_FORMATS can refuse it.
    assert Image.open(io.BytesIO(data)).format == fmt
    assert fmt not in ALLOWED_FORMATS
    err = expect_error(data, "UNSUPPORTED_MEDIA_TYPE")
    assert err.http_status == 415


# --------------------------------------------------------------------------- bad input: corrupt


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.8, 0.95])
def test_jpeg_truncated_in_the_middle_of_its_data_is_corrupt(fraction):
    data = encode(scene(320, 240, 3), "JPEG", quality=90)
    cut = data[: int(len(data) * fraction)]
    assert cut[:3] == b"\xff\xd8\xff"  # still looks like a JPEG
    err = expect_error(cut, "IMAGE_CORRUPT")
    assert err.http_status == 422
    # control: the untruncated file is fine
    inspect_image(data, DEFAULT)


def test_png_with_corrupted_idat_is_corrupt():
    data = encode(scene(200, 150, 4), "PNG")
    inspect_image(data, DEFAULT)  # control: the intact PNG decodes
    start = data.index(b"IDAT") + 4
    bad = bytearray(data)
    for k in range(start + 40, start + 240):
        bad[k] ^= 0xA5
    expect_error(bytes(bad), "IMAGE_CORRUPT")


def test_png_truncated_is_corrupt():
    data = encode(scene(200, 150, 5), "PNG")
    inspect_image(data, DEFAULT)  # control
    expect_error(data[: len(data) // 2], "IMAGE_CORRUPT")


# --------------------------------------------------------------------------- bad input: dimensions and frames


def test_too_many_pixels_with_a_small_limit():
    data = encode(scene(64, 48, 6), "JPEG")
    limits = Limits(max_bytes=10**7, max_pixels=64 * 48 - 1, max_frames=10, max_total_pixels=10**9)
    err = expect_error(data, "IMAGE_TOO_MANY_PIXELS", limits)
    assert err.data == {"limit": 64 * 48 - 1}
    assert "64x48" in err.message


def test_pixel_limit_is_inclusive():
    data = encode(scene(64, 48, 6), "JPEG")
    limits = Limits(max_bytes=10**7, max_pixels=64 * 48, max_frames=10, max_total_pixels=64 * 48)
    info, _ = inspect_image(data, limits)
    assert (info.width, info.height) == (64, 48)


def test_too_many_pixels_png_small_limit():
    data = encode(scene(64, 48, 6), "PNG")
    limits = Limits(max_bytes=10**7, max_pixels=1000, max_frames=10, max_total_pixels=10**9)
    expect_error(data, "IMAGE_TOO_MANY_PIXELS", limits)


def test_huge_claimed_jpeg_under_pillow_limit_is_too_many_pixels():
    data = jpeg_claiming_size(8000, 8000)  # 64M pixels > 50M, a few hundred bytes on disk
    assert len(data) < 2000
    err = expect_error(data, "IMAGE_TOO_MANY_PIXELS")
    assert err.data == {"limit": DEFAULT.max_pixels}


def test_huge_claimed_jpeg_over_pillow_limit_is_too_many_pixels():
    data = jpeg_claiming_size(20000, 20000)  # 400M pixels, a still image
    assert len(data) < 2000
    err = expect_error(data, "IMAGE_TOO_MANY_PIXELS")
    assert err.data == {"limit": DEFAULT.max_pixels}


def test_huge_dimension_png_tiny_on_disk_under_pillow_limit_is_too_many_pixels():
    data = bilevel_png(8000, 8000)
    assert len(data) < 100_000
    assert Image.open(io.BytesIO(data)).size == (8000, 8000)
    expect_error(data, "IMAGE_TOO_MANY_PIXELS")


def test_huge_dimension_png_tiny_on_disk_is_too_many_pixels():
    data = bilevel_png(20000, 20000)  # 400M pixels in about 50 kB
    assert len(data) < 100_000
    expect_error(data, "IMAGE_TOO_MANY_PIXELS")


def test_huge_dimension_png_is_never_accepted():
    # Whatever the code, a 20000x20000 upload must be refused as a final 4xx error, never accepted.
    with pytest.raises(ModerationError) as caught:
        inspect_image(bilevel_png(20000, 20000), DEFAULT)
    assert caught.value.final
    assert caught.value.code != "INTERNAL"


def test_too_many_frames_mpo():
    data = mpo(3)
    limits = Limits(max_bytes=10**7, max_pixels=10**6, max_frames=2, max_total_pixels=10**9)
    err = expect_error(data, "TOO_MANY_FRAMES", limits)
    assert err.data == {"limit": 2}
    assert "3 frames" in err.message


def test_frame_limit_is_inclusive_mpo():
    limits = Limits(max_bytes=10**7, max_pixels=10**6, max_frames=3, max_total_pixels=10**9)
    info, thumb = inspect_image(mpo(3), limits)
    assert info.frames == 3
    assert info.format == "JPEG"  # MPO is reported as JPEG
    assert close(thumb.getpixel((10, 10)), (255, 0, 0))  # the first frame is the one hashed


def test_decompression_bomb_mpo_total_pixels():
    limits = Limits(max_bytes=10**7, max_pixels=10**6, max_frames=100, max_total_pixels=64 * 48 * 3 - 1)
    expect_error(mpo(3), "DECOMPRESSION_BOMB", limits)
    ok = Limits(max_bytes=10**7, max_pixels=10**6, max_frames=100, max_total_pixels=64 * 48 * 3)
    assert inspect_image(mpo(3), ok)[0].frames == 3


def test_too_many_frames_gif():
    limits = Limits(max_bytes=10**7, max_pixels=10**6, max_frames=5, max_total_pixels=10**9)
    err = expect_error(animated_gif(10), "TOO_MANY_FRAMES", limits)
    assert err.data == {"limit": 5}


def test_decompression_bomb_gif_total_pixels():
    data = animated_gif(10)
    limits = Limits(max_bytes=10**7, max_pixels=10**6, max_frames=100, max_total_pixels=32 * 32 * 10 - 1)
    expect_error(data, "DECOMPRESSION_BOMB", limits)
    ok = Limits(max_bytes=10**7, max_pixels=10**6, max_frames=100, max_total_pixels=32 * 32 * 10)
    info, thumb = inspect_image(data, ok)
    assert info.frames == 10 and info.format == "GIF"
    assert thumb.size == (32, 32) and thumb.mode == "RGB"


# --------------------------------------------------------------------------- accepted inputs


FORMATS = [
    ("JPEG", {"quality": 90}),
    ("PNG", {}),
    ("GIF", {}),
    ("WEBP", {"quality": 90}),
    ("BMP", {}),
    ("TIFF", {}),
]


@pytest.mark.parametrize(("fmt", "options"), FORMATS)
def test_allowed_formats_decode(fmt, options):
    data = encode(scene(640, 480, 7), fmt, **options)
    info, thumb = inspect_image(data, DEFAULT)
    assert isinstance(info, ImageInfo)
    assert info.format == fmt
    assert (info.width, info.height, info.frames) == (640, 480, 1)
    assert info.byte_size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert thumb.mode == "RGB"
    assert max(thumb.size) <= 2 * DEFAULT.hash_side
    assert abs(thumb.width / thumb.height - 640 / 480) < 0.05
    assert HEX64.match(info.pdq) and HEX16.match(info.phash)
    assert 0 <= info.pdq_quality <= 100


def test_tiny_1x1_jpeg():
    info, thumb = inspect_image(encode(Image.new("RGB", (1, 1), (200, 30, 30)), "JPEG", quality=95), DEFAULT)
    assert (info.width, info.height) == (1, 1)
    assert thumb.size == (1, 1) and thumb.mode == "RGB"
    assert close(thumb.getpixel((0, 0)), (200, 30, 30))
    assert HEX64.match(info.pdq) and HEX16.match(info.phash)


def test_tiny_1x1_png():
    info, thumb = inspect_image(encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"), DEFAULT)
    assert (info.width, info.height, info.format) == (1, 1, "PNG")
    assert thumb.getpixel((0, 0)) == (10, 20, 30)


def test_jpeg_draft_mode_bounds_the_thumbnail():
    data = encode(scene(2000, 1500, 8), "JPEG", quality=85)
    info, thumb = inspect_image(data, DEFAULT)
    assert (info.width, info.height) == (2000, 1500)  # facts are about the original
    assert max(thumb.size) <= 2 * DEFAULT.hash_side
    assert abs(thumb.width / thumb.height - 2000 / 1500) < 0.05
    # Draft decodes at the 1/4 DCT scale (the smallest that keeps both sides >= hash_side) and needs no resize;
    # a full decode followed by thumbnail() would give 256x192 instead.
    assert thumb.size == (500, 375)


def test_hash_side_controls_thumbnail_size():
    data = encode(scene(1200, 900, 9), "JPEG", quality=85)
    limits = Limits(max_bytes=10**7, max_pixels=10**7, max_frames=10, max_total_pixels=10**8, hash_side=64)
    _, thumb = inspect_image(data, limits)
    assert max(thumb.size) <= 128


# --------------------------------------------------------------------------- EXIF orientation


def quadrant_picture() -> Image.Image:
    """80x40, blue, with a red block in the top-left quarter: shows where the raw top-left corner ends up."""
    im = Image.new("RGB", (80, 40), (0, 0, 255))
    ImageDraw.Draw(im).rectangle([0, 0, 39, 19], fill=(255, 0, 0))
    return im


RED, BLUE = (255, 0, 0), (0, 0, 255)


@pytest.mark.parametrize(
    ("orientation", "size", "red_corner"),
    [
        (1, (80, 40), "top_left"),
        (3, (80, 40), "bottom_right"),
        (6, (40, 80), "top_right"),  # rotate 90 clockwise to display
        (8, (40, 80), "bottom_left"),  # rotate 90 counter-clockwise to display
    ],
)
def test_exif_orientation_is_applied(orientation, size, red_corner):
    data = encode(quadrant_picture(), "JPEG", quality=95, exif=exif_with_orientation(orientation))
    raw = Image.open(io.BytesIO(data))
    assert raw.size == (80, 40)  # the stored pixels are not rotated
    info, thumb = inspect_image(data, DEFAULT)
    assert (info.width, info.height) == (80, 40)
    assert thumb.size == size
    w, h = thumb.size
    corners = {"top_left": (3, 3), "top_right": (w - 4, 3), "bottom_left": (3, h - 4), "bottom_right": (w - 4, h - 4)}
    for name, xy in corners.items():
        expected = RED if name == red_corner else BLUE
        assert close(thumb.getpixel(xy), expected), (name, thumb.getpixel(xy))


# --------------------------------------------------------------------------- odd modes through inspect_image


def test_cmyk_jpeg_normalises_to_rgb():
    data = encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    info, thumb = inspect_image(data, DEFAULT)
    assert info.format == "JPEG"
    assert thumb.mode == "RGB"
    assert close(thumb.getpixel((20, 15)), (255, 0, 0))


def test_grayscale_jpeg_normalises_to_rgb():
    data = encode(Image.new("L", (30, 30), 200), "JPEG", quality=95)
    _, thumb = inspect_image(data, DEFAULT)
    assert thumb.mode == "RGB"
    assert close(thumb.getpixel((15, 15)), (200, 200, 200), tol=3)


def _i16_png() -> bytes:
    arr = np.zeros((20, 30), dtype=np.uint16)
    arr[:, 15:] = 65535
    arr[:, 10:15] = 32768
    return encode(Image.fromarray(arr), "PNG")


def _palette_png() -> bytes:
    p = Image.new("P", (10, 10), 0)
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p.putpixel((0, 0), 1)
    return encode(p, "PNG", transparency=1)


def _la_png() -> bytes:
    la = Image.new("LA", (10, 10), (0, 255))
    la.putpixel((0, 0), (0, 0))
    return encode(la, "PNG")


def _rgba(fmt: str, **kw) -> bytes:
    im = Image.new("RGBA", (10, 10), (255, 0, 0, 255))
    im.putpixel((0, 0), (0, 0, 0, 0))
    return encode(im, fmt, **kw)


def _bilevel(fmt: str) -> bytes:
    one = Image.new("1", (16, 16), 0)
    ImageDraw.Draw(one).rectangle([0, 0, 7, 15], fill=1)
    return encode(one, fmt)


def _float_tiff() -> bytes:
    return encode(Image.fromarray(np.linspace(-3.5, 12.25, 200, dtype=np.float32).reshape(10, 20)), "TIFF")


def _int_tiff() -> bytes:
    return encode(Image.fromarray(np.arange(200, dtype=np.int32).reshape(10, 20) * 100_000), "TIFF")


# (bytes factory, mode Pillow opens it in, {pixel: expected RGB})
ODD_MODES = {
    "png_i16": (_i16_png, "I;16", {(0, 0): (0, 0, 0), (12, 5): (128, 128, 128), (29, 19): (255, 255, 255)}),
    "png_palette_transparency": (_palette_png, "P", {(0, 0): (255, 255, 255), (5, 5): (255, 0, 0)}),
    "png_la": (_la_png, "LA", {(0, 0): (255, 255, 255), (5, 5): (0, 0, 0)}),
    "png_rgba": (lambda: _rgba("PNG"), "RGBA", {(0, 0): (255, 255, 255), (5, 5): (255, 0, 0)}),
    "webp_rgba": (lambda: _rgba("WEBP", lossless=True), "RGBA", {(0, 0): (255, 255, 255), (5, 5): (255, 0, 0)}),
    "tiff_rgba": (lambda: _rgba("TIFF"), "RGBA", {(0, 0): (255, 255, 255), (5, 5): (255, 0, 0)}),
    "png_1": (lambda: _bilevel("PNG"), "1", {(0, 0): (255, 255, 255), (15, 0): (0, 0, 0)}),
    "bmp_1": (lambda: _bilevel("BMP"), "1", {(0, 0): (255, 255, 255), (15, 0): (0, 0, 0)}),
    "tiff_1": (lambda: _bilevel("TIFF"), "1", {(0, 0): (255, 255, 255), (15, 0): (0, 0, 0)}),
    "tiff_f": (_float_tiff, "F", {(0, 0): (0, 0, 0), (19, 9): (255, 255, 255)}),
    "tiff_i": (_int_tiff, "I", {(0, 0): (0, 0, 0), (19, 9): (255, 255, 255)}),
}


@pytest.mark.parametrize("name", sorted(ODD_MODES))
def test_odd_modes_normalise_to_rgb(name):
    factory, source_mode, pixels = ODD_MODES[name]
    data = factory()
    assert Image.open(io.BytesIO(data)).mode == source_mode  # the fixture really is in the odd mode
    info, thumb = inspect_image(data, DEFAULT)
    assert thumb.mode == "RGB"
    assert HEX64.match(info.pdq)
    for xy, expected in pixels.items():
        assert close(thumb.getpixel(xy), expected, tol=2), (xy, thumb.getpixel(xy), expected)


# --------------------------------------------------------------------------- to_rgb directly


def test_to_rgb_returns_rgb_input_unchanged():
    im = Image.new("RGB", (3, 3), (1, 2, 3))
    assert to_rgb(im) is im


def test_to_rgb_rgba_composites_over_white():
    im = Image.new("RGBA", (3, 1), (255, 0, 0, 255))
    im.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black
    im.putpixel((1, 0), (0, 0, 0, 128))  # half-transparent black
    out = to_rgb(im)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert close(out.getpixel((1, 0)), (127, 127, 127), tol=2)
    assert out.getpixel((2, 0)) == (255, 0, 0)


@pytest.mark.parametrize("mode", ["LA", "PA", "RGBa"])
def test_to_rgb_other_alpha_modes_fully_transparent_is_white(mode):
    out = to_rgb(Image.new(mode, (4, 4)))  # all channels zero: fully transparent
    assert out.mode == "RGB"
    assert out.getpixel((2, 2)) == (255, 255, 255)


def test_to_rgb_premultiplied_la():
    out = to_rgb(Image.new("La", (4, 4)))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)


def test_to_rgb_palette_with_transparency_is_white_where_transparent():
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 255, 0, 9, 9, 9] + [0] * 762)
    p.putpixel((1, 1), 1)
    p.info["transparency"] = 1
    out = to_rgb(p)
    assert out.getpixel((1, 1)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (0, 255, 0)


def test_to_rgb_palette_without_transparency_keeps_colours():
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 255, 0, 9, 9, 9] + [0] * 762)
    assert to_rgb(p).getpixel((0, 0)) == (9, 9, 9)


def test_to_rgb_i16_uses_the_full_16_bit_range_not_min_max():
    # values 1000..2000 of 65535 are dark: they must not be stretched to 0..255
    arr = np.full((4, 4), 1000, dtype=np.uint16)
    arr[0, 0] = 2000
    im = Image.fromarray(arr)
    assert im.mode == "I;16"
    out = to_rgb(im)
    assert out.getpixel((1, 1)) == (3, 3, 3)
    assert out.getpixel((0, 0)) == (7, 7, 7)


@pytest.mark.parametrize("dtype", [np.int32, np.float32])
def test_to_rgb_int_and_float_are_min_max_scaled(dtype):
    arr = np.array([[-50, 0, 50], [100, 150, 200]], dtype=dtype)
    im = Image.fromarray(arr)
    assert im.mode in ("I", "F")
    out = to_rgb(im)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (0, 0, 0)
    assert out.getpixel((2, 1)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (51, 51, 51)


@pytest.mark.parametrize("mode", ["F", "I", "I;16"])
def test_to_rgb_constant_deep_image_does_not_divide_by_zero(mode):
    out = to_rgb(Image.new(mode, (5, 5), 7))
    assert out.mode == "RGB"
    assert np.isfinite(np.asarray(out, dtype=np.float64)).all()


def test_to_rgb_bilevel_and_cmyk_and_ycbcr():
    one = Image.new("1", (2, 1), 0)
    one.putpixel((1, 0), 1)
    out = to_rgb(one)
    assert out.getpixel((0, 0)) == (0, 0, 0) and out.getpixel((1, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("CMYK", (1, 1), (0, 255, 255, 0))).getpixel((0, 0)) == (255, 0, 0)
    assert to_rgb(Image.new("YCbCr", (1, 1), (255, 128, 128))).mode == "RGB"


# --------------------------------------------------------------------------- hashes


def test_sha256_and_hash_formats():
    data = encode(scene(300, 200, 10), "JPEG", quality=90)
    info, thumb = inspect_image(data, DEFAULT)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert HEX64.match(info.pdq), info.pdq
    assert HEX16.match(info.phash), info.phash
    assert (info.phash, info.pdq, info.pdq_quality) == compute_hashes(thumb)


def test_inspect_is_deterministic():
    data = encode(scene(300, 200, 11), "JPEG", quality=90)
    a, _ = inspect_image(data, DEFAULT)
    b, _ = inspect_image(data, DEFAULT)
    assert a == b


def test_compute_hashes_shapes_and_quality_range():
    phash, pdq, quality = compute_hashes(scene(256, 192, 12))
    assert HEX16.match(phash) and HEX64.match(pdq)
    assert isinstance(quality, int) and 0 <= quality <= 100
    assert quality >= 50  # a structured picture is a good PDQ input


def test_hamming_hex():
    assert hamming_hex("00", "00") == 0
    assert hamming_hex("ff", "00") == 8
    assert hamming_hex("0f" * 32, "f0" * 32) == 256
    assert hamming_hex("8", "1") == 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pdq_survives_recompression_and_resize_but_separates_unrelated(seed):
    original = encode(scene(400, 300, seed), "JPEG", quality=95)
    decoded = Image.open(io.BytesIO(original)).convert("RGB")
    variant_im = decoded.resize((280, 210), Image.Resampling.BILINEAR)  # 70%
    variant = encode(variant_im, "JPEG", quality=60)
    unrelated = encode(scene(400, 300, seed + 100), "JPEG", quality=95)

    a, _ = inspect_image(original, DEFAULT)
    b, _ = inspect_image(variant, DEFAULT)
    c, _ = inspect_image(unrelated, DEFAULT)
    assert a.sha256 != b.sha256
    assert hamming_hex(a.pdq, b.pdq) <= 31
    assert hamming_hex(a.pdq, c.pdq) > 31
    assert hamming_hex(a.phash, b.phash) < hamming_hex(a.phash, c.phash)
