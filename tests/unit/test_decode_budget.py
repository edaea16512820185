"""Bounded decoding (issue 10, finding 7): a decode's cost is read from the header and refused or
queued before any pixel is decoded; GIF frames are counted only up to the cap; large frames are
reduced before any conversion. And the in-process token buckets behind the rate limits."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from PIL import GifImagePlugin, Image

from moderation.access.ratelimit import Bucket, LocalLimiter
from moderation.errors import ModerationError
from moderation.intake.images import DecodeBudget, Limits, decode_cost, inspect_image

LIMITS = Limits(max_bytes=20 << 20, max_pixels=50_000_000, max_frames=50, max_total_pixels=400_000_000)


def gif(frames: int) -> bytes:
    images = [Image.new("L", (8, 8), i % 256) for i in range(frames)]
    buf = io.BytesIO()
    images[0].save(buf, "GIF", save_all=True, append_images=images[1:], duration=10)
    return buf.getvalue()


def test_gif_frames_are_counted_only_up_to_the_cap(monkeypatch) -> None:
    seeks: list[int] = []
    real = GifImagePlugin.GifImageFile.seek

    def counted(self: GifImagePlugin.GifImageFile, frame: int) -> None:
        seeks.append(frame)
        real(self, frame)

    monkeypatch.setattr(GifImagePlugin.GifImageFile, "seek", counted)
    with pytest.raises(ModerationError) as exc:
        inspect_image(gif(2000), LIMITS)
    assert exc.value.code == "TOO_MANY_FRAMES"
    assert max(seeks, default=0) == 0  # counted from the file's blocks: no frame composed (before: 2,000)
    assert inspect_image(gif(20), LIMITS)[0].frames == 20


def big_canvas_gif(side: int, frames: int) -> bytes:
    """A GIF whose frames are 1x1 pixels on a side x side canvas: a few KB (the reviewer's CPU bomb)."""
    import struct

    head = b"GIF89a" + struct.pack("<HHBBB", side, side, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return head + frame * frames + b"\x3b"


def test_a_huge_canvas_of_tiny_frames_is_refused_without_composing_it(monkeypatch) -> None:
    seeks: list[int] = []
    real = GifImagePlugin.GifImageFile.seek
    monkeypatch.setattr(GifImagePlugin.GifImageFile, "seek", lambda self, f: (seeks.append(f), real(self, f))[1])
    data = big_canvas_gif(7000, 400)
    assert len(data) < 8000
    started = time.perf_counter()
    with pytest.raises(ModerationError) as exc:
        inspect_image(data, LIMITS)
    assert exc.value.code in ("DECOMPRESSION_BOMB", "TOO_MANY_FRAMES")
    assert max(seeks, default=0) == 0  # before: every frame composed on the 49 Mpx canvas (minutes)
    assert time.perf_counter() - started < 5


def test_tiff_pages_are_counted_only_up_to_the_cap() -> None:
    pages = [Image.new("L", (4, 4), i) for i in range(120)]
    buf = io.BytesIO()
    pages[0].save(buf, "TIFF", save_all=True, append_images=pages[1:])
    small = Limits(**{**LIMITS.__dict__, "max_frames": 10})
    with pytest.raises(ModerationError) as exc:
        inspect_image(buf.getvalue(), small)
    assert exc.value.code == "TOO_MANY_FRAMES"
    roomy = Limits(**{**LIMITS.__dict__, "max_frames": 500})
    assert inspect_image(buf.getvalue(), roomy)[0].frames == 120


def sixteen_bit(side: int) -> bytes:
    arr = np.full((side, side), 40000, dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def test_a_decode_over_its_limit_is_refused_from_the_header() -> None:
    data = sixteen_bit(4000)  # 32 MB of 16-bit pixels in a file of a few KB
    small = Limits(**{**LIMITS.__dict__, "max_decode_bytes": 16 << 20})
    with pytest.raises(ModerationError) as exc:
        inspect_image(data, small)
    assert exc.value.code == "DECOMPRESSION_BOMB" and "MiB to decode" in exc.value.message
    with Image.open(io.BytesIO(data)) as im:
        assert decode_cost(im) >= 4000 * 4000 * 2
    info, thumb = inspect_image(data, LIMITS)
    assert (info.width, thumb.mode) == (4000, "RGB") and max(thumb.size) <= 256


def test_the_budget_bounds_concurrent_decodes() -> None:
    budget = DecodeBudget(capacity=100, wait_s=5)
    peak, lock = [0], threading.Lock()

    def work() -> None:
        with budget.hold(40):
            with lock:
                peak[0] = max(peak[0], budget.in_use)
            time.sleep(0.05)

    threads = [threading.Thread(target=work) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 40 <= peak[0] <= 100 and budget.in_use == 0
    with budget.hold(1000):  # larger than the whole budget: runs, alone
        assert budget.in_use == 100
    hurried = DecodeBudget(capacity=10, wait_s=0.1)
    with hurried.hold(10), pytest.raises(ModerationError) as exc, hurried.hold(5):
        pass
    assert exc.value.code == "SERVICE_UNAVAILABLE"


def test_large_frames_keep_their_exif_orientation() -> None:
    im = Image.new("RGB", (3000, 1000), "white")
    im.paste((255, 0, 0), (0, 0, 300, 1000))  # red stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 clockwise when shown
    buf = io.BytesIO()
    im.save(buf, "PNG", exif=exif)
    _, thumb = inspect_image(buf.getvalue(), LIMITS)
    assert thumb.height > thumb.width  # turned upright
    assert thumb.getpixel((thumb.width // 2, 2))[1] < 80  # the stripe is now on top


def test_local_buckets_take_all_or_nothing_and_refill() -> None:
    limiter = LocalLimiter()
    a, b = Bucket("a", rate=10, burst=3), Bucket("b", rate=10, burst=100)
    assert [limiter.take([a, b]) for _ in range(3)] == [0, 0, 0]
    wait = limiter.take([a, b])
    assert 0 < wait <= 0.1
    assert limiter.take([b]) == 0  # the refused request took nothing from b
    time.sleep(0.12)
    assert limiter.take([a]) == 0
