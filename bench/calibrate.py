"""Calibrate the lite analyzer's embedding scores on the shipped labelled text set, then test on a held-out one.

    python bench/calibrate.py            # prints the figures; --write updates policies/lite/calibration.yaml

Two hand-written sets of short meme/screenshot captions, one JSON object per line
(`{"text": ..., "label": <category or "benign">, "hard_negative": false}`; `hard_negative` is
optional, default false, and marks benign texts that sound risky: violent idioms, sarcasm,
news or educational mentions, gaming, cooking):

- policies/lite/calibration.jsonl: fitting. For each category, one feature per text (how much
  closer it sits to the category's exemplars than to the benign ones, `TextRisk.features`) and a
  logistic fit (Platt scaling) of P(category | text), one category against all other texts.
  Reports 5-fold cross-validated Brier score, accuracy at 0.5 and the mean predicted probability
  of positives and negatives, then fits on the whole set.
- policies/lite/heldout.jsonl: never fitted on. Scored with the fitted `a` and `b`; reports per
  category the Brier score, precision and recall at 0.5 and the mean score of the hard negatives.

The two sets must share no text with each other or with policies/lite/exemplars.yaml (checked;
near-duplicates, cosine >= 0.9, are listed). With --write, `a` and `b` per category, the number of
texts and a held-out summary go to policies/lite/calibration.yaml (embed.py reads only
`categories: {name: {a, b}}`).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

NEAR_DUPLICATE = 0.9


def fit(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, steps: int = 50) -> tuple[float, float]:
    """Logistic regression on one feature by Newton's method; returns (a, b)."""
    w = np.zeros(2)
    X = np.stack([x, np.ones_like(x)], axis=1)
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(X @ w)))
        grad = X.T @ (p - y) + l2 * np.array([w[0], 0.0])
        hess = (X * (p * (1 - p))[:, None]).T @ X + l2 * np.diag([1.0, 0.0]) + 1e-9 * np.eye(2)
        w -= np.linalg.solve(hess, grad)
    return float(w[0]), float(w[1])


def sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1 / (1 + np.exp(-z)))


def load(path: Path, categories: set[str]) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        r = json.loads(line)
        if r.get("label") not in categories | {"benign"} or not str(r.get("text", "")).strip():
            raise SystemExit(f"{path.name}:{n}: needs a text and a label in {sorted(categories)} or 'benign'")
        r["hard_negative"] = bool(r.get("hard_negative", False))
        if r["hard_negative"] and r["label"] != "benign":
            raise SystemExit(f"{path.name}:{n}: only benign texts can be hard negatives")
        rows.append(r)
    return rows


