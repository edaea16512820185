"""Train the lite analyzer's text classifier and show how well it is calibrated.

    .venv/bin/python bench/fit_text.py                 # fit, report, write nothing
    .venv/bin/python bench/fit_text.py --write         # also policies/lite/textclf.npz, bench/reliability.png
    .venv/bin/python bench/fit_text.py --grid          # compare settings on the development set
    .venv/bin/python bench/fit_text.py --diagram       # redraw the diagram (after a policy change)
    .venv/bin/python bench/fit_text.py --shipped       # report and suggest marks for the shipped weights

Data (never the evaluation set `tests/data/eval_unseen/`, which no fitting code reads):
- `policies/lite/train/*.jsonl` and the older hand-written `policies/lite/calibration.jsonl`
  and `heldout.jsonl`: 15 % of each (language, label) group is held out, the rest trained on with
  out-of-fold Platt calibration (`moderation.analyzers.textfit`).
- `policies/lite/dev/dev.jsonl`: written separately, by another brief, to choose the settings
  and the policy's review thresholds; not trained on.

Prints per category, on the held-out split and on the development set: positives, precision and
recall at the default policy's review threshold, ECE; the highest mark at which 85 % of each
category's texts of both sets reach review, beside the policy's; writes the reliability diagram
(held-out, one panel per category, the policy's review/restrict/block marks drawn as bands) and
`bench/results/textclf_fit.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from moderation.analyzers.embed import MiniLM  # noqa: E402
from moderation.analyzers.textclf import TextClassifier  # noqa: E402
from moderation.analyzers.textfit import Design, Model, Row, ece, fit, load_rows, save, split  # noqa: E402
from moderation.policy import load_policies  # noqa: E402

LITE = REPO / "policies" / "lite"
TRAIN = [LITE / "train", LITE / "calibration.jsonl", LITE / "heldout.jsonl"]
DEV = LITE / "dev" / "dev.jsonl"
OUT = LITE / "textclf.npz"
TUNED = LITE / "texttune.npz"


class Fitted(TextClassifier):
    """A fitted model scored in memory (no file), through the same code as the analyzer."""

    def __init__(self, model: Model, encoder: MiniLM) -> None:
        self.encoder, self.version = encoder, "memory"
        self.categories, self.bits, self.emb_scale = model.categories, model.bits, model.emb_scale
        self.dense, self.bias, self.platt = model.dense, model.bias, model.platt
        self.bucket_ids = model.bucket_ids
        self.bucket_w = model.bucket_w.astype(np.float16)  # as saved
        self.knn_ref = np.round(model.knn_ref * 127).astype(np.int8).astype(np.float32) / 127.0  # as saved
        self.knn_labels, self.knn_w = model.knn_labels, model.knn_w
        self.load_tuned(TUNED)  # the shipped tuned MiniLM beside it, as the analyzer scores


def probs(clf: TextClassifier, rows: list[Row]) -> np.ndarray:
    out = clf.score_many([r.text for r in rows])
    return np.array([[o.get(c, 0.0) for c in clf.categories] for o in out])


def report(name: str, clf: TextClassifier, rows: list[Row], marks: dict[str, float]) -> dict[str, Any]:
    P = probs(clf, rows)
    res: dict[str, Any] = {}
    harmless = np.array([not r.labels for r in rows])
    for lang in sorted({r.lang for r in rows}):
        sel = np.array([r.lang == lang for r in rows])
        held = [(P[i] >= np.array([marks[c] for c in clf.categories])).any() for i in np.where(sel & harmless)[0]]
        caught = [(P[i] >= np.array([marks[c] for c in clf.categories])).any() for i in np.where(sel & ~harmless)[0]]
        res[lang] = {
            "harmless_held": round(float(np.mean(held)), 3) if held else None,
            "harmful_missed": round(1 - float(np.mean(caught)), 3) if caught else None,
            "n": int(sel.sum()),
        }
        print(
            f"[{name}] {lang}: n={int(sel.sum())} harmful missed {res[lang]['harmful_missed']} "
            f"harmless held {res[lang]['harmless_held']}"
        )
    per: dict[str, Any] = {}
    for j, c in enumerate(clf.categories):
        y = np.array([c in r.labels for r in rows], dtype=float)
        hit = P[:, j] >= marks[c]
        tp = float((hit & (y > 0)).sum())
        e, _ = ece(P[:, j], y)
        per[c] = {
            "n": int(y.sum()),
            "precision": round(tp / max(1, hit.sum()), 3),
            "recall": round(tp / max(1, y.sum()), 3),
            "ece": round(e, 4),
        }
        print(
            f"   {c:14s} n={int(y.sum()):3d} P={per[c]['precision']:.2f} R={per[c]['recall']:.2f} "
            f"ECE={per[c]['ece']:.3f} (review at {marks[c]})"
        )
    res["categories"] = per
    return res


GRID = np.round(np.arange(0.6, 0.09, -0.05), 2)


def rule_mark(pos: np.ndarray, recall: float = 0.85) -> float:
    """The highest mark of GRID (0.6 down to 0.1) at which `recall` of the scores `pos` reach it."""
    ok = [m for m in GRID if len(pos) and float((pos >= m).mean()) >= recall]
    return float(ok[0]) if ok else float(GRID[-1])


def suggest_marks(
    clf: TextClassifier, rows: list[Row], marks: dict[str, float], recall: float = 0.85, draws: int = 500
) -> dict[str, float]:
    """Per category, the highest mark (a multiple of 0.05, 0.1-0.6) at which `recall` of its
    texts in `rows` (the held-out split and the development set) reach review; printed beside the
    policy's mark with the English harmless-held rate under each set of marks.

    A mark moves only when the move is more than sampling noise: the rule is applied to `draws`
    bootstrap resamples of the category's texts, and the policy's mark is kept while it lies
    between the 10th and 90th percentile of those marks (with 50-150 texts a category, one
    refit to the next moves the 85 % quantile by 0.1-0.5 without any real change)."""
    P = probs(clf, rows)
    rng = np.random.default_rng(13)
    out: dict[str, float] = {}
    for j, c in enumerate(clf.categories):
        pos = P[[c in r.labels for r in rows], j]
        full = rule_mark(pos, recall)
        boot = (
            [rule_mark(pos[rng.integers(0, len(pos), len(pos))], recall) for _ in range(draws)] if len(pos) else [full]
        )
        lo, hi = float(np.percentile(boot, 10)), float(np.percentile(boot, 90))
        out[c] = marks[c] if lo - 1e-9 <= marks[c] <= hi + 1e-9 else full
        print(
            f"   {c:14s} policy {marks[c]:.2f}  rule {full:.2f} (bootstrap 10-90 %: {lo:.2f}-{hi:.2f})"
            f"  suggested {out[c]:.2f}  (n={len(pos)})"
        )
    for lang in sorted({r.lang for r in rows}):
        harmless = [i for i, r in enumerate(rows) if not r.labels and r.lang == lang]
        for name, m in (("policy", marks), ("suggested", out)):
            cut = np.array([m[c] for c in clf.categories])
            held = float((P[harmless] >= cut).any(axis=1).mean()) if harmless else 0.0
            print(f"   {lang} harmless held under the {name} marks: {held:.3f} (n={len(harmless)})")
    return out


def diagram(clf: TextClassifier, rows: list[Row], policy: Any, path: Path) -> None:
    """Reliability diagram per category (held-out split) with the policy's bands, in Pillow."""
    from PIL import Image, ImageDraw, ImageFont

    P = probs(clf, rows)
    cats = clf.categories
    cols, size, pad = 4, 300, 40
    rows_n = -(-(len(cats) + 1) // cols)
    img = Image.new("RGB", (cols * size, rows_n * size + 30), "white")
    d = ImageDraw.Draw(img)
    try:
        font = ImageFont.truetype("DejaVuSans.ttf", 12)
    except OSError:
        font = ImageFont.load_default()
    d.text(
        (8, 6), "Reliability on the held-out split: observed share vs. predicted probability", fill="black", font=font
    )
    panels = [*cats, "all"]
    for k, c in enumerate(panels):
        ox, oy = (k % cols) * size, (k // cols) * size + 30
        x0, y0, x1, y1 = ox + pad, oy + 20, ox + size - 12, oy + size - pad

        def at(px: float, py: float, x0: int = x0, y0: int = y0, x1: int = x1, y1: int = y1) -> tuple[float, float]:
            return x0 + px * (x1 - x0), y1 - py * (y1 - y0)

        if c == "all":
            p = P.ravel()
            y = np.array([[cc in r.labels for cc in cats] for r in rows], dtype=float).ravel()
        else:
            j = cats.index(c)
            p, y = P[:, j], np.array([c in r.labels for r in rows], dtype=float)
            rule = policy.categories[c]
            bands = [(rule.review_at, "#fff3c4"), (rule.restrict_at, "#ffd9a8"), (rule.block_at, "#ffb3b3")]
            for mark, colour in bands:
                if mark is not None:
                    d.rectangle([at(mark, 1)[0], y0, x1, y1], fill=colour)
        d.rectangle([x0, y0, x1, y1], outline="black")
        d.line([at(0, 0), at(1, 1)], fill="#888888")
        e, points = ece(p, y)
        for conf, acc, n in points:
            r = 2 + min(8, int(np.sqrt(n)))
            cx, cy = at(conf, acc)
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill="#1f5fbf")
        d.text((x0, oy + 4), f"{c}  (pos {int(y.sum())}, ECE {e:.3f})", fill="black", font=font)
        for t in (0, 0.5, 1):
            d.text((at(t, 0)[0] - 6, y1 + 4), f"{t:g}", fill="black", font=font)
            d.text((x0 - 22, at(0, t)[1] - 6), f"{t:g}", fill="black", font=font)
    d.text(
        (8, rows_n * size + 14),
        "bands: review (yellow), restrict (orange), block (red) of policies/default.yaml; dot size ~ texts in bin",
        fill="black",
        font=font,
    )
    img.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--grid", action="store_true")
    ap.add_argument("--diagram", action="store_true", help="only redraw bench/reliability.png for the shipped weights")
    ap.add_argument("--shipped", action="store_true", help="report and suggest marks for the shipped weights (no fit)")
    ap.add_argument("--l2", type=float, default=1e-6)
    ap.add_argument("--emb-scale", type=float, default=1.0)
    args = ap.parse_args()
    policy = load_policies(REPO / "policies")["default"]
    categories = list(policy.categories)
    marks = {c: policy.categories[c].review_at for c in categories}
    rows = load_rows([p for p in TRAIN if p.exists()], categories)
    dev = load_rows([DEV], categories) if DEV.exists() else []
    known = {r.text.strip().lower() for r in rows}
    dev = [r for r in dev if r.text.strip().lower() not in known]
    rest, held = split(rows, 0.15)
    if args.diagram:
        diagram(TextClassifier(MiniLM(), OUT), held, policy, REPO / "bench" / "reliability.png")
        return
    if args.shipped:
        shipped = TextClassifier(MiniLM(), OUT)
        print(f"shipped weights {shipped.version}")
        report("held-out shipped", shipped, held, marks)
        report("dev shipped", shipped, dev, marks)
        print("[marks shipped] on the held-out split and the development set together:")
        suggest_marks(shipped, held + dev, marks)
        return
    print(f"texts: {len(rows)} ({len(rest)} fitted, {len(held)} held out), development set {len(dev)}")
    encoder = MiniLM()
    design = Design([r.text for r in rest], encoder, 20)
    settings = [(args.l2, args.emb_scale)]
    if args.grid:
        settings = [(l2, s) for l2 in (3e-7, 1e-6, 1e-5) for s in (0.5, 1.0, 2.0)]
    results: dict[str, Any] = {}
    for l2, scale in settings:
        model = fit(rest, encoder, categories, l2=l2, emb_scale=scale, design=design)
        clf = Fitted(model, encoder)
        name = f"l2={l2:g} emb={scale:g}"
        results[name] = {"held_out": report(f"held-out {name}", clf, held, marks)}
        if dev:
            results[name]["dev"] = report(f"dev {name}", clf, dev, marks)
        print(f"[marks {name}] on the held-out split and the development set together:")
        results[name]["suggested_marks"] = suggest_marks(clf, held + dev, marks)
    if args.write:
        save(model, OUT)
        diagram(TextClassifier(encoder, OUT), held, policy, REPO / "bench" / "reliability.png")
        (REPO / "bench" / "results").mkdir(exist_ok=True)
        summary = {"texts": len(rows), "fitted": len(rest), "held_out": len(held), "dev": len(dev), **results}
        (REPO / "bench" / "results" / "textclf_fit.json").write_text(json.dumps(summary, indent=2))
        print(f"wrote {OUT.relative_to(REPO)} ({OUT.stat().st_size // 1024} KiB) and bench/reliability.png")


if __name__ == "__main__":
    main()
