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
    categories: dict[str, str]

    @property
    def full_version(self) -> str:
        """`<id>-v<version>+<content hash>`: an edit without a version bump still shows."""
        digest = hashlib.sha256(json.dumps(self.model_dump(), sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.id}-v{self.version}+{digest}"


def load_prompt(policies_dir: Path, name: str) -> PromptSpec:
    """Load `policies/prompts/<name>.yaml`. Raises FileNotFoundError or pydantic's ValidationError."""
    path = policies_dir / "prompts" / f"{name}.yaml"
    return PromptSpec.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))


def schema_hint(categories: list[str]) -> str:
    cats = ", ".join(f'"{c}": {{"score": 0.0, "rationale": "..."}}' for c in categories)
    return (
        f'{{"categories": {{{cats}}}, "confidence": 0.0, "ocr_text": "...", '
        '"meme": false, "irony": false, "prompt_injection": false}'
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


def render(spec: PromptSpec, categories: list[str] | tuple[str, ...], caption: str | None) -> RenderedPrompt:
    """The prompt for one image under one policy: only the policy's categories, with definitions,
    in the system part (identical for every image of the policy); the caption in the user part."""
    cats = [c for c in categories if c in spec.categories]
    lines = "\n".join(f"- {c}: {spec.categories[c]}" for c in cats)
    system = spec.system.format(categories=lines, schema_hint=schema_hint(cats))
    # The caption is the uploader's text: quoted as JSON so it cannot close the prompt's structure.
    user = spec.user.format(caption=json.dumps(caption or ""))
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
    prompt_injection: bool = False

    @field_validator("ocr_text", mode="before")
    @classmethod
    def _text(cls, v: Any) -> Any:
        return "" if v is None else v


class UnparseableOutput(ValueError):
    """The model's text holds no valid answer (after repair)."""


_THINK = re.compile(r"<think>.*?(</think>|$)", re.S)
_MARKERS = re.compile(r"<\|begin_of_box\|>|<\|end_of_box\|>|```(?:json)?")


def _candidates(text: str) -> list[Any]:
    """Every JSON object that starts somewhere in `text`, in order (prose around them ignored)."""
    decoder = json.JSONDecoder()
    found: list[Any] = []
    pos = text.find("{")
    while pos != -1 and len(found) < 8:
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            pos = text.find("{", pos + 1)
            continue
        if isinstance(obj, dict):
            found.append(obj)
        pos = text.find("{", end)
    return found


def parse_answer(text: str, categories: list[str] | tuple[str, ...]) -> Answer:
    """The model's answer, repaired and validated; every requested category must be scored.

    Raises UnparseableOutput with a short reason."""
    cleaned = _MARKERS.sub("", _THINK.sub("", text))
    objects = _candidates(cleaned)
    if not objects:
        raise UnparseableOutput(f"no JSON object in the output ({len(text)} chars)")
    problem = ""
    for obj in objects:
        try:
            answer = Answer.model_validate(obj)
        except ValidationError as exc:
            problem = f"invalid answer: {exc.errors()[0]['loc']} {exc.errors()[0]['msg']}"
            continue
        missing = [c for c in categories if c not in answer.categories]
        if missing:
            problem = f"categories missing from the answer: {', '.join(missing)}"
            continue
        return answer
    raise UnparseableOutput(problem)
