"""Test pictures made on the fly (no image files in the repository)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, ImageDraw


def picture(seed: int, size: tuple[int, int] = (640, 480), fmt: str = "JPEG", **save: Any) -> bytes:
    """A distinct, structured picture (shapes over a gradient): hashes are meaningful on it."""
    rng = np.random.default_rng(seed)
    w, h = size
    x = np.linspace(0, 1, w)[None, :, None]
    y = np.linspace(0, 1, h)[:, None, None]
    c = rng.random((1, 1, 3))
    arr = (255 * (0.5 * x * c + 0.5 * y * (1 - c))).astype(np.uint8).repeat(1, 0)
    im = Image.fromarray(np.broadcast_to(arr, (h, w, 3)).copy())
    draw = ImageDraw.Draw(im)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, w - 10)), int(rng.integers(0, h - 10))
        x1, y1 = x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    buf = io.BytesIO()
    im.save(buf, fmt, **save)
    return buf.getvalue()
