"""Fitting the text classifier (`textclf`): labelled texts in, `textclf.npz` out.

    rows = load_rows([Path("policies/lite/train")])
    model, report = fit(rows, encoder)
    save(model, Path("policies/lite/textclf.npz"))

One L2-regularised softmax regression over the categories and `harmless`, solved with L-BFGS
on the embedding and the hashed n-grams of each text. The log-odds of each category's softmax
probability are then calibrated per category (Platt scaling) on out-of-fold predictions,
separately for text the embedding reads and text scored on n-grams alone (Chinese): each text is
scored by a model that did not see it, so the calibration is not fitted on memorised texts.
A held-out split, never fitted on, measures what the shipped model does: precision, recall and
the expected calibration error (ECE) per category, and the points of a reliability diagram.

Training data: JSON lines `{"text", "labels": [category, ...]}` (`[]` = harmless), or the older
`{"text", "label": category | "benign"}`. Needs SciPy (a dependency of imagehash), used only here.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moderation.analyzers.textclf import Encoder, class_logits, embeddings, hashed, neighbours, normalise, sigmoid


@dataclass(frozen=True)
class Row:
    text: str
    labels: frozenset[str]
    lang: str = "en"


@dataclass
class Model:
    categories: list[str]
    bits: int
    emb_scale: float
    dense: np.ndarray
    bucket_ids: np.ndarray
    bucket_w: np.ndarray
    bias: np.ndarray
    platt: np.ndarray
    knn_ref: np.ndarray
    knn_labels: np.ndarray
    knn_w: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)


def load_rows(paths: Iterable[Path], categories: Sequence[str] | None = None) -> list[Row]:
    """Every labelled text under `paths` (files or folders of *.jsonl), de-duplicated by text."""
    files: list[Path] = []
    for p in paths:
        files += sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
    seen: dict[str, Row] = {}
    for f in files:
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            item = json.loads(line)
            if "labels" in item:
                labels = frozenset(str(x) for x in item["labels"])
            else:
                label = str(item["label"])
                labels = frozenset() if label in ("benign", "none", "") else frozenset([label])
            if categories is not None and not labels <= set(categories):
                raise ValueError(f"{f}:{n}: unknown label(s) {sorted(labels - set(categories))}")
            text = str(item["text"])
            lang = str(item.get("lang") or ("zh" if any("\u4e00" <= ch <= "\u9fff" for ch in text) else "en"))
            seen.setdefault(normalise(text), Row(text, labels, lang))
    return list(seen.values())


def split(rows: Sequence[Row], share: float, seed: int = 13) -> tuple[list[Row], list[Row]]:
    """(rest, held out): `share` of each (language, first label) group held out."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.lang, min(r.labels, default="")), []).append(r)
    rng = random.Random(seed)
    rest: list[Row] = []
    held: list[Row] = []
    for key in sorted(groups):
        g = list(groups[key])
        rng.shuffle(g)
        k = round(len(g) * share)
        held += g[:k]
        rest += g[k:]
    return rest, held


