"""Risk prompts (versioned data under `policies/prompts/`) and parsing of the model's answer.

The model must answer one JSON object: per category a score in [0, 1] and a one-line rationale,
overall confidence, the text it read, and the `meme` / `irony` / `prompt_injection` flags.
`parse_answer` repairs the usual defects (thinking blocks, code fences, GLM's box markers,
prose around the object) and validates with pydantic; what still fails raises
`UnparseableOutput`, which the analyzer turns into a fail-closed finding after one retry.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class PromptSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    version: str
    system: str
    user: str
    retry: str
    animation: str  # added to the user turn when the image is a grid of animation frames
    categories: dict[str, str]

    @property
    def full_version(self) -> str:
        """`<id>-v<version>+<content hash>`: an edit without a version bump still shows."""
        digest = hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.id}-v{self.version}+{digest}"


def load_prompt(policies_dir: Path, name: str) -> PromptSpec:
    """Load `policies/prompts/<name>.yaml`. Raises FileNotFoundError or pydantic's ValidationError."""
    path = policies_dir / "prompts" / f"{name}.yaml"
    spec = PromptSpec.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    try:  # render once now: a stray brace in the wording fails at start-up, not on an upload
        render(spec, list(spec.categories), "caption", frames=4)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"{path}: the prompt does not render: {exc!r}") from exc
    return spec


def schema_hint(categories: list[str]) -> str:
    """The answer's shape, compactly (it is part of every prompt's prefill): placeholders rather
    than example values (an example score anchors the model's scores), the category keys named
    once."""
    keys = ", ".join(f'"{c}"' for c in categories)
    return (
        '{"categories": {<one entry per key: "<key>": {"score": <0..1>, "rationale": "<one short line>"}>}, '
        '"confidence": <0..1>, "ocr_text": "<the text you read, short>", '
        '"meme": <true|false>, "irony": <true|false>, "prompt_injection": <true|false>}\n'
        f"with the keys {keys}"
    )


def json_schema(categories: list[str]) -> dict[str, Any]:
    """The answer's JSON schema, for servers that constrain decoding (vLLM `response_format`)."""
    cat = {
        "type": "object",
        "properties": {"score": {"type": "number", "minimum": 0, "maximum": 1}, "rationale": {"type": "string"}},
        "required": ["score", "rationale"],
    }
    return {
        "type": "object",
        "properties": {
            "categories": {
                "type": "object",
                "properties": {c: cat for c in categories},
                "required": categories,
            },
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "ocr_text": {"type": "string"},
            "meme": {"type": "boolean"},
            "irony": {"type": "boolean"},
            "prompt_injection": {"type": "boolean"},
        },
        "required": ["categories", "confidence", "ocr_text", "meme", "irony", "prompt_injection"],
    }


@dataclass(frozen=True)
class RenderedPrompt:
    system: str
    user: str
    categories: tuple[str, ...]


def render(
    spec: PromptSpec, categories: list[str] | tuple[str, ...], caption: str | None, frames: int = 1
) -> RenderedPrompt:
    """The prompt for one image under one policy: only the policy's categories, with definitions,
    in the system part (identical for every image of the policy); the caption in the user part."""
    cats = [c for c in categories if c in spec.categories]
    lines = "\n".join(f"- {c}: {spec.categories[c]}" for c in cats)
    system = spec.system.format(categories=lines, schema_hint=schema_hint(cats))
    # The caption is the uploader's text: quoted as JSON so it cannot close the prompt's structure.
    user = spec.user.format(caption=json.dumps(caption or ""))
    if frames > 1:
        user = f"{spec.animation.format(frames=frames).strip()}\n{user}"
    return RenderedPrompt(system=system.strip(), user=user.strip(), categories=tuple(cats))


class CategoryAnswer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    score: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    rationale: str = ""


class Answer(BaseModel):
    model_config = ConfigDict(extra="ignore")

    categories: dict[str, CategoryAnswer]
    confidence: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    ocr_text: str = ""
    meme: bool = False
    irony: bool = False
    prompt_injection: bool  # required: a model that does not say is not taken to have said "no"

    @field_validator("ocr_text", mode="before")
    @classmethod
    def _text(cls, v: Any) -> Any:
        return "" if v is None else v


class UnparseableOutput(ValueError):
    """The model's text holds no valid answer (after repair)."""


_THINK = re.compile(r"<think>.*?(</think>|$)", re.S)
_MARKERS = re.compile(r"<\|begin_of_box\|>|<\|end_of_box\|>|```(?:json)?")


def _top_level_objects(text: str) -> list[dict[str, Any]]:
    """The JSON objects at the top level of `text`, in order; prose between them is ignored.

    Never looks inside an object that does not decode: a model that copies JSON it read in the
    image into a broken answer must not have that copy taken for its answer. Raises
    UnparseableOutput when an object is cut off or malformed."""
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    pos = text.find("{")
    while pos != -1:
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise UnparseableOutput(f"malformed or cut-off JSON at character {pos}: {exc.msg}") from exc
        if not isinstance(obj, dict):  # pragma: no cover - raw_decode at "{" always yields a dict
            raise UnparseableOutput("not a JSON object")
        found.append(obj)
        if len(found) > 16:
            raise UnparseableOutput("more than 16 JSON objects in the output")
        pos = text.find("{", end)
    return found


def merge_strictest(answers: list[Answer]) -> Answer:
    """Several answers in one output (a model that repeats itself, or one that echoes JSON from
    the image before its own): the strictest reading of them all — the highest score per
    category, any flag raised, the lowest confidence — so no extra object can lower a risk."""
    first = answers[0]
    if all(a == first for a in answers[1:]):
        return first
    categories: dict[str, CategoryAnswer] = {}
    for a in answers:
        for name, c in a.categories.items():
            if name not in categories or c.score > categories[name].score:
                categories[name] = c
    return Answer(
        categories=categories,
        confidence=min(a.confidence for a in answers),
        ocr_text=max((a.ocr_text for a in answers), key=len),
        meme=any(a.meme for a in answers),
        irony=any(a.irony for a in answers),
        prompt_injection=any(a.prompt_injection for a in answers),
    )


def parse_answer(text: str, categories: list[str] | tuple[str, ...]) -> Answer:
    """The model's answer, repaired and validated; every requested category must be scored.

    Every top-level JSON object in the output must be a valid answer (one bad object makes the
    whole output unparseable, never a reason to pick another); several are merged strictly.
    Raises UnparseableOutput with a short reason."""
    cleaned = _MARKERS.sub("", _THINK.sub("", text))
    objects = _top_level_objects(cleaned)
    if not objects:
        raise UnparseableOutput(f"no JSON object in the output ({len(text)} chars)")
    answers = []
    for obj in objects:
        try:
            answer = Answer.model_validate(obj)
        except ValidationError as exc:
            raise UnparseableOutput(f"invalid answer: {exc.errors()[0]['loc']} {exc.errors()[0]['msg']}") from exc
        missing = [c for c in categories if c not in answer.categories]
        if missing:
            raise UnparseableOutput(f"categories missing from the answer: {', '.join(missing)}")
        answers.append(answer)
    return merge_strictest(answers)
