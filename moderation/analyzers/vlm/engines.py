"""VLM engines behind one interface: `generate(requests) -> one outcome per request`.

- `TransformersEngine`: in-process Hugging Face model (`AutoModelForImageTextToText` +
  `AutoProcessor`), GLM-4.6V-Flash by default, any image-text-to-text model whose processor has
  a chat template. One `generate` call is one batched model call (left padding, greedy).
- `OpenAIEngine`: an OpenAI-compatible chat-completions server (vLLM serving GLM-4.6V-Flash):
  concurrent requests, JSON-schema structured output, timeouts, retries with backoff.

Every call is recorded in the engine's `batch_log` (id, size, item keys, timings, tokens), and
each output carries its batch id and size, so the grouping can be audited per finding.
Heavy imports (torch, transformers) happen inside `TransformersEngine.__init__` only.
"""

from __future__ import annotations

import hashlib
import math
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from moderation.analyzers.vlm.prompts import RenderedPrompt
from moderation.errors import FatalAnalyzerError


@dataclass(frozen=True)
class Request:
    key: str  # the submission id (for the batch log)
    image: Image.Image
    prompt: RenderedPrompt
    schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class Generation:
    text: str
    batch_id: str
    batch_size: int
    tokens_in: int = 0
    tokens_out: int = 0
    truncated: bool = False  # stopped by max_new_tokens, not by the model
    steps: list[tuple[str, dict[str, float]]] | None = None  # per token: text, top alternatives' logprobs


@dataclass
class BatchLogEntry:
    batch_id: str
    size: int
    keys: list[str]
    started: float
    ms: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    errors: int = 0
    splits: int = 0  # times the batch was halved after running out of GPU memory
    tokens_cached: int = 0  # prompt tokens read from the shared-prefix KV cache, not recomputed


Outcome = Generation | BaseException


class FatalEngineError(FatalAnalyzerError):
    """The engine cannot work again in this process (a poisoned CUDA context)."""


def fatal_device_error(exc: BaseException) -> bool:
    """CUDA errors after which the process's context is unusable (unlike out-of-memory)."""
    text = f"{type(exc).__name__}: {exc}"
    return ("CUDA error" in text or "AcceleratorError" in text) and "out of memory" not in text


class Engine(Protocol):
    model_id: str
    model_version: str
    batch_log: deque[BatchLogEntry]
    broken: str | None
    max_call_s: float

    def generate(self, requests: list[Request], max_new_tokens: int, logprobs: int = 0) -> list[Outcome]:
        """One outcome per request; with `logprobs` > 0, each generated token's top alternatives."""
        ...


def add_alternative(alternatives: dict[str, float], text: str, logprob: float) -> None:
    """Two tokens that decode to the same text (" 1" and "1") are one alternative: add their
    probabilities rather than let the later, less likely one overwrite the other."""
    if text in alternatives:
        alternatives[text] = float(math.log(math.exp(alternatives[text]) + math.exp(logprob)))
    else:
        alternatives[text] = logprob


def alternatives_of(top: list[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for a in top:
        add_alternative(out, str(a["token"]), float(a["logprob"]))
    return out


def fit_long_side(image: Image.Image, side: int) -> Image.Image:
    """Scale down so that the long side is at most `side` (the main speed/quality setting)."""
    w, h = image.size
    if max(w, h) <= side:
        return image
    scale = side / max(w, h)
    return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)


def record_batch(log_: deque[BatchLogEntry], requests: list[Request]) -> BatchLogEntry:
    entry = BatchLogEntry(uuid.uuid4().hex[:12], len(requests), [r.key for r in requests], time.time())
    log_.append(entry)
    return entry


def build_engine(kind: str, **options: Any) -> Engine:
    """`transformers` or `openai`, with that engine's keyword options."""
    if kind == "transformers":
        from moderation.analyzers.vlm.transformers_engine import TransformersEngine

        return TransformersEngine(**options)
    if kind == "openai":
        from moderation.analyzers.vlm.openai_engine import OpenAIEngine

        return OpenAIEngine(**options)
    raise ValueError(f"unknown VLM engine {kind!r} (transformers | openai)")


def model_ref(path_or_id: str) -> str:
    """A local checkpoint path as an absolute path; a hub id unchanged (resolved from the local cache)."""
    p = Path(path_or_id).expanduser()
    return str(p.resolve()) if p.exists() else path_or_id


def adapter_digest(adapter: str) -> str:
    """What identifies an adapter: a local PEFT folder by the digest of its config and weights
    (retrained in place, it is a new model), a name served by a vLLM server by that name."""
    path = Path(adapter).expanduser()
    if not path.is_dir():
        return adapter
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.is_file() and f.name.startswith("adapter_"):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]
