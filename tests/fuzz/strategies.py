"""Hypothesis strategies of hostile input: image bytes, form fields and URLs, queue messages and
hash lists.

Images start from valid seeds made with Pillow in every format and mode we accept (16-bit,
palette, alpha, CMYK, float, animated, EXIF-oriented, 1x1 and 1x20,000 / 20,000x1) and are then
mutated: bit flips, byte and integer overwrites, truncation, insertion, deletion, repetition,
splices of two seeds, and rewrites of the header fields a decoder trusts (PNG IHDR with its CRC
fixed, JPEG SOF, GIF screen and frame, BMP info header, TIFF IFD tags, WebP canvas), so that a
mutation gets past the first checksum into the decoder. Raw bytes behind a magic number (ours
and formats we refuse) cover the rest.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import string
import struct
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import strategies as st
from PIL import Image

MAX_MUTATED = 4 << 20  # grown inputs are capped: the byte limit itself is tested by its own example

# ---------------------------------------------------------------- seeds


def _rgb(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
    arr = (0.5 * x + 0.5 * y + rng.integers(0, 32, (h, w, 3))).clip(0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def _save(im: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **options)
    return buf.getvalue()


def _frames(n: int, w: int, h: int) -> list[Image.Image]:
    return [_rgb(w, h, seed=i) for i in range(n)]


def _exif_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif.tobytes()


@functools.cache
def seeds() -> dict[str, bytes]:
    """Valid images, small enough to mutate quickly, one per format x mode x shape we accept."""
    rgb = _rgb(48, 32)
    gray16 = Image.fromarray(np.arange(48 * 32, dtype=np.uint16).reshape(32, 48) * 40)
    anim = _frames(3, 24, 16)
    out = {
        "jpeg": _save(rgb, "JPEG", quality=80),
        "jpeg-gray": _save(rgb.convert("L"), "JPEG"),
        "jpeg-cmyk": _save(rgb.convert("CMYK"), "JPEG"),
        "jpeg-progressive": _save(rgb, "JPEG", progressive=True, optimize=True),
        "jpeg-exif6": _save(rgb, "JPEG", exif=_exif_orientation(6)),
        "jpeg-1x1": _save(_rgb(1, 1), "JPEG"),
        "jpeg-1x2000": _save(_rgb(1, 2000), "JPEG"),
        "png": _save(rgb, "PNG"),
        "png-rgba": _save(rgb.convert("RGBA"), "PNG"),
        "png-la": _save(rgb.convert("LA"), "PNG"),
        "png-palette-trns": _save(rgb.convert("P"), "PNG", transparency=0),
        "png-16bit": _save(gray16, "PNG"),
        "png-1bit": _save(rgb.convert("1"), "PNG"),
        "png-1x1": _save(_rgb(1, 1), "PNG"),
        "png-1x20000": _save(Image.new("L", (1, 20000), 128), "PNG"),
        "png-20000x1": _save(Image.new("L", (20000, 1), 128), "PNG"),
        "png-exif8": _save(rgb, "PNG", exif=_exif_orientation(8)),
        "png-2000x1500": _save(Image.new("L", (2000, 1500)), "PNG"),
        "apng": _save(anim[0], "PNG", save_all=True, append_images=anim[1:], duration=40),
        "gif": _save(rgb.convert("P"), "GIF"),
        "gif-anim": _save(anim[0].convert("P"), "GIF", save_all=True, append_images=anim[1:], duration=40),
        "gif-1x20000": _save(Image.new("P", (1, 20000)), "GIF"),
        "webp": _save(rgb, "WEBP", quality=70),
        "webp-lossless-alpha": _save(rgb.convert("RGBA"), "WEBP", lossless=True),
        "webp-anim": _save(anim[0], "WEBP", save_all=True, append_images=anim[1:], duration=40),
        "bmp": _save(rgb, "BMP"),
        "bmp-palette": _save(rgb.convert("P"), "BMP"),
        "bmp-1bit": _save(rgb.convert("1"), "BMP"),
        "bmp-1x1": _save(_rgb(1, 1), "BMP"),
        "tiff": _save(rgb, "TIFF"),
        "tiff-16bit": _save(gray16, "TIFF"),
        "tiff-cmyk": _save(rgb.convert("CMYK"), "TIFF"),
        "tiff-float": _save(Image.fromarray(np.linspace(-1, 1, 48 * 32, dtype=np.float32).reshape(32, 48)), "TIFF"),
        "tiff-int32": _save(Image.fromarray(np.arange(48 * 32, dtype=np.int32).reshape(32, 48)), "TIFF"),
        "tiff-lzw": _save(rgb, "TIFF", compression="tiff_lzw"),
        "tiff-deflate": _save(rgb.convert("RGBA"), "TIFF", compression="tiff_adobe_deflate"),
        "tiff-jpeg": _save(rgb, "TIFF", compression="jpeg"),
        "tiff-packbits-multipage": _save(
            anim[0], "TIFF", compression="packbits", save_all=True, append_images=anim[1:]
        ),
        "tiff-exif3": _save(rgb, "TIFF", exif=_exif_orientation(3)),
    }
    return out


# Magic numbers: ours, and formats Pillow knows that the intake must refuse (EPS would run
# Ghostscript, PSD/ICO/DDS/JPEG 2000/FITS are decoders we do not expose).
MAGICS = (
    b"\xff\xd8\xff\xe0",
    b"\xff\xd8\xff\xdb",
    b"\x89PNG\r\n\x1a\n",
    b"GIF89a",
    b"GIF87a",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"RIFF\xff\xff\xff\xffWEBPVP8L",
    b"RIFF\x10\x00\x00\x00WEBPVP8X",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"II+\x00\x08\x00\x00\x00",  # BigTIFF
    b"%!PS-Adobe-3.0 EPSF-3.0\n",
    b"8BPS",
    b"\x00\x00\x01\x00",
    b"DDS ",
    b"\x00\x00\x00\x0cjP  \r\n\x87\n",
    b"SIMPLE  =                    T",
    b"%PDF-1.7\n",
    b"<svg xmlns='http://www.w3.org/2000/svg'>",
    b"\x00\x00\x00\x18ftypavif",
    b"\x00\x00\x00\x18ftypheic",
    b"#define w 10\n",
    b"P6\n10 10\n255\n",
)

INTERESTING = (
    0,
    1,
    2,
    3,
    7,
    8,
    15,
    16,
    24,
    32,
    64,
    127,
    128,
    255,
    256,
    1000,
    4096,
    0x7FFF,
    0x8000,
    20000,
    0xFFFF,
    0x10000,
    60000,
    1 << 24,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFE,
    0xFFFFFFFF,
)


# ---------------------------------------------------------------- header rewrites


def _png_fix_crcs(data: bytes) -> bytes:
    """Recompute every chunk CRC, so a mutation inside a chunk reaches the chunk's parser."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    out = bytearray(data)
    pos = 8
    while pos + 12 <= len(out):
        (length,) = struct.unpack(">I", out[pos : pos + 4])
        end = pos + 8 + length
        if end + 4 > len(out):
            break
        out[end : end + 4] = struct.pack(">I", zlib.crc32(bytes(out[pos + 4 : end])) & 0xFFFFFFFF)
        pos = end + 4
    return bytes(out)