class Design:
    """Feature matrices for a fixed set of texts: the embedding (dense) and the hashed n-grams."""

    def __init__(self, texts: Sequence[str], encoder: Encoder, bits: int) -> None:
        normed = [normalise(t) for t in texts]
        self.vectors = np.concatenate(
            [embeddings(encoder, normed[i : i + 64]) for i in range(0, len(normed), 64)] or [np.zeros((0, 384))]
        ).astype(np.float64)
        self.sparse = [hashed(t, bits) for t in normed]
        self.bits = bits

    def matrix(
        self, rows: Sequence[int], columns: np.ndarray, emb_scale: float, ref: Sequence[int], labels: np.ndarray
    ) -> Any:
        """CSR (len(rows), len(columns) + 384 + 2 K): the n-gram buckets in `columns` (sorted),
        the scaled embedding, and the neighbour features against the rows `ref` (whose classes
        are `labels`, a boolean (len(ref), K) matrix), each row never its own neighbour."""
        from scipy import sparse

        where = {r: j for j, r in enumerate(ref)}
        exclude = np.array([where.get(r, -1) for r in rows])
        near = neighbours(self.vectors[list(rows)], self.vectors[list(ref)], labels, exclude)

        data, indices, indptr = [], [], [0]
        for r in rows:
            ids, values = self.sparse[r]
            pos = np.searchsorted(columns, ids).clip(0, len(columns) - 1)
            known = columns[pos] == ids
            indices.append(pos[known])
            data.append(values[known].astype(np.float64))
            indptr.append(indptr[-1] + int(known.sum()))
        grams = sparse.csr_matrix(
            (np.concatenate(data), np.concatenate(indices), np.array(indptr)), shape=(len(rows), len(columns))
        )
        dense = sparse.csr_matrix(self.vectors[list(rows)] * emb_scale)
        return sparse.hstack([grams, dense, sparse.csr_matrix(near)], format="csr")

    def columns(self, rows: Sequence[int]) -> np.ndarray:
        return np.unique(np.concatenate([self.sparse[r][0] for r in rows] or [np.zeros(0, np.int64)]))


def _multinomial(X: Any, T: np.ndarray, sw: np.ndarray, l2: float, maxiter: int) -> tuple[np.ndarray, np.ndarray]:
    """Softmax regression over the categories and `harmless` (targets `T`, rows summing to 1,
    sample weights `sw`) with an L2 penalty (not on the biases), by L-BFGS."""
    from scipy.optimize import minimize

    n, d = X.shape
    k = T.shape[1]
    sw = sw / sw.mean()

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        W, b = theta[: d * k].reshape(d, k), theta[d * k :]
        z = X @ W + b
        z -= z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        ll = -(sw[:, None] * T * logp).sum() / n
        g = sw[:, None] * (np.exp(logp) - T) / n
        grad = np.concatenate([(X.T @ g + l2 * W).ravel(), g.sum(axis=0)])
        return float(ll + 0.5 * l2 * (W * W).sum()), grad

    res = minimize(loss, np.zeros(d * k + k), jac=True, method="L-BFGS-B", options={"maxiter": maxiter})
    return res.x[: d * k].reshape(d, k), res.x[d * k :]


def targets(rows: Sequence[Row], idx: Sequence[int], categories: Sequence[str]) -> np.ndarray:
    """(len(idx), C + 1): 1 where the row carries the category; the last column is `harmless`."""
    classes = [*categories, ""]
    return np.array(
        [[1.0 if c in rows[i].labels or (c == "" and not rows[i].labels) else 0.0 for c in classes] for i in idx]
    )


