"""The `vlm` analyzer: a vision-language model judges the image against the policy's categories.

Per image: the policy's risk prompt (`policies/prompts/<prompt>.yaml`) rendered with the policy's
categories and the caption, one engine call (micro-batched with the other images in flight in
this process), the answer parsed and validated; an invalid answer gets one stricter retry, then
the finding is an `unparseable` error, which the policy routes to review (fail closed).

Scores are the model's own generated numbers (`score_method: generated`), or, with
`score_method: logprob`, their expectation under the model's token probabilities where the
engine returns them (`moderation/analyzers/vlm/logprob.py`); each finding records per category which
method gave its score. Calibrate thresholds per deployment (bench/eval.py).
"""

from __future__ import annotations

import logging
from concurrent.futures import TimeoutError as FuturesTimeout
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

from moderation.analyzers.base import AnalysisInput, Analyzer, Finding
from moderation.analyzers.vlm.batching import MicroBatcher
from moderation.analyzers.vlm.engines import Engine, Generation, Request, adapter_digest, build_engine, model_ref
from moderation.analyzers.vlm.logprob import expected_scores
from moderation.analyzers.vlm.prompts import (
    RenderedPrompt,
    UnparseableOutput,
    json_schema,
    load_prompt,
    parse_answer,
    render,
)
from moderation.errors import FatalAnalyzerError, TransientAnalyzerError
from moderation.settings import Settings

log = logging.getLogger("moderation.analyzers.vlm")


DEFAULT_PROMPT = "risk-v1"


