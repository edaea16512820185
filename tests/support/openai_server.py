"""A small OpenAI-compatible chat-completions server over a local checkpoint (test fixture).

It stands in for vLLM in the `openai` engine's tests: real HTTP, the same request shape
(`messages` with an `image_url` data URL, `max_tokens`, `response_format`,
`chat_template_kwargs`), served by the in-process `TransformersEngine` behind a micro-batcher,
as vLLM batches concurrent requests. `response_format` is accepted and ignored (no constrained
decoding here). Run: python -m tests.support.openai_server --model PATH --port N
"""

from __future__ import annotations

import argparse
import base64
import io
import time
import uuid
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException
from PIL import Image

from moderation.analyzers.vlm.batching import MicroBatcher
from moderation.analyzers.vlm.engines import Generation, Request
from moderation.analyzers.vlm.prompts import RenderedPrompt
from moderation.analyzers.vlm.transformers_engine import TransformersEngine


def _request(body: dict[str, Any]) -> tuple[Request, int]:
    system, user, image = "", "", None
    for m in body.get("messages", []):
        content = m.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
        for p in parts:
            if p.get("type") == "text":
                if m.get("role") == "system":
                    system += p["text"]
                else:
                    user += p["text"]
            elif p.get("type") == "image_url":
                url = p["image_url"]["url"]
                if not url.startswith("data:image/"):
                    raise HTTPException(400, "only data: image URLs")
                image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
    if image is None:
        raise HTTPException(400, "no image in the request")
    return Request(uuid.uuid4().hex[:8], image, RenderedPrompt(system, user, ())), int(body.get("max_tokens", 64))


def create_app(model: str, max_batch: int = 8, wait_ms: float = 50.0) -> FastAPI:
    engine = TransformersEngine(model=model, device="cpu", image_side=112)
    batcher: MicroBatcher[tuple[Request, int, int], Generation] = MicroBatcher(
        lambda items: list(
            engine.generate([r for r, _, _ in items], max(n for _, n, _ in items), max(k for _, _, k in items))
        ),  # type: ignore[arg-type]
        max_batch,
        wait_ms / 1000,
        key=lambda item: item[0].key,
    )
    app = FastAPI()
    app.state.engine = engine

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model, "object": "model"}]}

    @app.post("/v1/chat/completions")
    def chat(body: dict[str, Any]) -> dict[str, Any]:
        if body.get("model") != model:
            raise HTTPException(404, f"model {body.get('model')!r} is not served")
        req, max_tokens = _request(body)
        top = int(body.get("top_logprobs") or 0) if body.get("logprobs") else 0
        out = batcher((req, max_tokens, top), timeout=300)
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": out.text},
            "finish_reason": "length" if out.truncated else "stop",
        }
        if out.steps is not None:
            choice["logprobs"] = {
                "content": [
                    {
                        "token": token,
                        "logprob": alternatives.get(token, -100.0),
                        "top_logprobs": [{"token": t, "logprob": lp} for t, lp in alternatives.items()],
                    }
                    for token, alternatives in out.steps
                ]
            }
        return {
            "id": f"chatcmpl-{req.key}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [choice],
            "usage": {"prompt_tokens": out.tokens_in, "completion_tokens": out.tokens_out},
            "batch": {"id": out.batch_id, "size": out.batch_size},
        }

    return app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--wait-ms", type=float, default=50.0)
    args = ap.parse_args()
    app = create_app(args.model, args.max_batch, args.wait_ms)
    print("serving", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", workers=1)


if __name__ == "__main__":
    main()
