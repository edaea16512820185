"""Render labelled texts into images, the way they reach a moderation queue.

    .venv/bin/python bench/render_texts.py OUT_DIR [--texts FILE.jsonl] [--limit N] [--seed 1]

Each text of FILE (default: the evaluation set `tests/data/eval_unseen/texts.jsonl`, lines
`{"id", "lang", "text", "category"}` or `{"text", "labels": [...]}`) becomes one image, with a
layout (meme with top/bottom text, chat bubble, social-media post, poster, sticker on a photo-like
background), a font (from a pinned list of DejaVu, Liberation and WenQuanYi faces, which
`.ci/fonts.sh` installs), colours, a background (flat, gradient, noise, random shapes), a
slight rotation, sensor noise and a JPEG quality between 35 and 95 drawn at random from the
seed: the same seed gives the same images, on any machine with those fonts.

Writes OUT_DIR/images/*.jpg and OUT_DIR/labels.csv (`file,labels,lang,id`; `labels` separated by
`;`, empty for harmless), the input `moderation eval OUT_DIR` reads.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "tests" / "data" / "eval_unseen" / "texts.jsonl"
FONT_ROOT = Path("/usr/share/fonts/truetype")
# A fixed list of faces (the packages `.ci/fonts.sh` installs), so that the same seed draws the same
# images on every machine, whatever other fonts (Chromium's, say) happen to be installed.
_STYLES = ("", "-Bold", "-Oblique", "-BoldOblique")
LATIN_FONTS = (
    [f"dejavu/DejaVuSans{s}.ttf" for s in (*_STYLES, "-ExtraLight")]
    + [f"dejavu/DejaVuSansCondensed{s}.ttf" for s in _STYLES]
    + [f"dejavu/DejaVuSansMono{s}.ttf" for s in _STYLES]
    + [f"dejavu/DejaVuSerif{s}.ttf" for s in ("", "-Bold", "-Italic", "-BoldItalic")]
    + [f"dejavu/DejaVuSerifCondensed{s}.ttf" for s in ("", "-Bold", "-Italic", "-BoldItalic")]
    + [
        f"liberation2/Liberation{f}-{s}.ttf"
        for f in ("Sans", "Serif", "Mono")
        for s in ("Regular", "Bold", "Italic", "BoldItalic")
    ]
)
CJK_FONTS = ["wqy/wqy-zenhei.ttc", "wqy/wqy-microhei.ttc"]
LAYOUTS = ("meme", "chat", "post", "poster", "sticker")


def fonts(cjk: bool) -> list[str]:
    """The pinned font files that can draw the text (CJK needs a CJK face); all must be installed."""
    names = CJK_FONTS if cjk else LATIN_FONTS
    missing = [n for n in names if not (FONT_ROOT / n).is_file()]
    if missing:
        raise SystemExit(f"render_texts: fonts missing ({', '.join(missing)}); run `bash .ci/fonts.sh`")
    return [str(FONT_ROOT / n) for n in names]


def wrap(text: str, width: int, cjk: bool) -> list[str]:
    if cjk:
        return [text[i : i + width] for i in range(0, len(text), width)] or [""]
    return textwrap.wrap(text, width) or [""]


def background(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    w, h = size
    kind = rng.choice(("flat", "gradient", "noise", "shapes"))
    base = tuple(rng.randrange(256) for _ in range(3))
    if kind == "flat":
        return Image.new("RGB", size, base)
    if kind == "gradient":
        other = np.array([rng.randrange(256) for _ in range(3)], dtype=float)
        t = np.linspace(0, 1, h)[:, None, None]
        arr = (1 - t) * np.array(base, dtype=float) + t * other
        return Image.fromarray(np.repeat(arr, w, axis=1).astype(np.uint8))
    if kind == "noise":
        arr = np.random.default_rng(rng.randrange(1 << 30)).normal(0, 40, (h // 8 + 1, w // 8 + 1, 3)) + base
        return Image.fromarray(arr.clip(0, 255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
    img = Image.new("RGB", size, base)
    d = ImageDraw.Draw(img)
    for _ in range(rng.randrange(6, 20)):
        x, y = rng.randrange(w), rng.randrange(h)
        r = rng.randrange(20, max(21, w // 3))
        d.ellipse([x - r, y - r, x + r, y + r], fill=tuple(rng.randrange(256) for _ in range(3)))
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 6)))


def _contrast(rgb: tuple[int, ...]) -> tuple[int, int, int]:
    return (0, 0, 0) if sum(rgb) > 380 else (255, 255, 255)


def draw_block(
    d: ImageDraw.ImageDraw,
    lines: list[str],
    font: ImageFont.FreeTypeFont,
    box: tuple[int, int, int, int],
    fill: tuple[int, int, int],
    stroke: tuple[int, int, int] | None = None,
) -> None:
    x0, y0, x1, _ = box
    y = y0
    for line in lines:
        w = d.textlength(line, font=font)
        d.text(
            (x0 + (x1 - x0 - w) / 2, y),
            line,
            font=font,
            fill=fill,
            stroke_width=2 if stroke else 0,
            stroke_fill=stroke,
        )
        y += int(font.size * 1.25)


def render(text: str, lang: str, rng: random.Random) -> Image.Image:
    cjk = lang == "zh" or any("\u4e00" <= ch <= "\u9fff" for ch in text)
    faces = fonts(cjk)
    face = rng.choice(faces)
    layout = rng.choice(LAYOUTS)
    w = rng.choice((640, 720, 800, 1024))
    h = int(w * rng.uniform(0.6, 1.3))
    size = rng.randrange(max(20, w // 28), max(24, w // 13))
    font = ImageFont.truetype(face, size)
    chars = max(6, int(w * 0.85 / (size * (1.0 if cjk else 0.58))))
    lines = wrap(text if layout != "meme" else text.upper(), chars, cjk)
    if layout == "meme":
        img = background(rng, (w, h))
        d = ImageDraw.Draw(img)
        half = (len(lines) + 1) // 2
        top, bottom = lines[:half], lines[half:]
        draw_block(d, top, font, (10, 12, w - 10, h), (255, 255, 255), (0, 0, 0))
        by = h - 16 - int(len(bottom) * size * 1.25)
        draw_block(d, bottom, font, (10, by, w - 10, h), (255, 255, 255), (0, 0, 0))
    elif layout == "chat":
        img = Image.new("RGB", (w, h), rng.choice([(236, 229, 221), (255, 255, 255), (20, 20, 24)]))
        d = ImageDraw.Draw(img)
        bubble = rng.choice([(220, 248, 198), (0, 132, 255), (229, 229, 234)])
        bh = int(len(lines) * size * 1.25) + 24
        y = rng.randrange(20, max(21, h - bh - 20))
        d.rounded_rectangle([20, y, w - 20, y + bh], radius=18, fill=bubble)
        draw_block(d, lines, font, (30, y + 12, w - 30, y + bh), _contrast(bubble))
        d.text(
            (24, max(2, y - size)),
            rng.choice(["Today 21:14", "Yesterday", "12:03", "读取 13:40"]),
            fill=(120, 120, 120),
        )
    elif layout == "post":
        img = Image.new("RGB", (w, h), (255, 255, 255) if rng.random() < 0.7 else (21, 32, 43))
        d = ImageDraw.Draw(img)
        ink = _contrast(img.getpixel((0, 0)))  # type: ignore[arg-type]
        d.ellipse([20, 20, 80, 80], fill=tuple(rng.randrange(256) for _ in range(3)))
        d.text((95, 30), rng.choice(["@user_4821 · 2h", "Anon · 14m", "某用户 · 3小时前"]), fill=(120, 120, 120))
        draw_block(d, lines, font, (20, 100, w - 20, h), ink)
        d.line([20, h - 50, w - 20, h - 50], fill=(200, 200, 200))
    elif layout == "poster":
        img = background(rng, (w, h))
        d = ImageDraw.Draw(img)
        panel = tuple(rng.randrange(256) for _ in range(3))
        bh = int(len(lines) * size * 1.25) + 30
        y = max(10, (h - bh) // 2)
        d.rectangle([30, y, w - 30, y + bh], fill=panel)
        draw_block(d, lines, font, (40, y + 15, w - 40, y + bh), _contrast(panel))
    else:  # sticker: text on a tilted label over a busy background
        img = background(rng, (w, h))
        label = Image.new("RGBA", (w - 60, int(len(lines) * size * 1.25) + 30), (255, 255, 240, 235))
        draw_block(ImageDraw.Draw(label), lines, font, (10, 15, label.width - 10, label.height), (20, 20, 20))
        label = label.rotate(rng.uniform(-8, 8), expand=True, resample=Image.Resampling.BICUBIC)
        img.paste(label, (30, max(0, (h - label.height) // 2)), label)
    if rng.random() < 0.5:
        img = img.rotate(rng.uniform(-3, 3), expand=False, fillcolor=(255, 255, 255), resample=Image.Resampling.BICUBIC)
    if rng.random() < 0.6:
        arr = np.asarray(img, dtype=float)
        arr += np.random.default_rng(rng.randrange(1 << 30)).normal(0, rng.uniform(2, 12), arr.shape)
        img = Image.fromarray(arr.clip(0, 255).astype(np.uint8))
    return img


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--texts", type=Path, default=DEFAULT)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    items = [json.loads(line) for line in args.texts.read_text(encoding="utf-8").splitlines() if line.strip()]
    if args.limit:
        items = random.Random(args.seed).sample(items, min(args.limit, len(items)))
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    with (args.out / "labels.csv").open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh)
        out.writerow(["file", "labels", "lang", "id"])
        for n, item in enumerate(items):
            labels = item.get("labels")
            if labels is None:
                labels = [] if item.get("category") in (None, "", "none") else [item["category"]]
            lang = str(item.get("lang", "en"))
            name = f"images/{n:04d}.jpg"
            buf = io.BytesIO()
            render(str(item["text"]), lang, rng).save(buf, "JPEG", quality=rng.randrange(35, 96))
            (args.out / name).write_bytes(buf.getvalue())
            out.writerow([name, ";".join(labels), lang, item.get("id", n)])
    print(f"wrote {len(items)} images and labels.csv to {args.out}")


if __name__ == "__main__":
    main()
