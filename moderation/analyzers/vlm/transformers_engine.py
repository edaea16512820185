"""The in-process engine: a Hugging Face vision-language model run with transformers (bf16 on CUDA,
SDPA, greedy, left padding) with a shared-prefix KV cache: the system turn is computed once per
prompt and each batch is laid out as prefix | padding | own tokens."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

from PIL import Image

from moderation.analyzers.vlm.engines import (
    BatchLogEntry,
    FatalEngineError,
    Generation,
    Outcome,
    Request,
    adapter_digest,
    add_alternative,
    fatal_device_error,
    fit_long_side,
    record_batch,
)
from moderation.analyzers.vlm.prompts import RenderedPrompt
from moderation.settings import default

log = logging.getLogger("moderation.analyzers.vlm")  # one logger for the VLM stage


def chat_text(processor: Any, prompt: RenderedPrompt, system_only: bool = False) -> str:
    """The chat-template text of a request; `system_only`: of its system turn alone (the prefix
    that the shared-prefix cache computes once)."""
    messages = [
        {"role": "system", "content": [{"type": "text", "text": prompt.system}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt.user}]},
    ]
    # Thinking off where the template has the switch (GLM, Qwen3); templates without it would
    # take the keyword for a processor option.
    extra = {"enable_thinking": False} if "enable_thinking" in str(processor.chat_template) else {}
    text: str = processor.apply_chat_template(
        messages[:1] if system_only else messages, add_generation_prompt=not system_only, tokenize=False, **extra
    )
    return text


def _same_steps(a: Outcome, b: Outcome, tolerance: float = 0.25) -> bool:
    """`b` generated what `a` did: the same token at every step, its log-probability within
    `tolerance` (bf16 rounding). At a near tie in `a` (its two best within `tolerance`) either
    token is fine, and the rest is not compared (the answers diverge from there, legitimately)."""
    if not isinstance(a, Generation) or not isinstance(b, Generation):
        return False
    if not a.steps or not b.steps:  # stopped at once: nothing to compare but the text
        return not a.steps and not b.steps and a.text == b.text
    for (tok_a, alt_a), (tok_b, alt_b) in zip(a.steps, b.steps, strict=False):
        best = sorted(alt_a.values(), reverse=True)
        if len(best) > 1 and best[0] - best[1] <= tolerance:
            return True
        if tok_a != tok_b or abs(alt_a.get(tok_a, 0.0) - alt_b.get(tok_b, 0.0)) > tolerance:
            return False
    return len(a.steps) == len(b.steps)


def _per_token(value: Any, ids: Any) -> bool:
    """A tensor laid out like input_ids (mm_token_type_ids, token_type_ids): moved with the tokens."""
    return hasattr(value, "shape") and tuple(value.shape) == tuple(ids.shape)


class TransformersEngine:
    """A Hugging Face image-text-to-text model in this process (one GPU, or the CPU)."""

    def __init__(
        self,
        model: str = default("vlm_model"),
        device: str = default("vlm_device"),
        dtype: str = default("vlm_dtype"),
        image_side: int = default("vlm_image_side"),
        attn_implementation: str = "sdpa",
        loaded: tuple[Any, Any] | None = None,  # (model, processor) already built (benchmarks)
        prefix_cache: bool = default("vlm_prefix_cache"),
        adapter: str | None = None,  # a PEFT (LoRA) adapter folder, merged into the weights
    ) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self._torch = torch
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(
                "VLM device is CUDA but no GPU is visible (set MODERATION_VLM_DEVICE=cpu for development)"
            )
        self.device = device
        if dtype == "auto":
            dtype = "bfloat16" if device.startswith("cuda") else "float32"
        self.dtype = getattr(torch, dtype)
        self.image_side = image_side
        if loaded is not None:
            self.model, self.processor = loaded
        else:
            # Weights come from a local path or the local Hugging Face cache: never downloaded here.
            # local_files_only: a local path, or a hub id already in the local cache. Weights are
            # never downloaded at run time; a missing checkpoint stops the worker at start-up.
            try:
                self.processor = AutoProcessor.from_pretrained(model, local_files_only=True)
                self.model = AutoModelForImageTextToText.from_pretrained(
                    model, dtype=self.dtype, attn_implementation=attn_implementation, local_files_only=True
                )
            except OSError as exc:
                raise RuntimeError(
                    f"VLM checkpoint {model!r} is not on this machine (a local path, or a hub id in the local "
                    f"Hugging Face cache; nothing is downloaded at run time): {exc}"
                ) from exc
            self.model.to(device).eval()
        # AutoProcessor silently falls back to a bare tokenizer when it cannot build the real
        # processor (a missing video processor, an old transformers): that would feed no pixels.
        if getattr(self.processor, "image_processor", None) is None or not getattr(
            self.processor, "chat_template", None
        ):
            raise RuntimeError(
                f"{model}: AutoProcessor returned {type(self.processor).__name__} without an image processor and a "
                "chat template; install the `[vlm]` extra (torchvision is needed for GLM's processor)"
            )
        self.processor.tokenizer.padding_side = "left"
        self.model_id = str(getattr(self.model.config, "_name_or_path", "") or model)
        self.model_version = str(getattr(self.model.config, "_commit_hash", None) or self._config_digest())
        if adapter:
            self._merge_adapter(adapter)
        self.batch_log: deque[BatchLogEntry] = deque(maxlen=1000)
        self._lock = threading.Lock()  # one model call at a time
        self.broken: str | None = None  # set when the device is unusable for good
        self.max_call_s = 120.0  # a generous bound for one batched generate call on a GPU
        # The system turn (policy categories, answer shape) is the same for every image of a
        # policy and comes first: its keys and values are computed once and shared by every row
        # of a batch, so prefill only pays for the image and the caption (see _share_prefix).
        self.prefix_cache = prefix_cache
        self._prefixes: OrderedDict[str, tuple[Any, Any]] = OrderedDict()

    def _merge_adapter(self, adapter: str) -> None:
        """Load a PEFT adapter over the base weights and merge it in: the same model class and
        code path as the base model, at the base model's speed. Its digest joins the model's
        identity, so findings and cached verdicts name the fine-tune that made them."""
        try:
            from peft import PeftModel
        except ImportError as exc:
            raise RuntimeError("MODERATION_VLM_ADAPTER needs peft (the `[vlm]` extra)") from exc
        path = Path(adapter).expanduser()
        if not (path / "adapter_config.json").is_file():
            raise RuntimeError(f"VLM adapter {adapter!r} is not a PEFT adapter folder (no adapter_config.json)")
        self.model = PeftModel.from_pretrained(self.model, str(path), is_trainable=False).merge_and_unload()
        self.model.to(self.device).eval()
        self.model_id = f"{self.model_id}+{path.resolve().name}"
        self.model_version = f"{self.model_version}+{adapter_digest(str(path))}"

    def _device_lost(self) -> bool:
        """After an unexpected error on a GPU: is the CUDA context still usable? Errors such as
        CUBLAS_STATUS_EXECUTION_FAILED do not say "CUDA error" but poison the context all the
        same; a synchronize tells."""
        if not self.device.startswith("cuda"):
            return False
        try:
            self._torch.cuda.synchronize()
        except Exception:
            return True
        return False

    def _config_digest(self) -> str:
        return hashlib.sha256(self.model.config.to_json_string().encode()).hexdigest()[:12]

    def _text(self, prompt: RenderedPrompt, system_only: bool = False) -> str:
        return chat_text(self.processor, prompt, system_only)

    def warmup(self) -> None:
        """A small batch generated with and without the shared-prefix cache, so the first real
        batch does not pay for kernel set-up, and so a model (or transformers release) whose
        generate does not take a prefix cache the way GLM and Qwen2.5-VL do runs without it rather
        than failing or answering differently (`_same_steps`: same tokens, log-probabilities within
        bf16 rounding)."""
        from moderation.analyzers.vlm.prompts import RenderedPrompt as RP

        system = "You check uploaded images for risks to the people who will see them. " * 3
        reqs = [
            Request(f"warmup{i}", Image.new("RGB", (64 + 32 * i, 64), (128, 40 * i, 128)), RP(system, "Describe.", ()))
            for i in range(2)
        ]
        shared = self.prefix_cache
        self.prefix_cache = False
        plain = self.generate(reqs, max_new_tokens=4, logprobs=2)
        for outcome in plain:
            if isinstance(outcome, BaseException):  # a model that cannot generate must not look ready
                raise RuntimeError(f"VLM warm-up generation failed: {outcome!r}") from outcome
        if not shared:
            return
        self.prefix_cache = True
        cached = self.generate(reqs, max_new_tokens=4, logprobs=2)
        ids = {o.batch_id for o in cached if isinstance(o, Generation)}
        saved = sum(e.tokens_cached for e in self.batch_log if e.batch_id in ids)
        why = None
        if any(isinstance(o, BaseException) for o in cached):
            why = "it fails"
        elif not saved:
            why = "the prompts do not share it token for token"
        elif not all(map(_same_steps, plain, cached)):
            why = "outputs differ"
        if why:
            log.warning("%s: shared-prefix KV cache off (%s)", self.model_id, why)
            self.prefix_cache = False

    def generate(self, requests: list[Request], max_new_tokens: int, logprobs: int = 0) -> list[Outcome]:
        entry = record_batch(self.batch_log, requests)
        started = time.perf_counter()
        outcomes: list[Outcome | None] = [None] * len(requests)
        ready: list[tuple[int, str, Image.Image]] = []
        prefixes: set[str] = set()
        for i, r in enumerate(requests):  # per-item preparation: one bad image fails only itself
            try:
                ready.append((i, self._text(r.prompt), fit_long_side(r.image.convert("RGB"), self.image_side)))
            except Exception as exc:
                outcomes[i] = exc
                continue
            if self.prefix_cache:
                try:
                    prefixes.add(self._text(r.prompt, system_only=True))
                except Exception:  # a template that cannot render a system turn alone: no shared prefix
                    prefixes.add("")
        prefix = prefixes.pop() if len(prefixes) == 1 else None  # one prefix shared by the batch, or none
        with self._lock:
            self._run(ready, outcomes, max_new_tokens, entry, logprobs, prefix)
        entry.ms = (time.perf_counter() - started) * 1000
        entry.errors = sum(isinstance(o, BaseException) for o in outcomes)
        log.info(
            "vlm engine=transformers batch=%s size=%d tokens_in=%d cached=%d tokens_out=%d ms=%.1f errors=%d splits=%d",
            entry.batch_id, entry.size, entry.tokens_in, entry.tokens_cached, entry.tokens_out, entry.ms, entry.errors,
            entry.splits,
        )  # fmt: skip
        return [o if o is not None else RuntimeError("no outcome") for o in outcomes]

    # Whole on purpose: one batch's life (prefix or not, generate, OOM halving, the rerun without
    # the prefix, fatal device errors) shares its tensors and its outcome slots; the order of the
    # except clauses is the fault policy, and it reads best in one place.
    def _run(
        self,
        items: list[tuple[int, str, Image.Image]],
        outcomes: list[Outcome | None],
        max_new_tokens: int,
        entry: BatchLogEntry,
        logprobs: int = 0,
        prefix: str | None = None,
    ) -> None:
        if not items:
            return
        torch = self._torch
        out_of_memory = False
        shared = None
        try:
            inputs = self.processor(
                text=[t for _, t, _ in items], images=[im for _, _, im in items], return_tensors="pt", padding=True
            ).to(self.device)
            if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
                inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
            with torch.inference_mode():
                shared = self._share_prefix(inputs, prefix) if prefix is not None else None
                if shared is not None:
                    inputs["input_ids"], inputs["attention_mask"] = shared[1], shared[2]
                    inputs.update(shared[3])
                gen = self.model.generate(
                    **inputs,
                    **({"cache": shared[0]["cache"]} if shared is not None else {}),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    output_logits=logprobs > 0,  # raw logits, as a server's logprobs are
                    return_dict_in_generate=True,
                )
            out = gen.sequences
            if shared is not None:
                entry.tokens_cached += len(items) * int(shared[0]["length"])
        except torch.cuda.OutOfMemoryError:
            # Recover outside the except block: the exception's traceback still holds the failed
            # attempt's tensors, and memory is only freed once it is gone (PyTorch FAQ).
            out_of_memory = True
        except Exception as exc:
            if fatal_device_error(exc) or self._device_lost():
                # A device-side assert or illegal access poisons the CUDA context for good: no
                # later call can succeed in this process. Say so; the worker exits and its
                # unacknowledged tasks are redelivered to a healthy one.
                self.broken = f"{type(exc).__name__}: {exc}"
                raise FatalEngineError(self.broken) from exc
            if prefix is not None:  # whatever failed, the plain path decides who it was
                log.warning("vlm batch %s failed with the shared prefix; running it without: %r", entry.batch_id, exc)
                self._run(items, outcomes, max_new_tokens, entry, logprobs, None)
                return
            if len(items) == 1:
                outcomes[items[0][0]] = exc
                return
            for item in items:  # find the item that breaks the batch: the others still run
                self._run([item], outcomes, max_new_tokens, entry, logprobs, prefix)
            return
        if out_of_memory:
            entry.splits += 1
            inputs = gen = shared = None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(items) == 1:
                outcomes[items[0][0]] = RuntimeError("CUDA out of memory on a single image")
                return
            half = len(items) // 2
            self._run(items[:half], outcomes, max_new_tokens, entry, logprobs, prefix)
            self._run(items[half:], outcomes, max_new_tokens, entry, logprobs, prefix)
            return
        prompt_len = inputs["input_ids"].shape[1]
        new = out[:, prompt_len:]
        texts = self.processor.batch_decode(new, skip_special_tokens=True)
        pad = self.processor.tokenizer.pad_token_id
        eos = self.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        for row, (i, _, _) in enumerate(items):
            n_in = int(inputs["attention_mask"][row].sum())
            n_out = int((new[row] != pad).sum()) if pad is not None else int(new.shape[1])
            ended = any(int(t) in eos_ids for t in new[row].tolist())
            entry.tokens_in += n_in
            entry.tokens_out += n_out
            truncated = not ended and n_out >= max_new_tokens
            steps = self._steps(gen.logits, new[row], row, logprobs, eos_ids, pad) if logprobs > 0 else None
            outcomes[i] = Generation(texts[row], entry.batch_id, entry.size, n_in, n_out, truncated, steps)

    def _share_prefix(self, inputs: Any, text: str) -> tuple[dict[str, Any], Any, Any, dict[str, Any]] | None:
        """Lay the batch out as [shared prefix | padding | own suffix] and hand generate a KV cache
        of the prefix, computed once per prefix and copied to every row.

        Returns ({"cache", "length"}, input_ids, attention_mask, other per-token tensors), or None
        when the batch does not share this engine's current prefix token for token (the check is
        on tokens, so a template that renders the system turn differently inside a conversation
        simply runs without the cache). Positions and attention are those of the left-padded
        batch: padding is masked wherever it sits, and every row's real tokens keep positions
        0..n-1 (the unit tests compare logits with and without the cache).
        """
        import copy

        torch = self._torch
        if text not in self._prefixes:
            # Tokenized as the processor tokenized the whole text: with the tokenizer's special
            # tokens if it adds a BOS, without if the template spells them (GLM's [gMASK]<sop>).
            first = inputs["input_ids"][0][inputs["attention_mask"][0].bool()].cpu()
            candidates = (self.processor.tokenizer(text, add_special_tokens=s)["input_ids"] for s in (True, False))
            ids = next((torch.tensor(c) for c in candidates if first[: len(c)].tolist() == list(c)), None)
            if ids is None or len(ids) < 8:  # no shared prefix, or nothing worth sharing
                return None
            out = self.model(input_ids=ids[None].to(self.device), use_cache=True, logits_to_keep=1)
            cache = getattr(out, "cache", None)
            self._prefixes[text] = (ids.to(self.device), cache if cache is not None else out.past_key_values)
            while len(self._prefixes) > 8:  # one per policy prompt in use; ~30 MB each for GLM-4.6V-Flash
                self._prefixes.popitem(last=False)
        self._prefixes.move_to_end(text)
        prefix, cache = self._prefixes[text]
        n = len(prefix)
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        width = ids.shape[1]
        per_token = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask") and _per_token(v, ids)}
        order = []
        for row in range(ids.shape[0]):
            real = mask[row].nonzero().flatten()
            if len(real) <= n or not torch.equal(ids[row, real[:n]], prefix) or int(real[0]) + len(real) != width:
                return None
            pad = width - len(real)
            # prefix first, then the padding, then the row's own tokens
            order.append(torch.cat([real[:n], torch.arange(pad, device=ids.device), real[n:]]))
        index = torch.stack(order)
        rows = copy.deepcopy(cache)
        rows.batch_repeat_interleave(ids.shape[0])
        return (
            {"cache": rows, "length": n},
            ids.gather(1, index),
            mask.gather(1, index),
            {k: v.gather(1, index) for k, v in per_token.items()},
        )

    def _steps(
        self, scores: Any, tokens: Any, row: int, k: int, stop: set[int], pad: int | None
    ) -> list[tuple[str, dict[str, float]]]:
        """Each generated token's text and its `k` most likely alternatives (log-probabilities)."""
        torch = self._torch
        decode = self.processor.tokenizer.decode
        steps: list[tuple[str, dict[str, float]]] = []
        for t, token in enumerate(tokens.tolist()):
            if token in stop or (pad is not None and token == pad) or t >= len(scores):
                break
            top = torch.log_softmax(scores[t][row].float(), dim=-1).topk(k)
            alternatives: dict[str, float] = {}
            for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                add_alternative(alternatives, decode([int(i)]), float(v))
            steps.append((decode([token]), alternatives))
        return steps
