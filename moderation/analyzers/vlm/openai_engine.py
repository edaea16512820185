"""The remote engine: an OpenAI-compatible server (vLLM) with JSON-schema structured output,
concurrent requests, timeouts and retries with jittered backoff."""

from __future__ import annotations

import base64
import io
import json
import logging
import random
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from moderation.analyzers.vlm.engines import (
    BatchLogEntry,
    Generation,
    Outcome,
    Request,
    alternatives_of,
    fit_long_side,
    record_batch,
)
from moderation.errors import TransientAnalyzerError
from moderation.settings import default

log = logging.getLogger("moderation.analyzers.vlm")  # one logger for the VLM stage


class OpenAIEngine:
    """An OpenAI-compatible chat-completions server (vLLM, SGLang, …) over HTTP."""

    RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})

    def __init__(
        self,
        base_url: str,
        model: str = default("vlm_model"),
        api_key: str | None = None,
        image_side: int = default("vlm_image_side"),
        concurrency: int = default("vlm_concurrency"),
        timeout_s: float = default("vlm_timeout_s"),
        retries: int = default("vlm_retries"),
        structured: bool = True,
    ) -> None:
        import httpx

        self._httpx = httpx
        self.base_url = base_url.rstrip("/")
        self.model_id = model
        self.model_version = "server"
        self.image_side = image_side
        self.retries = retries
        self.structured = structured
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            timeout=timeout_s, headers=headers, limits=httpx.Limits(max_connections=concurrency)
        )
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="vlm-http")
        self._count_lock = threading.Lock()
        self.broken: str | None = None
        # Worst case for one request: every attempt times out, plus the backoff between them.
        self.max_call_s = (retries + 1) * timeout_s + sum(min(8.0, 0.25 * 2**a) * 1.5 for a in range(1, retries + 1))
        self.batch_log: deque[BatchLogEntry] = deque(maxlen=1000)

    def warmup(self, wait_s: float = 600.0) -> None:
        """Fail at start-up, not on the first image, when the server serves another model; wait
        (with backoff, up to `wait_s`) for a server that is still starting (vLLM loads for minutes)."""
        deadline = time.monotonic() + wait_s
        delay = 1.0
        while True:
            try:
                resp = self._client.get(f"{self.base_url}/models")
                resp.raise_for_status()
                served = [m.get("id") for m in resp.json().get("data", [])]
                break
            except Exception as exc:
                if time.monotonic() + delay > deadline:
                    raise TransientAnalyzerError(f"VLM server {self.base_url} unreachable: {exc}") from exc
                log.warning("VLM server %s not answering yet (%s); retrying in %.0f s", self.base_url, exc, delay)
                time.sleep(delay)
                delay = min(30.0, delay * 2)
        if served and self.model_id not in served:
            raise RuntimeError(f"VLM server {self.base_url} serves {served}, not {self.model_id!r}")

    def _body(self, r: Request, max_new_tokens: int, logprobs: int = 0) -> dict[str, Any]:
        buf = io.BytesIO()
        fit_long_side(r.image.convert("RGB"), self.image_side).save(buf, "JPEG", quality=90)
        url = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
        body: dict[str, Any] = {
            "model": self.model_id,
            "messages": [
                {"role": "system", "content": r.prompt.system},
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": url}},
                        {"type": "text", "text": r.prompt.user},
                    ],
                },
            ],
            "max_tokens": max_new_tokens,
            "temperature": 0,
            "chat_template_kwargs": {"enable_thinking": False},
        }
        if logprobs > 0:
            body |= {"logprobs": True, "top_logprobs": logprobs}
        if self.structured and r.schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "moderation_answer", "schema": r.schema},
            }
        return body

    def _one(self, r: Request, max_new_tokens: int, entry: BatchLogEntry, logprobs: int = 0) -> Outcome:
        httpx = self._httpx
        try:
            body = json.dumps(self._body(r, max_new_tokens, logprobs))
        except Exception as exc:  # this item's image cannot be encoded: only this item fails
            return exc
        last = ""
        answered = False  # the server answered (an error): it may be this item that breaks it
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(8.0, 0.25 * 2**attempt) * (0.5 + random.random()))
            try:
                resp = self._client.post(
                    f"{self.base_url}/chat/completions", content=body, headers={"Content-Type": "application/json"}
                )
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if resp.status_code in self.RETRY_STATUS:
                last = f"HTTP {resp.status_code}"
                answered = answered or resp.status_code >= 500
                continue
            if resp.status_code >= 400:  # the server refuses this request: final for this item
                return RuntimeError(f"VLM server answered HTTP {resp.status_code}: {resp.text[:200]}")
            try:
                data = resp.json()
                choice = data["choices"][0]
                text = choice["message"]["content"] or ""
                usage = data.get("usage") or {}
                n_in, n_out = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
                steps = None
                if logprobs > 0 and choice.get("logprobs"):
                    steps = [
                        (c["token"], alternatives_of(c.get("top_logprobs") or []))
                        for c in choice["logprobs"]["content"]
                    ]
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                return RuntimeError(f"VLM server reply is not a chat completion: {exc}")
            with self._count_lock:
                entry.tokens_in += n_in
                entry.tokens_out += n_out
            truncated = choice.get("finish_reason") == "length"
            return Generation(text, entry.batch_id, entry.size, n_in, n_out, truncated, steps)
        return TransientAnalyzerError(
            f"VLM server {self.base_url} failed {self.retries + 1} times: {last}", charge_attempt=answered
        )

    def generate(self, requests: list[Request], max_new_tokens: int, logprobs: int = 0) -> list[Outcome]:
        entry = record_batch(self.batch_log, requests)
        started = time.perf_counter()
        outcomes = list(self._pool.map(lambda r: self._one(r, max_new_tokens, entry, logprobs), requests))
        entry.ms = (time.perf_counter() - started) * 1000
        entry.errors = sum(isinstance(o, BaseException) for o in outcomes)
        log.info(
            "vlm engine=openai batch=%s size=%d ms=%.1f errors=%d", entry.batch_id, entry.size, entry.ms, entry.errors
        )
        return outcomes
