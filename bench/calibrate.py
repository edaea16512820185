"""Calibrate the lite analyzer's embedding scores on the shipped labelled text set.

    python bench/calibrate.py            # prints held-out figures; --write updates the data file

For each category, one feature per text (how much closer it sits to the category's exemplars
than to the benign ones, `TextRisk.features`) and a logistic fit (Platt scaling) of
P(category | text), one category against all other texts. Reports 5-fold held-out Brier score,
accuracy at 0.5 and the mean predicted probability of positives and negatives, then fits on
everything and, with --write, stores `a` and `b` per category in policies/lite/calibration.yaml.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    from moderation.analyzers.embed import CALIBRATION, TextRisk

    rows = [json.loads(line) for line in (CALIBRATION.parent / "calibration.jsonl").read_text().splitlines()]
    risk = TextRisk(calibration=Path("/nonexistent"))
    feats = [risk.features(r["text"]) for r in rows]
    labels = [r["label"] for r in rows]
    rng = np.random.default_rng(0)
    folds = rng.permutation(len(rows)) % 5
    out: dict[str, dict[str, float]] = {}
    print(f"{len(rows)} labelled texts; 5-fold held-out figures per category")
    print(f"  {'category':12} {'pos':>3} {'brier':>6} {'acc@.5':>6} {'p(pos)':>7} {'p(neg)':>7}   a      b")
    for c in risk.categories:
        x = np.array([f[c] for f in feats])
        y = np.array([1.0 if lab == c else 0.0 for lab in labels])
        if y.sum() < 2:
            continue
        held = np.zeros_like(x)
        for k in range(5):
            a, b = fit(x[folds != k], y[folds != k])
            held[folds == k] = 1 / (1 + np.exp(-(a * x[folds == k] + b)))
        a, b = fit(x, y)
        out[c] = {"a": round(a, 4), "b": round(b, 4)}
        brier = float(np.mean((held - y) ** 2))
        acc = float(np.mean((held >= 0.5) == (y == 1)))
        print(
            f"  {c:12} {int(y.sum()):3d} {brier:6.3f} {acc:6.3f} {held[y == 1].mean():7.3f} "
            f"{held[y == 0].mean():7.3f}  {a:6.2f} {b:6.2f}"
        )
    if args.write:
        doc = {
            "fitted": datetime.now(UTC).strftime("%Y-%m-%d"),
            "texts": len(rows),
            "method": "platt, one-vs-rest",
            "categories": out,
        }
        CALIBRATION.write_text(
            "# Written by bench/calibrate.py --write; do not edit by hand.\n" + yaml.safe_dump(doc, sort_keys=True)
        )
        print(f"wrote {CALIBRATION}")


if __name__ == "__main__":
    main()
