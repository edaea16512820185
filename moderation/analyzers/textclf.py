"""Text risk per category: a trained classifier over sentence embeddings and character n-grams.

Two views of each text feed one softmax regression over the categories of the taxonomy and
`harmless`:

- the all-MiniLM-L6-v2 sentence embedding (`embed.MiniLM`, NumPy): meaning, for English;
- its nearest training texts: per class, the similarity of the nearest one and of the nearest
  three (the local structure a linear model on the embedding misses);
- hashed n-grams: words and word pairs, character 3-5-grams inside words (misspellings,
  leetspeak, "unalive"), Chinese characters and their pairs and triples (MiniLM reads no
  Chinese), and emoji. The vocabulary is hashed, so no word list ships: only the weights of the
  buckets the training texts used.

The weights, the feature settings and a Platt calibration per category (fitted on out-of-fold
predictions, so the probabilities mean what they say) live in one file,
`policies/lite/textclf.npz`, written by `textfit.fit` (`python bench/fit_text.py`).

For English, a second model votes: MiniLM itself tuned to the taxonomy (a low-rank update of its
layers and a head, `bench/tune_text.py`, calibrated the same way), in `texttune.npz` beside the
weights. The frozen embedding was trained to find paraphrases, not harm; the tuned one is
trained to tell harm from its look-alikes. The two calibrated log-odds are averaged: on the
held-out split and the development set this holds about half as much harmless English text as
the linear model alone, at the same recall (bench/RESULTS.md). Both files' digests are part of
the lite analyzer's version and of the verdict-cache key. Inference is NumPy only.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import re
import unicodedata
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from moderation.settings import data_dir

WEIGHTS = data_dir("policies") / "lite" / "textclf.npz"
TUNED_NAME = "texttune.npz"  # the tuned MiniLM's adapter and head, beside the weights (bench/tune_text.py)

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
_CJK_RUN = re.compile(f"[{_CJK}]+")
_CJK_GAP = re.compile(f"(?<=[{_CJK}])\\s+(?=[{_CJK}])")
_WORD = re.compile(f"[^\\W_{_CJK}]+(?:'[^\\W_{_CJK}]+)?")
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s", "!": "i"})
# A token of letters with digits or symbols for letters inside it ("s3x", "k!ll", "@ss"); a "!"
# only between letters ("kill!" is an exclamation).
_LEETY = re.compile(r"(?=[a-z0-9@$!]*[a-z])(?=[a-z0-9@$!]*[0-9@$])[a-z0-9@$]+|[a-z]+(?:![a-z]+)+")
_SPACED = re.compile(r"(?<!\S)((?:[a-z] ){2,}[a-z])(?!\S)")
MAX_CHARS = 4000  # features of a text's first 4,000 characters (a page of chat): bounded work per text
MAX_TOKEN = 40  # longer "words" (hashes, base64, keyboard mashing) are not read as leetspeak


class Encoder(Protocol):
    def encode(self, sentences: list[str]) -> np.ndarray: ...


def normalise(text: str) -> str:
    """NFKC, lower case, one space (as the lite analyzer compares text: the embedding of a text it
    already encoded is then reused)."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip().lower()


def grams(text: str) -> list[str]:
    """The n-gram features of one normalised text (each named by its kind)."""
    out: list[str] = []
    text = _CJK_GAP.sub("", text[:MAX_CHARS])  # CJK split by spaces, as OCR often returns it, joined
    # Letters spaced out one by one ("k i l l y o u r s e l f") read as one word too.
    spaced = _SPACED.sub(lambda m: m.group(1).replace(" ", ""), text)
    leety = " ".join(_unleet(token) for token in spaced.split(" "))
    words = _WORD.findall(leety)
    out += (f"w:{w}" for w in words)
    out += (f"b:{a} {b}" for a, b in itertools.pairwise(words))
    for w in set(words):
        if len(w) < 3 or w.isdigit():
            continue
        padded = f"<{w}>"
        for n in (3, 4, 5):
            out += (f"c:{padded[i : i + n]}" for i in range(len(padded) - n + 1))
    for run in _CJK_RUN.findall(text):
        for n in (1, 2, 3):
            out += (f"h:{run[i : i + n]}" for i in range(len(run) - n + 1))
    out += (f"e:{ch}" for ch in text if unicodedata.category(ch) == "So")
    if re.search(r"https?://|www\.|\.(?:com|net|xyz|top|io|co|ru|cn)\b", text):
        out.append("x:url")
    if re.search(r"\b(?:0x[0-9a-f]{20,}|(?:bc1|[13])[a-z0-9]{25,39}|t[a-z0-9]{33})\b", text):
        out.append("x:wallet")
    if re.search(r"\d{3}[-. ]?\d{2,4}[-. ]?\d{4}", text):
        out.append("x:number")
    return out