def _put(data: bytes, pos: int, fmt: str, value: int) -> bytes:
    size = struct.calcsize(fmt)
    if pos < 0 or pos + size > len(data):
        return data
    value &= (1 << (8 * size)) - 1
    if fmt[-1].islower():  # signed
        value = value - (1 << (8 * size)) if value >= 1 << (8 * size - 1) else value
    return data[:pos] + struct.pack(fmt, value) + data[pos + size :]


_PNG_IHDR = {
    "width": (16, ">I"),
    "height": (20, ">I"),
    "depth": (24, ">B"),
    "colour": (25, ">B"),
    "compression": (26, ">B"),
    "filter": (27, ">B"),
    "interlace": (28, ">B"),
}
_BMP = {
    "offset": (10, "<I"),
    "header_size": (14, "<I"),
    "width": (18, "<i"),
    "height": (22, "<i"),
    "planes": (26, "<H"),
    "bpp": (28, "<H"),
    "compression": (30, "<I"),
    "image_size": (34, "<I"),
    "colours": (46, "<I"),
}
_TIFF_TAGS = {
    "width": 256,
    "height": 257,
    "bits": 258,
    "compression": 259,
    "photometric": 262,
    "strip_offsets": 273,
    "orientation": 274,
    "samples": 277,
    "rows_per_strip": 278,
    "strip_bytes": 279,
    "planar": 284,
    "extra_samples": 338,
    "sample_format": 339,
}
HEADER_FIELDS = sorted(
    {*_PNG_IHDR, *_BMP, *_TIFF_TAGS, "precision", "components", "frame_width", "frame_height", "riff_size", "count"}
)