def platt(z: np.ndarray, y: np.ndarray, steps: int = 50) -> tuple[float, float]:
    """P(y | z) = sigmoid(a z + b) by Newton's method (Platt's smoothed targets)."""
    n_pos, n_neg = float(y.sum()), float(len(y) - y.sum())
    t = np.where(y > 0, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    w = np.array([1.0, 0.0])
    X = np.stack([z, np.ones_like(z)], axis=1)
    for _ in range(steps):
        p = sigmoid(X @ w)
        grad = X.T @ (p - t) + 1e-6 * w
        hess = (X * (p * (1 - p))[:, None]).T @ X + 1e-6 * np.eye(2)
        w -= np.linalg.solve(hess, grad)
    return float(w[0]), float(w[1])


def _fit_raw(
    design: Design,
    rows: Sequence[Row],
    idx: Sequence[int],
    categories: Sequence[str],
    l2: float,
    emb_scale: float,
    maxiter: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(columns, weights (len(columns) + 384 + 2 (C + 1), C + 1), bias (C + 1,)) trained on rows `idx`."""
    columns = design.columns(idx)
    T = targets(rows, idx, categories)
    X = design.matrix(idx, columns, emb_scale, idx, T > 0)
    T /= T.sum(axis=1, keepdims=True)
    # Each class weighs about as much as the others (harmless texts outnumber any one category),
    # softened (square root) so that the probabilities stay near the data's own rates.
    counts = T.sum(axis=0)
    sw = (T @ (len(idx) / (T.shape[1] * np.maximum(counts, 1.0)))) ** 0.5
    W, b = _multinomial(X, T, sw, l2, maxiter)
    return columns, W, b


def fit(
    rows: Sequence[Row],
    encoder: Encoder,
    categories: Sequence[str],
    *,
    bits: int = 20,
    l2: float = 1e-6,
    emb_scale: float = 1.0,
    folds: int = 5,
    maxiter: int = 300,
    design: Design | None = None,
) -> Model:
    """Train on `rows`, calibrate on their out-of-fold logits."""
    design = design or Design([r.text for r in rows], encoder, bits)
    n = len(rows)
    order = list(range(n))
    random.Random(7).shuffle(order)
    oof = np.zeros((n, len(categories)))
    for k in range(folds):
        test = order[k::folds]
        train = sorted(set(order) - set(test))
        columns, W, b = _fit_raw(design, rows, train, categories, l2, emb_scale, maxiter)
        ref = targets(rows, train, categories) > 0
        oof[test] = class_logits(design.matrix(test, columns, emb_scale, train, ref) @ W + b)
    Y = np.array([[1.0 if c in r.labels else 0.0 for c in categories] for r in rows])
    # One calibration for text MiniLM read, one for text scored on n-grams alone (Chinese).
    readable = design.vectors.any(axis=1)
    cal = np.array(
        [[platt(oof[group, j], Y[group, j]) for j in range(len(categories))] for group in (readable, ~readable)]
    )
    columns, W, b = _fit_raw(design, rows, list(range(n)), categories, l2, emb_scale, maxiter)
    k = len(columns)
    grams = W[:k]
    used = np.abs(grams).max(axis=1) > 1e-4  # buckets that carry weight
    labels = targets(rows, list(range(n)), categories) > 0  # only texts MiniLM read can be neighbours
    return Model(
        categories=list(categories),
        bits=bits,
        emb_scale=emb_scale,
        dense=W[k : k + 384].astype(np.float32),
        knn_ref=design.vectors[readable].astype(np.float32),
        knn_labels=labels[readable],
        knn_w=W[k + 384 :].astype(np.float32),
        bucket_ids=columns[used].astype(np.int64),
        bucket_w=grams[used].astype(np.float32),
        bias=b.astype(np.float32),
        platt=cal,
        meta={"texts": n, "l2": l2, "folds": folds},
    )


def save(model: Model, path: Path) -> None:
    np.savez_compressed(
        path,
        categories=np.array(model.categories),
        bits=np.array(model.bits),
        emb_scale=np.array(model.emb_scale),
        dense=model.dense,
        bucket_ids=model.bucket_ids.astype(np.int32 if model.bits < 31 else np.int64),
        bucket_w=model.bucket_w.astype(np.float16),
        bias=model.bias,
        platt=model.platt,
        # Unit vectors, components within [-1, 1]: 8 bits each (cosine error ~1e-3) keep the file small.
        knn_ref=np.round(model.knn_ref * 127).astype(np.int8),
        knn_labels=model.knn_labels,
        knn_w=model.knn_w,
    )


def ece(probs: np.ndarray, y: np.ndarray, bins: int = 10) -> tuple[float, list[tuple[float, float, int]]]:
    """Expected calibration error and the reliability points (mean predicted, observed, count) per
    non-empty bin of equal width."""
    points = []
    total = 0.0
    edges = np.linspace(0, 1, bins + 1)
    for lo, hi in itertools.pairwise(edges):
        inside = (probs >= lo) & ((probs < hi) if hi < 1 else (probs <= hi))
        k = int(inside.sum())
        if k:
            conf, acc = float(probs[inside].mean()), float(y[inside].mean())
            total += k * abs(conf - acc)
            points.append((conf, acc, k))
    return (total / max(1, len(y))), points