def _unleet(token: str) -> str:
    if len(token) > MAX_TOKEN:
        return token
    return _LEETY.sub(lambda m: m.group(0).translate(_LEET), token)


def hashed(text: str, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(bucket ids, values) of one normalised text: each distinct n-gram once, L2-normalised."""
    mask = (1 << bits) - 1
    ids = np.array(sorted({zlib.crc32(g.encode("utf-8")) & mask for g in grams(text)}), dtype=np.int64)
    values = np.full(len(ids), 1.0 / np.sqrt(max(1, len(ids))), dtype=np.float32)
    return ids, values


_LATIN_WORD = re.compile(f"[^\\W\\d_{_CJK}]+")


def judgeable(text: str) -> bool:
    """Whether a normalised text says enough for the classifier: two words (one of seven letters
    or more counts as two: "whitepower", "gasthejews" run words together), or four CJK
    characters (a Chinese word is about two), or three different emoji ("💊❄️🍃"), or a mix. Below
    that ("lol", "你好", "你是谁", "🔥🔥", a stray glyph) a handful of n-grams decide, and the
    classifier answers with confidence it has not earned; exact short terms (slurs, codes, "kys",
    "傻逼") are the rules'."""
    emoji = {ch for ch in text if unicodedata.category(ch) == "So"}
    words = sum(2 if len(w) >= 7 else 1 for w in _LATIN_WORD.findall(text))
    units = words + len(_CJK_CHARS.findall(text)) / 2 + len(emoji) * 2 / 3
    return units >= 2 - 1e-9


def embeddable(text: str) -> bool:
    """Whether MiniLM can read `text`: mostly Latin script. It embeds every Chinese line alike
    (noise a classifier learns to trust), so CJK text is left to the n-grams."""
    cjk = len(_CJK_CHARS.findall(text))
    latin = len(re.findall(r"[a-z]", text))
    return latin >= 4 and latin >= 2 * cjk


_CJK_CHARS = re.compile(f"[{_CJK}]")


def _cjk_count(text: str) -> int:
    return len(_CJK_CHARS.findall(text))


def embeddings(encoder: Encoder, texts: Sequence[str]) -> np.ndarray:
    """The sentence embedding of each text MiniLM can read; zeros for the rest."""
    out = np.zeros((len(texts), 384), dtype=np.float32)
    keep = [i for i, t in enumerate(texts) if embeddable(t)]
    if keep:
        out[keep] = encoder.encode([texts[i] for i in keep])
    return out


def neighbours(
    vectors: np.ndarray, ref: np.ndarray, labels: np.ndarray, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Per class (a column of `labels`, a boolean (len(ref), K) matrix): the cosine similarity of
    each vector to its nearest reference text of that class, and the mean over the nearest three.
    `exclude[i]`: the row of `ref` that is vector i itself (leave-one-out while training), or -1."""
    sims = vectors @ ref.T
    if exclude is not None:
        rows = np.where(exclude >= 0)[0]
        sims[rows, exclude[rows]] = -1.0
    out = np.zeros((len(vectors), 2 * labels.shape[1]), dtype=np.float32)
    for k in range(labels.shape[1]):
        cls = sims[:, labels[:, k]]
        if cls.shape[1] == 0:
            continue
        n = min(3, cls.shape[1])
        top = np.partition(cls, cls.shape[1] - n, axis=1)[:, -n:]  # the n largest, unordered
        out[:, 2 * k], out[:, 2 * k + 1] = top.max(axis=1), top.mean(axis=1)
    out[~vectors.any(axis=1)] = 0.0  # text MiniLM cannot read has no neighbours
    return out


def sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -40, 40))))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-9, 1 - 1e-9)
    return np.asarray(np.log(p / (1 - p)))


def class_logits(z: np.ndarray) -> np.ndarray:
    """Softmax over the categories and `harmless` (the last column); each category's log-odds."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return _logit((e / e.sum(axis=1, keepdims=True))[:, :-1])


class TextClassifier:
    """Calibrated P(category | text) for each category the weights file was trained on."""

    def __init__(self, encoder: Encoder | None = None, path: Path = WEIGHTS) -> None:
        if encoder is None:
            from moderation.analyzers.embed import MiniLM

            encoder = MiniLM()
        self.encoder = encoder
        raw = path.read_bytes()  # read once: the digest names what was loaded
        data = np.load(io.BytesIO(raw), allow_pickle=False)
        self.version = hashlib.sha256(raw).hexdigest()[:8]
        self.categories: list[str] = [str(c) for c in data["categories"]]
        self.bits = int(data["bits"])
        self.emb_scale = float(data["emb_scale"])
        self.dense = np.asarray(data["dense"], dtype=np.float32)  # (384, C + 1): the last is `harmless`
        self.bucket_ids = np.asarray(data["bucket_ids"], dtype=np.int64)  # sorted (K,)
        self.bucket_w = np.asarray(data["bucket_w"], dtype=np.float16)  # (K, C + 1); rows widened when read
        self.bias = np.asarray(data["bias"], dtype=np.float32)
        # (2, C, 2): a, b per category, for text MiniLM read and for text it cannot (Chinese): the
        # two are scored on different features, so their log-odds mean different things.
        platt = np.asarray(data["platt"], dtype=np.float64)
        self.platt = platt if platt.ndim == 3 else np.stack([platt, platt])
        # Nearest training texts: their embeddings and classes, and the weights of the features.
        self.knn_ref = np.asarray(data["knn_ref"], dtype=np.float32) / 127.0  # (N, 384), stored in int8
        self.knn_labels = np.asarray(data["knn_labels"], dtype=bool)  # (N, C + 1)
        self.knn_w = np.asarray(data["knn_w"], dtype=np.float32)  # (2 (C + 1), C + 1)
        self.load_tuned(path.with_name(TUNED_NAME))

    def load_tuned(self, path: Path) -> None:
        """The second model, where its file lies beside the weights and the encoder can be tuned
        (MiniLM; not a test double): MiniLM with the adapter of `bench/tune_text.py` and a head
        over the categories, calibrated per category. Its digest joins the version (the file is
        read once: the digest names what was loaded). Raises ValueError when its categories are
        not the linear model's, or an array has the wrong shape or a value that is not finite."""
        self.tuned: Any = None
        if not path.exists() or not hasattr(self.encoder, "tuned"):
            return
        raw = path.read_bytes()
        data = dict(np.load(io.BytesIO(raw), allow_pickle=False))
        if [str(c) for c in data.get("categories", [])] != self.categories:
            raise ValueError(f"{path.name}: its categories are not those of the text classifier")
        k = len(self.categories)
        shapes = {"head_w": (384, k + 1), "head_b": (k + 1,), "platt": (k, 2), "scale": ()}
        for name, shape in shapes.items():
            if name not in data or data[name].shape != shape or not np.isfinite(data[name]).all():
                raise ValueError(f"{path.name}: {name} is missing, not of shape {shape} or not finite")
        self.tuned = self.encoder.tuned(data)
        self.head_w = np.asarray(data["head_w"], dtype=np.float32)  # (384, C + 1): the last is `harmless`
        self.head_b = np.asarray(data["head_b"], dtype=np.float32)
        self.head_scale = float(data["scale"])
        self.head_platt = np.asarray(data["platt"], dtype=np.float64)  # (C, 2)
        self.version += "+" + hashlib.sha256(raw).hexdigest()[:8]

    def tuned_probs(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), C): the tuned model's calibrated probabilities for normalised texts MiniLM
        reads. Raises ValueError when a probability is not finite (the stage then fails closed)."""
        z = (self.tuned.encode(list(texts)) * self.head_scale) @ self.head_w + self.head_b
        probs = sigmoid(self.head_platt[:, 0] * class_logits(z) + self.head_platt[:, 1])
        if not np.isfinite(probs).all():
            raise ValueError("the tuned text model gave a score that is not a number")
        return probs

    def logits(
        self, texts: Sequence[str], features: Sequence[tuple[np.ndarray, np.ndarray]] | None = None
    ) -> np.ndarray:
        """Raw softmax logits, (len(texts), C + 1), of normalised texts (`features`: their
        `hashed` n-grams, when the caller has them already)."""
        if not texts:
            return np.zeros((0, len(self.categories) + 1), dtype=np.float32)
        vectors = embeddings(self.encoder, texts)
        z = (vectors * self.emb_scale) @ self.dense + self.bias
        z += neighbours(vectors, self.knn_ref, self.knn_labels) @ self.knn_w
        for i, text in enumerate(texts):
            ids, values = features[i] if features is not None else hashed(text, self.bits)
            pos = np.searchsorted(self.bucket_ids, ids).clip(0, max(0, len(self.bucket_ids) - 1))
            known = self.bucket_ids[pos] == ids if len(self.bucket_ids) else np.zeros(len(ids), bool)
            if known.any():
                z[i] += values[known] @ self.bucket_w[pos[known]].astype(np.float32)
        return np.asarray(z)

    def calibrate(self, z: np.ndarray, readable: np.ndarray | None = None) -> np.ndarray:
        """Softmax over the categories and `harmless` (the last column), then each category's
        log-odds through its Platt calibration: the one for text MiniLM read where `readable[i]`,
        the one for text scored on n-grams alone (Chinese) elsewhere."""
        ab = self.platt[np.where(readable, 0, 1)] if readable is not None else self.platt[0]
        return sigmoid(ab[..., 0] * class_logits(z) + ab[..., 1])

    def score_many(self, texts: Iterable[str]) -> list[dict[str, float]]:
        """Calibrated probability per category for each text (normalised here); {} for text with
        too little to judge (`judgeable`: fewer than two words or four CJK characters)."""
        normed = [normalise(t) for t in texts]
        features = [hashed(t, self.bits) if judgeable(t) else (np.zeros(0, np.int64), np.zeros(0)) for t in normed]
        keep = [i for i, (ids, _) in enumerate(features) if len(ids)]
        out: list[dict[str, float]] = [{} for _ in normed]
        if keep:
            texts = [normed[i] for i in keep]
            readable = np.array([embeddable(t) for t in texts])
            probs = self.calibrate(self.logits(texts, [features[i] for i in keep]), readable)
            # Two models of English text, averaged in log-odds: the linear one on the frozen
            # embedding, its neighbours and n-grams; the tuned MiniLM (bench/RESULTS.md). Not on
            # text with Chinese in it: the tuned model was trained on English alone, and English
            # filler around Chinese would let it outvote the n-grams that read the Chinese. Two
            # CJK characters or fewer are OCR's stray glyphs ("国13:40" off a status bar), and a
            # term that short is the rules' (textclf.judgeable).
            rows = np.array([i for i, t in enumerate(texts) if readable[i] and _cjk_count(t) <= 2], dtype=int)
            if self.tuned is not None and len(rows):
                both = _logit(probs[rows]) + _logit(self.tuned_probs([texts[r] for r in rows]))
                probs[rows] = sigmoid(both / 2)
            for row, i in enumerate(keep):
                out[i] = {c: round(float(p), 3) for c, p in zip(self.categories, probs[row], strict=True)}
        return out

    def score(self, text: str) -> dict[str, float]:
        return self.score_many([text])[0]