def rewrite_field(data: bytes, field: str, value: int) -> bytes:
    """Set a header field of whatever format `data` is in (unchanged when it has no such field)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and field in _PNG_IHDR:
        pos, fmt = _PNG_IHDR[field]
        return _png_fix_crcs(_put(data, pos, fmt, value))
    if data.startswith(b"\xff\xd8"):
        return _rewrite_jpeg_sof(data, field, value)
    if data.startswith(b"GIF8"):
        screen = {"width": 6, "height": 8}
        if field in screen:
            return _put(data, screen[field], "<H", value)
        frame = {"frame_width": 5, "frame_height": 7}
        at = data.find(b"\x2c", 13)
        return _put(data, at + frame[field], "<H", value) if field in frame and at > 0 else data
    if data.startswith(b"BM") and field in _BMP:
        pos, fmt = _BMP[field]
        return _put(data, pos, fmt, value)
    if data[:4] in (b"II*\x00", b"MM\x00*") and (field in _TIFF_TAGS or field == "count"):
        return _rewrite_tiff(data, field, value)
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        if field == "riff_size":
            return _put(data, 4, "<I", value)
        if data[12:16] == b"VP8X" and field in ("width", "height"):
            pos = 24 if field == "width" else 27
            return data[:pos] + (value & 0xFFFFFF).to_bytes(3, "little") + data[pos + 3 :]
        if data[12:16] == b"VP8 " and field in ("width", "height"):
            return _put(data, 26 if field == "width" else 28, "<H", value)
    return data


def _rewrite_jpeg_sof(data: bytes, field: str, value: int) -> bytes:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return data
        marker = data[pos + 1]
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            offsets = {"precision": (4, ">B"), "height": (5, ">H"), "width": (7, ">H"), "components": (9, ">B")}
            if field not in offsets:
                return data
            off, fmt = offsets[field]
            return _put(data, pos + off, fmt, value)
        if marker == 0xDA:
            return data
        pos += 2 + length
    return data


def _rewrite_tiff(data: bytes, field: str, value: int) -> bytes:
    endian = "<" if data[:2] == b"II" else ">"
    if len(data) < 8:
        return data
    (ifd,) = struct.unpack(endian + "I", data[4:8])
    if ifd + 2 > len(data):
        return data
    (count,) = struct.unpack(endian + "H", data[ifd : ifd + 2])
    if field == "count":
        return _put(data, ifd, endian + "H", value)
    tag = _TIFF_TAGS[field]
    for i in range(min(count, 64)):
        entry = ifd + 2 + 12 * i
        if entry + 12 > len(data):
            break
        t, typ = struct.unpack(endian + "HH", data[entry : entry + 4])
        if t == tag:
            fmt = "H" if typ == 3 else "I"
            return _put(data, entry + 8, endian + fmt, value)
    return data


# ---------------------------------------------------------------- mutations

Mutation = Callable[[bytes, dict[str, bytes]], bytes]


def _at(data: bytes, where: float | int) -> int:
    """A position in `data`: a fraction of its length, or an offset (headers are where decoders trust)."""
    return min(len(data), where if isinstance(where, int) else int(where * len(data)))


def _flip(data: bytes, pos: int, bit: int) -> bytes:
    return data[:pos] + bytes([data[pos] ^ (1 << bit)]) + data[pos + 1 :] if pos < len(data) else data


positions = st.one_of(st.floats(0, 1), st.integers(0, 600))


@st.composite
def mutation(draw: st.DrawFn) -> Mutation:
    kind = draw(
        st.sampled_from(
            ["flip", "set", "int", "truncate", "insert", "delete", "repeat", "splice", "field", "field", "field"]
        )
    )
    where = draw(positions)
    if kind == "flip":
        bit = draw(st.integers(0, 7))
        return lambda d, _: _flip(d, _at(d, where), bit)
    if kind == "set":
        chunk = draw(st.binary(min_size=1, max_size=16))
        return lambda d, _: d[: _at(d, where)] + chunk + d[_at(d, where) + len(chunk) :]
    if kind == "int":
        fmt = draw(st.sampled_from([">B", ">H", "<H", ">I", "<I", ">i", "<i"]))
        value = draw(st.sampled_from(INTERESTING) | st.integers(0, 0xFFFFFFFF))
        return lambda d, _: _put(d, _at(d, where), fmt, value)
    if kind == "truncate":
        return lambda d, _: d[: _at(d, where)]
    if kind == "insert":
        chunk = draw(st.binary(min_size=1, max_size=256))
        return lambda d, _: d[: _at(d, where)] + chunk + d[_at(d, where) :]
    if kind == "delete":
        n = draw(st.integers(1, 4096))
        return lambda d, _: d[: _at(d, where)] + d[_at(d, where) + n :]
    if kind == "repeat":
        n, times = draw(st.integers(1, 4096)), draw(st.integers(2, 1000))
        return lambda d, _: (d[: _at(d, where)] + d[_at(d, where) : _at(d, where) + n] * times + d[_at(d, where) :])[
            :MAX_MUTATED
        ]
    if kind == "splice":
        other, where2 = draw(st.sampled_from(sorted(seeds()))), draw(st.floats(0, 1))
        return lambda d, s: d[: _at(d, where)] + s[other][_at(s[other], where2) :]
    field = draw(st.sampled_from(HEADER_FIELDS))
    value = draw(st.sampled_from(INTERESTING) | st.integers(-(1 << 31), (1 << 32) - 1))
    return lambda d, _: rewrite_field(d, field, value)


@st.composite
def mutated_image(draw: st.DrawFn) -> bytes:
    pool = seeds()
    data = pool[draw(st.sampled_from(sorted(pool)))]
    for op in draw(st.lists(mutation(), min_size=1, max_size=5)):
        data = op(data, pool)
    if draw(st.booleans()):
        data = _png_fix_crcs(data)
    return data[:MAX_MUTATED]


raw_image = st.builds(lambda magic, tail: magic + tail, st.sampled_from(MAGICS), st.binary(max_size=4096))
valid_image = st.sampled_from(sorted(seeds())).map(lambda name: seeds()[name])
hostile_image = st.one_of(mutated_image(), mutated_image(), mutated_image(), raw_image, valid_image)
# For the doors (API, queue): a valid image as often as a hostile one, so requests get past the
# decoder to everything after it.
door_image = st.one_of(valid_image, hostile_image)


# ---------------------------------------------------------------- text, URLs, form fields

# Every code point class a validator may trip on: C0/C1 controls and NUL, lone surrogates (what a
# JSON `\ud800` escape decodes to; no UTF-8 encoder takes them),
# bidi overrides, joiners, non-characters, astral characters, combining marks.
ODD_CHARS = "\x00\x01\x08\t\n\x0b\x0c\r\x1b\x1f\x7f\x85\xa0\u200b\u200c\u200d\u202e\u2028\u2029\ufeff\ufffe\uffff"
ODD_CHARS += "\ud800\udfff\U0001f600\U0010ffff\u0301\u00df\u0130\u0131\u00ad=+-@\"',;\\/%"
odd_text = st.text(
    st.one_of(st.sampled_from(ODD_CHARS), st.characters(codec="utf-8"), st.sampled_from(string.printable)),
    max_size=300,
)
long_text = st.builds(
    lambda ch, n: ch * n,
    st.sampled_from(["a", "é", "\U0001f600", "\x00", " "]),
    st.sampled_from([255, 256, 257, 2000, 2001, 10_000, 10_001, 70_000]),
)
any_text = st.one_of(odd_text, odd_text, long_text)

HOSTS = (
    "example.com",
    "hooks.example.com",
    "ß.example",
    "xn--zca.example",
    "xn--zz.com",
    "例え.テスト",
    "a\u200db.example",
    "localhost",
    "sub.localhost",
    "127.0.0.1",
    "127.1",
    "0x7f.1",
    "2130706433",
    "0",
    "10.0.0.1",
    "169.254.169.254",
    "100.100.100.200",
    "[::1]",
    "[::ffff:10.0.0.1]",
    "[64:ff9b::a00:1]",
    "[2002:a00:1::]",
    "[fe80::1%25eth0]",
    "[fd00:ec2::254]",
    "8.8.8.8",
    "[2001:4860:4860::8888]",
    "..",
    ".",
    "-a.com",
    "a-.com",
    "a" * 64 + ".com",
    ("a" * 63 + ".") * 4 + "com",
    "EXAMPLE.COM.",
    "xn--",
    "xn--a.com",
    "ex%61mple.com",
    "exa mple.com",
    "user@evil.com@good.com",
    "good.com#@evil.com",
    "[::1",
    "::1]",
    "",
)
SCHEMES = ("https", "http", "HTTPS", "Http", "ftp", "file", "gopher", "javascript", "data", "", "https:")
PORTS = ("", ":443", ":8443", ":0", ":65535", ":65536", ":-1", ":99999999999999999999", ":abc", ":", ":+80", ": 80")

callback_url = st.one_of(
    st.builds(
        lambda scheme, user, host, port, path: f"{scheme}://{user}{host}{port}{path}",
        st.sampled_from(SCHEMES),
        st.sampled_from(["", "user@", "user:pass@", "a:b@c@", "%00@"]),
        st.sampled_from(HOSTS) | odd_text.map(lambda t: t[:80]),
        st.sampled_from(PORTS),
        st.sampled_from(["/", "", "/hook?x=1", "/%00", "/\u00e9", "/a b", "/" + "a" * 2100, "/#frag", "\\\\evil"]),
    ),
    odd_text,
)

PRIORITIES = ("high", "normal", "low", "HIGH", "", " normal", "urgent", "0", "null")
POLICIES = ("default", "hash-only", "test-cascade", "no-such-policy", "", "../default", "default\x00", "x" * 65)

plain_text = st.text(string.ascii_letters + string.digits + " .,-\u00e9\u4e2d", max_size=200)
FIELDS = ("external_id", "caption", "uploader_id", "callback_url", "priority", "policy")
# What a platform would send, and what a hostile one might.
valid_value: dict[str, st.SearchStrategy[str]] = {
    "external_id": st.uuids().map(str),
    "caption": plain_text,
    "uploader_id": st.uuids().map(str),
    "callback_url": st.just("https://hooks.example.com/moderation"),
    "priority": st.sampled_from(("high", "normal", "low")),
    "policy": st.just("default"),
}
hostile_value: dict[str, st.SearchStrategy[str]] = {
    "external_id": any_text,
    "caption": any_text,
    "uploader_id": any_text,
    "callback_url": callback_url,
    "priority": st.sampled_from(PRIORITIES) | odd_text,
    "policy": st.sampled_from(POLICIES) | odd_text,
}
form_value = {name: st.one_of(valid_value[name], hostile_value[name]) for name in FIELDS}


@st.composite
def form_fields(draw: st.DrawFn, wrong: st.SearchStrategy[Any] | None = None) -> dict[str, Any]:
    """Some of the contract's fields with valid values, then up to two of them hostile (or, with
    `wrong`, of a wrong type), so that each validator gets its turn and many requests pass."""
    fields = {name: draw(valid_value[name]) for name in FIELDS if name == "external_id" or draw(st.booleans())}
    for name in draw(st.lists(st.sampled_from(FIELDS), max_size=2, unique=True)):
        fields[name] = draw(hostile_value[name] if wrong is None else st.one_of(hostile_value[name], wrong))
    return fields


def encode_text(text: str, how: str) -> bytes:
    if how == "latin-1":
        return text.encode("latin-1", "replace")
    if how == "broken":  # invalid UTF-8: a lone continuation byte and a truncated sequence
        return text.encode("utf-8", "surrogatepass") + b"\x80\xc3"
    return text.encode("utf-8", "surrogatepass")


# ---------------------------------------------------------------- queue messages

json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    any_text,
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(odd_text.map(lambda t: t[:40]), inner, max_size=5),
    max_leaves=20,
)

B64_EDGES = (
    "",
    "=",
    "==",
    "====",
    "YQ",
    "YQ=",
    "YQ==",
    "YQ===",
    "YWJj",
    "YW Jj",
    "YW\nJj",
    "YW-_",
    "YQ==YQ==",
    "\u0661\u0662\u0663\u0664",
    "////",
    "++++",
    "A" * 5,
    "data:image/png;base64,iVBORw0KGgo=",
)


def image_b64(image: st.SearchStrategy[bytes]) -> st.SearchStrategy[Any]:
    return st.one_of(
        image.map(lambda b: base64.b64encode(b).decode()),
        image.map(lambda b: base64.urlsafe_b64encode(b).decode()),
        image.map(lambda b: base64.encodebytes(b).decode()),  # newlines every 76 characters
        image.map(lambda b: base64.b64encode(b).decode().rstrip("=")),
        st.sampled_from(B64_EDGES),
        json_value,
    )


def blob_sha256(known: list[str]) -> st.SearchStrategy[Any]:
    hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)
    return st.one_of(
        st.sampled_from(known) if known else hex64,
        (st.sampled_from(known) if known else hex64).map(str.upper),
        hex64,
        st.text("0123456789abcdef", min_size=0, max_size=130),
        st.sampled_from(["../" * 21 + "a", "\u0661" * 64, "0" * 63 + "\x00", " " + "0" * 63, "*" * 64, "%" * 64]),
        json_value,
    )


@st.composite
def queue_message(draw: st.DrawFn, image: st.SearchStrategy[bytes], known_blobs: list[str], api_keys: list[str]) -> Any:
    """A message a platform (or anyone with the account) could publish: the contract's fields,
    then a few perturbations (hostile values and wrong types, base64 and blob edge cases, a
    missing field, extra and credential-bearing keys); now and then any JSON at all."""
    if draw(st.integers(0, 19)) == 0:
        return draw(json_value)
    msg: dict[str, Any] = draw(form_fields(wrong=json_value))
    if draw(st.integers(0, 3)):
        msg["image_b64"] = base64.b64encode(draw(image)).decode()
    else:
        msg["blob_sha256"] = draw(st.sampled_from(known_blobs))
    for change in draw(st.lists(st.sampled_from(["b64", "blob", "drop", "secret", "extra"]), max_size=3)):
        if change == "b64":
            msg["image_b64"] = draw(image_b64(image))
        elif change == "blob":
            msg["blob_sha256"] = draw(blob_sha256(known_blobs))
        elif change == "drop" and msg:
            msg.pop(draw(st.sampled_from(sorted(msg))))
        elif change == "secret":
            secret = draw(st.sampled_from(api_keys))
            where = draw(st.sampled_from(["api_key", "apiKey", "authorization", "Authorization", "key", "token"]))
            msg[where] = draw(st.sampled_from([secret, f"Bearer {secret}", [secret], {"value": secret}]))
        else:
            msg.update(draw(st.dictionaries(odd_text.map(lambda t: t[:60]), json_value, max_size=4)))
    return msg


def message_body(message: Any, ascii_only: bool = True) -> bytes:
    """JSON as a platform's encoder writes it: ASCII with escapes (lone surrogates as `\\ud800`),
    or UTF-8 (lone surrogates then become invalid UTF-8)."""
    if ascii_only:
        return json.dumps(message, allow_nan=True).encode()
    return json.dumps(message, ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogatepass")


raw_body = st.one_of(
    st.binary(max_size=2048),
    st.sampled_from(
        [
            b"",
            b"null",
            b"[]",
            b"{}",
            b'"x"',
            b"1e999",
            b"-0",
            b"\xef\xbb\xbf{}",
            b'{"a":1,"a":2}',
            "{}".encode("utf-16"),
            b"[" * 5000 + b"]" * 5000,
            b'{"a":' * 5000 + b"1" + b"}" * 5000,
            b"9" * 5000,
            b'{"external_id": "\\ud800"}',
        ]
    ),
    st.integers(1, 200_000).map(lambda n: b"[" * n),
)


# ---------------------------------------------------------------- hash lists

HEX = "0123456789abcdef"
hex64 = st.text(HEX + "ABCDEF", min_size=64, max_size=64)
FORMULAS = ("=cmd|' /C calc'!A0", '=HYPERLINK("http://evil")', "+1+1", "-1+1", "@SUM(A1)", "\t=1", "\r=1", "=1")
cell = st.one_of(
    hex64,
    hex64,
    st.text(HEX, max_size=70),
    st.text(HEX + "xyzXYZ -_", min_size=60, max_size=68),
    st.sampled_from(FORMULAS),
    odd_text,
    st.builds(
        lambda c, n: c * n, st.sampled_from(["0", "a", '"', ",", "\t", "é"]), st.sampled_from([200, 5000, 140_000])
    ),
    st.builds(lambda t: '"' + t.replace('"', '""') + '"', odd_text),  # properly quoted
    st.builds(lambda t: '"' + t, odd_text),  # an unclosed quote
)
HEADERS = (
    "",
    "pdq",
    "pdq,label",
    "label,pdq",
    "pdq,label,sha256",
    "sha256",
    "PDQ\tLabel",
    "pdq,pdq",
    "pdq,phash,label",
    " pdq , label ",
    '"pdq","label"',
    "#pdq,label",
    "\ufeffpdq,label",
    "sha256,label,pdq,phash,extra",
)
TERMINATORS = ("\n", "\r\n", "\r", "\u2028", "\x85", "\x1c", "\n\n", "\n# comment\n")


@st.composite
def hash_list(draw: st.DrawFn) -> str:
    header = draw(st.sampled_from(HEADERS) | odd_text.map(lambda t: t[:40]))
    sep = draw(st.sampled_from([",", "\t", ";", ",\t"]))
    rows = draw(st.lists(st.lists(cell, min_size=0, max_size=5), max_size=12))
    lines = ([header] if header else []) + [sep.join(r) for r in rows]
    terms = draw(st.lists(st.sampled_from(TERMINATORS), min_size=len(lines), max_size=len(lines)))
    bom = draw(st.sampled_from(["", "", "\ufeff", "\ufeff\ufeff"]))
    return bom + "".join(line + term for line, term in zip(lines, terms, strict=True))
