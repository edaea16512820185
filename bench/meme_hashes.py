"""Same-template memes with different captions: does the hash tell them apart?

    python bench/meme_hashes.py [--templates 60]

For each template (a photo-like picture) it renders two memes with different top/bottom
captions (A, B) and a re-encoded, resized copy of A (A'). A bank must match A' to A (a copy)
and must not match B to A (another meme on the same picture). It prints, for PDQ and pHash as
the intake computes them (64x64 input after a JPEG draft decode) and for PDQ on the full
image, the distance distributions and the share of pairs that the bank thresholds would match.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"
CAPTIONS = [
    ("MEET ME OUTSIDE", "YOU WILL REGRET IT"),
    ("ME AFTER ONE GYM SESSION", "EXPECTING ABS"),
    ("WHEN THE WIFI DROPS", "FOR ONE SECOND"),
    ("NOBODY:", "ABSOLUTELY NOBODY:"),
    ("SEND THIS TO 10 PEOPLE", "OR ELSE"),
    ("MONDAY MORNING", "BE LIKE"),
]


def template(seed: int, size: int = 1024) -> Image.Image:
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    im = Image.fromarray(low).resize((size, size), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(8):
        x0, y0 = (int(v) for v in rng.integers(0, size - 100, 2))
        w, h = (int(v) for v in rng.integers(80, size // 2, 2))
        draw.ellipse((x0, y0, x0 + w, y0 + h), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return im


def meme(base: Image.Image, top: str, bottom: str) -> Image.Image:
    im = base.copy()
    draw = ImageDraw.Draw(im)
    for text, y in ((top, 20), (bottom, im.height - 110)):
        size = 72
        while size > 24 and draw.textlength(text, font=ImageFont.truetype(FONT, size)) > 0.92 * im.width:
            size -= 4
        font = ImageFont.truetype(FONT, size)
        w = draw.textlength(text, font=font)
        draw.text(((im.width - w) / 2, y), text, font=font, fill="white", stroke_width=5, stroke_fill="black")
    return im


def jpeg(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--templates", type=int, default=60)
    args = ap.parse_args()

    import pdqhash

    from moderation.intake.images import Limits, hamming_hex, inspect_image

    limits = Limits(20 << 20, 50_000_000, 500, 400_000_000, 128)
    rows: dict[str, dict[str, list[int]]] = {k: {"copy": [], "other_caption": []} for k in ("pdq", "phash", "pdq_full")}
    for t in range(args.templates):
        base = template(t)
        (a1, a2), (b1, b2) = CAPTIONS[t % len(CAPTIONS)], CAPTIONS[(t + 1) % len(CAPTIONS)]
        a, b = meme(base, a1, a2), meme(base, b1, b2)
        a_copy = a.resize((700, 700), Image.Resampling.BILINEAR)
        hashes = {}
        for name, im, q in (("a", a, 90), ("b", b, 90), ("a_copy", a_copy, 55)):
            data = jpeg(im, q)
            info = inspect_image(data, limits)[0]
            bits, _ = pdqhash.compute(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
            full_pdq = np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes().hex()
            hashes[name] = {"pdq": info.pdq, "phash": info.phash, "pdq_full": full_pdq}
        for kind in rows:
            rows[kind]["copy"].append(hamming_hex(hashes["a"][kind], hashes["a_copy"][kind]))
            rows[kind]["other_caption"].append(hamming_hex(hashes["a"][kind], hashes["b"][kind]))

    thresholds = {"pdq": (10, 31), "pdq_full": (10, 31), "phash": (10,)}
    print(f"{args.templates} templates; distances A~A' (copy) and A~B (same picture, other caption)")
    print(f"{'hash':10} {'pair':14} {'mean':>6} {'min':>4} {'max':>4}  share within each threshold")
    for kind, pairs in rows.items():
        for pair, values in pairs.items():
            shares = ", ".join(
                f"<= {t}: {100 * sum(v <= t for v in values) / len(values):5.1f}%" for t in thresholds[kind]
            )
            print(f"{kind:10} {pair:14} {np.mean(values):6.1f} {min(values):4d} {max(values):4d}  {shares}")


if __name__ == "__main__":
    main()