def check_overlap(risk: Any, exemplars: list[str], cal: list[str], held: list[str]) -> None:
    """Exact overlaps (case-insensitive) are an error; near-duplicates are listed."""
    norm = [{t.strip().lower() for t in s} for s in (exemplars, cal, held)]
    for (i, j), what in {(0, 1): "exemplars and calibration", (0, 2): "exemplars and held-out"}.items():
        if shared := norm[i] & norm[j]:
            raise SystemExit(f"{what} share {sorted(shared)}")
    if shared := norm[1] & norm[2]:
        raise SystemExit(f"calibration and held-out share {sorted(shared)}")
    vec = {name: risk.model.encode(s) for name, s in (("exemplar", exemplars), ("calibration", cal))}
    for name, texts in (("calibration", cal), ("held-out", held)):
        v = risk.model.encode(texts)
        for other in ("exemplar", "calibration") if name == "held-out" else ("exemplar",):
            sims = v @ vec[other].T
            for i, j in zip(*np.nonzero(sims >= NEAR_DUPLICATE), strict=True):
                src = exemplars if other == "exemplar" else cal
                print(f"  near-duplicate ({sims[i, j]:.2f}) {name} {texts[i]!r} ~ {other} {src[j]!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    from moderation.analyzers.embed import CALIBRATION, EXEMPLARS, TextRisk

    risk = TextRisk(calibration=Path("/nonexistent"))
    cats = set(risk.categories)
    rows = load(CALIBRATION.parent / "calibration.jsonl", cats)
    held_rows = load(CALIBRATION.parent / "heldout.jsonl", cats)
    ex = yaml.safe_load(EXEMPLARS.read_text(encoding="utf-8"))
    exemplars = [str(s) for s in ex["benign"]] + [str(s) for v in ex["categories"].values() for s in v]
    check_overlap(risk, exemplars, [r["text"] for r in rows], [r["text"] for r in held_rows])

    feats = risk.features_many([r["text"] for r in rows])
    labels = [r["label"] for r in rows]
    held_feats = risk.features_many([r["text"] for r in held_rows])
    held_labels = [r["label"] for r in held_rows]
    hard = np.array([r["hard_negative"] for r in held_rows])

    rng = np.random.default_rng(0)
    folds = rng.permutation(len(rows)) % 5
    out: dict[str, dict[str, float]] = {}
    summary: dict[str, dict[str, float]] = {}
    held_table = []
    print(
        f"calibration: {len(rows)} texts ({sum(lab == 'benign' for lab in labels)} benign, "
        f"{sum(r['hard_negative'] for r in rows)} hard negatives); 5-fold cross-validated figures"
    )
    print(f"  {'category':12} {'pos':>3} {'brier':>6} {'acc@.5':>6} {'p(pos)':>7} {'p(neg)':>7}   a      b")
    for c in risk.categories:
        x = np.array([f[c] for f in feats])
        y = np.array([1.0 if lab == c else 0.0 for lab in labels])
        if y.sum() < 2:
            continue
        cv = np.zeros_like(x)
        for k in range(5):
            a, b = fit(x[folds != k], y[folds != k])
            cv[folds == k] = sigmoid(a * x[folds == k] + b)
        a, b = fit(x, y)
        out[c] = {"a": round(a, 4), "b": round(b, 4)}
        brier = float(np.mean((cv - y) ** 2))
        acc = float(np.mean((cv >= 0.5) == (y == 1)))
        print(
            f"  {c:12} {int(y.sum()):3d} {brier:6.3f} {acc:6.3f} {cv[y == 1].mean():7.3f} "
            f"{cv[y == 0].mean():7.3f}  {a:6.2f} {b:6.2f}"
        )
        # Held-out: the fit on the whole calibration set, applied to texts it never saw.
        hx = np.array([f[c] for f in held_feats])
        hy = np.array([lab == c for lab in held_labels])
        p = sigmoid(out[c]["a"] * hx + out[c]["b"])
        flagged = p >= 0.5
        tp = int(np.sum(flagged & hy))
        summary[c] = {
            "positives": int(hy.sum()),
            "brier": round(float(np.mean((p - hy) ** 2)), 4),
            "precision": round(tp / int(flagged.sum()), 3) if flagged.any() else 0.0,
            "recall": round(tp / int(hy.sum()), 3) if hy.any() else 0.0,
            "mean_p_positives": round(float(p[hy].mean()), 3) if hy.any() else 0.0,
            "mean_p_hard_negatives": round(float(p[hard].mean()), 3) if hard.any() else 0.0,
            "max_p_hard_negatives": round(float(p[hard].max()), 3) if hard.any() else 0.0,
        }
        held_table.append((c, summary[c], int(flagged.sum())))

    hp = np.array([[sigmoid(out[c]["a"] * f[c] + out[c]["b"]) for c in out] for f in held_feats])
    benign = np.array([lab == "benign" for lab in held_labels])
    any_hard = float(np.mean(hp[hard].max(axis=1) >= 0.5)) if hard.any() else 0.0
    any_easy = float(np.mean(hp[benign & ~hard].max(axis=1) >= 0.5)) if (benign & ~hard).any() else 0.0
    print(
        f"\nheld-out: {len(held_rows)} texts ({int(benign.sum())} benign, {int(hard.sum())} hard negatives), "
        "scored with the fit on the whole calibration set"
    )
    head = ("category", "pos", "brier", "prec@.5", "rec@.5", "p(pos)", "p(hard)", "max")
    print("  {:12} {:>3} {:>6} {:>7} {:>6} {:>7} {:>7} {:>5}".format(*head))
    for c, s, _ in held_table:
        print(
            f"  {c:12} {s['positives']:3d} {s['brier']:6.3f} {s['precision']:7.3f} {s['recall']:6.3f} "
            f"{s['mean_p_positives']:7.3f} {s['mean_p_hard_negatives']:7.3f} {s['max_p_hard_negatives']:5.2f}"
        )
    print(f"  benign texts with any category >= 0.5: hard negatives {any_hard:.1%}, other benign {any_easy:.1%}")
    for r, probs in zip(held_rows, hp, strict=True):
        if r["hard_negative"] and probs.max() >= 0.5:
            c = list(out)[int(probs.argmax())]
            print(f"    hard negative over 0.5: {r['text']!r} ({c} {probs.max():.2f})")

    if args.write:
        doc = {
            "fitted": datetime.now(UTC).strftime("%Y-%m-%d"),
            "texts": len(rows),
            "heldout": len(held_rows),
            "method": "platt, one-vs-rest",
            "categories": out,
            "heldout_figures": {
                "per_category": summary,
                "benign_any_category_over_0_5": {"hard_negatives": round(any_hard, 3), "other": round(any_easy, 3)},
            },
        }
        CALIBRATION.write_text(
            "# Written by bench/calibrate.py --write; do not edit by hand.\n" + yaml.safe_dump(doc, sort_keys=True)
        )
        print(f"wrote {CALIBRATION}")


if __name__ == "__main__":
    main()