class VlmAnalyzer(Analyzer):
    name = "vlm"

    def __init__(
        self,
        prompt: str = DEFAULT_PROMPT,
        engine: str | None = None,
        model: str | None = None,
        max_new_tokens: int | None = None,
        image_side: int | None = None,
        score_method: str | None = None,
        settings: Settings | None = None,
        engine_instance: Engine | None = None,
        adapter: str | None = None,
    ) -> None:
        s = settings or Settings()
        adapter = adapter or s.vlm_adapter
        self.spec = load_prompt(s.policies_dir, prompt)
        self.max_new_tokens = max_new_tokens or s.vlm_max_new_tokens
        self.score_method = score_method or s.vlm_score_method
        if self.score_method not in ("generated", "logprob"):
            raise ValueError(f"score_method must be generated or logprob, not {self.score_method!r}")
        kind = engine or s.vlm_engine
        self.kind = kind
        side = image_side or s.vlm_image_side
        self.image_side = side
        if engine_instance is not None:
            self.engine = engine_instance
        elif kind == "openai":
            if not s.vlm_base_url:
                raise ValueError("the openai VLM engine needs MODERATION_VLM_BASE_URL")
            self.engine = build_engine(
                "openai",
                base_url=s.vlm_base_url,
                model=adapter or model or s.vlm_model,  # vLLM serves a LoRA adapter under its own name
                api_key=s.vlm_api_key,
                image_side=side,
                concurrency=s.vlm_concurrency,
                timeout_s=s.vlm_timeout_s,
                retries=s.vlm_retries,
            )
        else:
            self.engine = build_engine(
                "transformers", model=model_ref(model or s.vlm_model), device=s.vlm_device, dtype=s.vlm_dtype,
                image_side=side, prefix_cache=s.vlm_prefix_cache, adapter=adapter,
            )  # fmt: skip
        self.version = f"{self.engine.model_id.rstrip('/').rsplit('/', 1)[-1]}@{self.engine.model_version}"
        # In-process models run one batch at a time; a remote server takes several batches at once
        # (one slow request then delays only its own batch).
        parallel = 1 if kind != "openai" else max(1, s.vlm_concurrency // max(1, s.vlm_batch_max)) + 1
        self.batcher: MicroBatcher[AnalysisInput, Finding] = MicroBatcher(
            self.analyze_batch_outcomes,
            s.vlm_batch_max,
            s.vlm_batch_wait_ms / 1000,
            key=lambda i: i.submission_id,
            parallel=parallel,
            group=lambda i: tuple(i.categories),  # same categories, same system turn: one shared prefix
        )
        # An item waits for at most the batch ahead of it, then its own answer and retry; and
        # below the broker's visibility timeout, after which the message would be redelivered.
        self.timeout_s = min(3 * self.engine.max_call_s, 0.8 * s.analyze_time_limit_s) + s.vlm_batch_wait_ms / 1000

    def close(self) -> None:
        """Stop the micro-batcher (the model is freed with the analyzer)."""
        self.batcher.close()

    @classmethod
    def identity(cls, options: dict[str, Any], settings: Any) -> str:
        """Engine, model and prompt version: a new checkpoint or prompt wording never reuses a
        cached verdict."""
        s = settings or Settings()
        spec = load_prompt(s.policies_dir, str(options.get("prompt", DEFAULT_PROMPT)))
        model = options.get("model") or s.vlm_model
        engine = options.get("engine") or s.vlm_engine
        side = options.get("image_side") or s.vlm_image_side
        method = options.get("score_method") or s.vlm_score_method
        adapter = options.get("adapter") or s.vlm_adapter
        if adapter:
            model = f"{model}+{adapter_digest(str(adapter))}"
        return f"{engine}:{model}:{side}:{method}:{spec.full_version}"

    @classmethod
    def check_policy(cls, options: dict[str, Any], categories: tuple[str, ...], policies_dir: Path) -> None:
        """The stage's prompt (`options.prompt`, `prompts/<name>.yaml`) exists and defines every
        category of the policy."""
        name = str(options.get("prompt", DEFAULT_PROMPT))
        try:
            spec = load_prompt(policies_dir, name)
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise ValueError(f"prompt {name!r}: {exc}") from exc
        missing = sorted(set(categories) - set(spec.categories))
        if missing:
            raise ValueError(f"prompt {name!r} does not define {missing}")

    def warmup(self) -> None:
        warm = getattr(self.engine, "warmup", None)
        if warm is not None:
            warm()

    def analyze(self, item: AnalysisInput) -> Finding:
        """One image, batched with whatever else this process is analysing right now.

        Raises TransientAnalyzerError (retry later) when its batch does not finish in time, and
        FatalAnalyzerError when the engine is unusable for good (the worker must exit)."""
        if self.engine.broken:
            raise FatalAnalyzerError(f"VLM engine unusable: {self.engine.broken}")
        if not self.batcher.alive:
            raise FatalAnalyzerError("the VLM batcher thread has died")
        if item.isolate:  # a redelivery: run alone (the engine still serialises model calls)
            (outcome,) = self.analyze_batch_outcomes([item])
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        future = self.batcher.submit(item)
        try:
            return future.result(timeout=self.timeout_s)
        except FuturesTimeout as exc:
            future.cancel()  # not run later for nobody, if it has not started
            stuck = self.batcher.running_for()
            # A batch is two rounds (answer, retry) of at most max_call_s each, plus splits. An
            # in-process model stuck well past that is hung: restarting the worker helps. A slow
            # remote server is not fixed by a restart: that stays a transient fault.
            if stuck is not None and stuck > 4 * self.engine.max_call_s and self.kind != "openai":
                self.engine.broken = f"a model call has been running for {stuck:.0f} s"
                raise FatalAnalyzerError(self.engine.broken) from exc
            raise TransientAnalyzerError(f"VLM batch did not finish within {self.timeout_s:.0f} s") from exc

    def analyze_batch(self, items: list[AnalysisInput]) -> list[Finding]:
        """Several images in one engine call (benchmarks, evaluation). Transient faults raise."""
        out: list[Finding] = []
        for o in self.analyze_batch_outcomes(items):
            if isinstance(o, BaseException):
                raise o
            out.append(o)
        return out

    def analyze_batch_outcomes(self, items: list[AnalysisInput]) -> list[Finding | BaseException]:
        prompts = [render(self.spec, list(i.categories), i.caption, self._frames(i)) for i in items]
        outcomes: list[Finding | BaseException | None] = [None] * len(items)
        pending = list(range(len(items)))
        problems: dict[int, str] = {}
        budget = self.max_new_tokens
        images = [self._picture(i) for i in items]
        for attempt in range(2):  # the answer, then one stricter retry for what did not parse
            if not pending:
                break
            reqs = []
            for i in pending:
                p = prompts[i]
                if attempt:
                    p = RenderedPrompt(p.system, f"{p.user}\n\n{self.spec.retry.strip()}", p.categories)
                reqs.append(Request(items[i].submission_id, images[i], p, json_schema(list(p.categories))))
            results = self.engine.generate(reqs, budget, logprobs=10 if self.score_method == "logprob" else 0)
            still: list[int] = []
            cut_off = False
            for i, result in zip(pending, results, strict=True):
                if isinstance(result, TransientAnalyzerError):
                    outcomes[i] = result  # the task retries later
                elif isinstance(result, BaseException):
                    outcomes[i] = self._error(f"{type(result).__name__}: {result}")
                else:
                    try:
                        outcomes[i] = self._finding(prompts[i], result, attempt)
                    except UnparseableOutput as exc:
                        problems[i] = str(exc) + (f" (cut off at {budget} tokens)" if result.truncated else "")
                        cut_off = cut_off or result.truncated
                        still.append(i)
            pending = still
            if cut_off:  # the same budget would cut the retry off again
                budget *= 2
        for i in pending:
            log.warning("vlm unparseable output for %s: %s", items[i].submission_id, problems[i])
            outcomes[i] = self._error(f"unparseable model output: {problems[i]}")
        return [o if o is not None else self._error("no outcome") for o in outcomes]

    @staticmethod
    def _frames(item: AnalysisInput) -> int:
        return min(4, 1 + len(item.frames_sample)) if item.frames > 1 else 1

    def _picture(self, item: AnalysisInput) -> Image.Image:
        """The image the model sees: the image itself, or for an animation a grid of its first
        frame and the sampled ones (the prompt says so), so that no frame goes unseen."""
        frames = [item.image, *item.frames_sample[-3:]]  # the samples end with the last frame
        if len(frames) == 1:
            return item.image
        side = max(32, self.image_side // 2)
        cells = [f.copy() for f in frames]
        for c in cells:
            c.thumbnail((side, side))
        grid = Image.new("RGB", (2 * side, side * ((len(cells) + 1) // 2)), "white")
        for n, c in enumerate(cells):
            grid.paste(c, ((n % 2) * side, (n // 2) * side))
        return grid

    def _model(self, g: Generation | None = None, attempt: int = 0) -> dict[str, str]:
        m = {
            "id": self.engine.model_id,
            "version": self.engine.model_version,
            "prompt_version": self.spec.full_version,
            "score_method": self.score_method,
        }
        if g is not None:
            m |= {
                "batch_id": g.batch_id,
                "batch_size": str(g.batch_size),
                "attempt": str(attempt + 1),
                "tokens_in": str(g.tokens_in),
                "tokens_out": str(g.tokens_out),
            }
        return m

    def _error(self, why: str) -> Finding:
        return Finding(self.name, self.version, stage="", error=why, model=self._model())

    def _finding(self, prompt: RenderedPrompt, g: Generation, attempt: int) -> Finding:
        a = parse_answer(g.text, prompt.categories)
        cats = list(prompt.categories)
        ocr = a.ocr_text.strip()
        scores = {c: a.categories[c].score for c in cats}
        methods = dict.fromkeys(cats, "generated")
        if self.score_method == "logprob" and g.steps:
            # Only ever raises a score (see moderation/analyzers/vlm/logprob.py): uncertainty goes to people.
            read = {c: v for c, v in expected_scores(g.steps, cats).items() if v > scores[c]}
            scores |= read
            methods |= dict.fromkeys(read, "logprob")
        model = self._model(g, attempt)
        used = set(methods.values())
        model["score_method"] = used.pop() if len(used) == 1 else "logprob+generated"
        return Finding(
            analyzer=self.name,
            version=self.version,
            stage="",
            scores=scores,
            confidence=a.confidence,
            covered=cats,
            rationale={c: a.categories[c].rationale[:500] for c in cats},
            flags={
                "text_in_image": bool(ocr),
                "meme": a.meme,
                "irony": a.irony,
                "prompt_injection": a.prompt_injection,
            },
            ocr_text=ocr[:4000] or None,
            model=model,
            score_methods=methods,
        )
