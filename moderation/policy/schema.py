"""Policies are data (`policies/*.yaml`), validated at start-up (this module); `evaluate` applies them.

A policy names the categories in scope with their thresholds and DSA mapping, the analyzer
cascade, the minimum confidence, QA sampling, and what to do when analysis fails (fail
closed: review or block, never allow). Its version is the SHA-256 of its canonical JSON, so
any change to a threshold is a new version, recorded on every decision.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from moderation.analyzers.base import analyzer_class
from moderation.policy.dsa_vocab import CATEGORIES, EEA, KEYWORDS, REMOVED_CATEGORIES

log = logging.getLogger(__name__)

TAXONOMY = (
    "sexual",
    "nudity",
    "child_safety",
    "violence_gore",
    "weapons",
    "drugs",
    "hate",
    "harassment",
    "self_harm",
    "extremism",
    "scam_fraud",
    "spam",
    "privacy",
)

# EU DSA Transparency Database statement categories (STATEMENT_CATEGORY_*), as in force since
# July 2025 (moderation.policy.dsa_vocab).
DSA_CATEGORIES = CATEGORIES

Visibility = Literal["REMOVED", "DISABLED", "DEMOTED", "AGE_RESTRICTED", "LABELLED"]
BUILTIN_STAGES = ("banks", "cache")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DsaMapping(_Strict):
    category: str
    keywords: list[str] = Field(default_factory=list)  # KEYWORD_* without the prefix
    ground: Literal["illegal_content", "incompatible_content"] = "incompatible_content"
    legal_ground: str | None = None  # for illegal_content: the law
    clause: str  # the terms-of-service clause (or the law's article) the decision cites

    @model_validator(mode="after")
    def _known(self) -> DsaMapping:
        if self.category in REMOVED_CATEGORIES:
            raise ValueError(
                f"DSA category {self.category!r} no longer exists in the Transparency Database (since July 2025);"
                f" use {REMOVED_CATEGORIES[self.category]}"
            )
        if self.category not in DSA_CATEGORIES:
            raise ValueError(f"unknown DSA category {self.category!r}; one of {', '.join(DSA_CATEGORIES)}")
        unknown = sorted(set(self.keywords) - KEYWORDS)
        if unknown:
            raise ValueError(f"unknown DSA keywords {unknown} (KEYWORD_* without the prefix)")
        if self.ground == "illegal_content" and not self.legal_ground:
            raise ValueError("ground illegal_content needs legal_ground")
        return self


class CategoryRule(_Strict):
    block_at: float = Field(ge=0, le=1)
    review_at: float = Field(ge=0, le=1)
    restrict_at: float | None = Field(default=None, ge=0, le=1)
    escalate: bool = False  # always to the restricted human queue (e.g. child_safety)
    review_queue: str = "default"
    dsa: DsaMapping

    @model_validator(mode="after")
    def _ordered(self) -> CategoryRule:
        if self.review_at > self.block_at:
            raise ValueError("review_at must be <= block_at")
        if self.restrict_at is not None and not (self.review_at <= self.restrict_at <= self.block_at):
            raise ValueError("restrict_at must lie between review_at and block_at")
        return self


# Escalation conditions of a stage with `run: when` (any one holds => the stage runs):
#   unsure     the decision so far would go to a human (a score in the review band, low confidence)
#   risk       the decision so far is anything but allow (let the next stage confirm a block)
#   text       an earlier stage read text in the image
#   meme       an earlier stage saw a meme layout (caption bands over a picture)
#   injection  an earlier stage flagged text addressed to a model or a moderator
#   uncovered  a category of the policy that no earlier stage could see (e.g. nudity for OCR)
Condition = Literal["unsure", "risk", "text", "meme", "injection", "uncovered"]


class Stage(_Strict):
    stage: str
    analyzer: str | None = None  # dotted path package.module:Class; built-in stages have none
    queue: str = "analyze.cpu"
    run: Literal["always", "if_unsure", "when"] = "always"  # if_unsure == when: [unsure]
    when: list[Condition] = Field(default_factory=list)
    requires: str | None = None  # a deployment feature (Settings: `vlm`); without it the stage is left out
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> Stage:
        if self.analyzer is None and self.stage not in BUILTIN_STAGES:
            raise ValueError(f"stage {self.stage!r} needs an analyzer (built-in: {', '.join(BUILTIN_STAGES)})")
        if (self.run == "when") != bool(self.when):
            raise ValueError("`when` conditions go with `run: when` (and `run: when` needs at least one)")
        return self

    @property
    def conditions(self) -> frozenset[str]:
        return frozenset(["unsure"]) if self.run == "if_unsure" else frozenset(self.when)


class Visibilities(_Strict):
    block: Visibility = "REMOVED"
    restrict: Visibility = "AGE_RESTRICTED"


class CacheSettings(_Strict):
    enabled: bool = True  # a policy that must re-analyse every upload sets this to false
    ttl_s: int = Field(default=3600, ge=1)


# How long a review task may wait, per queue (seconds, or "90m", "4h", "2d"). Child safety and
# self-harm are answered within hours, the rest within a day; a queue not named takes `default`.
DEFAULT_REVIEW_SLA = {
    "restricted": 4 * 3600,
    "priority": 4 * 3600,
    "escalation": 12 * 3600,
    "appeals": 72 * 3600,
    "qa": 72 * 3600,
    "default": 24 * 3600,
}
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")


def _seconds(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("a duration is seconds or a string like 90m, 4h, 2d")
    if isinstance(value, int | float):
        seconds = int(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError(f"not a duration: {value!r} (seconds, or e.g. 90m, 4h, 2d)")
        seconds = int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    if not 60 <= seconds <= 90 * 86400:
        raise ValueError(f"a review SLA lies between 1 minute and 90 days, not {value!r}")
    return seconds


class Policy(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    description: str = ""
    categories: dict[str, CategoryRule]
    cascade: list[Stage]
    min_confidence: float = Field(default=0.6, ge=0, le=1)
    qa_sample_rate: float = Field(default=0.0, ge=0, le=1)
    on_error: Literal["review", "block"] = "review"
    on_uncovered: Literal["review", "allow"] = "review"
    territorial_scope: list[str] = Field(default_factory=lambda: ["EU"])
    visibility: Visibilities = Field(default_factory=Visibilities)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    source_type: Literal["SOURCE_VOLUNTARY", "SOURCE_ARTICLE_16", "SOURCE_TRUSTED_NOTIFIER"] = "SOURCE_VOLUNTARY"
    review_sla: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_REVIEW_SLA))

    @field_validator("review_sla", mode="before")
    @classmethod
    def _durations(cls, value: Any) -> dict[str, int]:
        if not isinstance(value, dict):
            raise ValueError("review_sla maps a queue name to a duration")
        return {**DEFAULT_REVIEW_SLA, **{str(k): _seconds(v) for k, v in value.items()}}

    def sla_s(self, queue: str) -> int:
        """Seconds a task of `queue` may wait before it is overdue."""
        return self.review_sla.get(queue, self.review_sla["default"])

    @model_validator(mode="after")
    def _check(self) -> Policy:
        unknown = sorted(set(self.categories) - set(TAXONOMY))
        if unknown:
            raise ValueError(f"unknown categories {unknown}; the taxonomy is {', '.join(TAXONOMY)}")
        if not self.cascade:
            raise ValueError("cascade must name at least one stage")
        odd = sorted({c for c in self.territorial_scope if c.upper() not in {"EU", "EEA", "EL", *EEA}})
        if odd:
            raise ValueError(f"territorial_scope: {odd} are not EEA country codes (or EU, EEA)")
        names = [s.stage for s in self.cascade]
        if len(set(names)) != len(names):
            raise ValueError(f"cascade stages must be unique: {names}")
        return self

    @property
    def version(self) -> str:
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def stage(self, name: str) -> Stage:
        for s in self.cascade:
            if s.stage == name:
                return s
        raise KeyError(name)

    @property
    def analyzer_stages(self) -> list[Stage]:
        return [s for s in self.cascade if s.analyzer is not None]


class PolicyError(Exception):
    """A policy file is invalid; the message names the file and the field."""


def _read(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{path}: not valid YAML (UTF-8): {exc}") from exc
    if not isinstance(raw, dict):
        raise PolicyError(f"{path}: a policy is a mapping")
    return raw


def load_policy(path: Path, features: frozenset[str] = frozenset(), _seen: tuple[Path, ...] = ()) -> Policy:
    """Load and validate one policy file. `extends: other` starts from policies/other.yaml and
    replaces its top-level keys with this file's (the resolved policy is what gets versioned).
    Stages that `require` a feature this deployment lacks are left out (so the version says
    which cascade really ran)."""
    raw = _read(path)
    parent = raw.pop("extends", None)
    if parent is not None:
        if not isinstance(parent, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", parent):
            raise PolicyError(f"{path}: extends must name a policy id in the same folder, not {parent!r}")
        base_path = path.with_name(f"{parent}.yaml")
        if base_path in _seen or not base_path.exists():
            raise PolicyError(f"{path}: extends {parent!r}, which is missing or circular")
        raw = {**load_policy(base_path, features, (*_seen, path)).model_dump(mode="json"), **raw}
    if isinstance(raw.get("cascade"), list):
        raw["cascade"] = [
            s for s in raw["cascade"] if not (isinstance(s, dict) and s.get("requires") not in (None, *features))
        ]
    try:
        policy = Policy.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors())
        raise PolicyError(f"{path}: {problems}") from exc
    if policy.id != path.stem:
        raise PolicyError(f"{path}: id {policy.id!r} must match the file name {path.stem!r}")
    return policy


def load_policies(directory: Path, features: frozenset[str] = frozenset()) -> dict[str, Policy]:
    """Every policy in `directory`, validated, each analyzer stage checked by its analyzer's own
    `check_policy` hook (the VLM checks that its prompt defines every category of the policy)."""
    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise PolicyError(f"{directory}: no policies (*.yaml)")
    policies = {p.id: p for p in (load_policy(f, features) for f in files)}
    for p in policies.values():
        for stage in p.analyzer_stages:
            assert stage.analyzer is not None
            try:
                cls = analyzer_class(stage.analyzer)
            except Exception as exc:  # not importable here (an extra this process lacks): it fails closed where it runs
                log.warning(
                    "policy %s, stage %s: analyzer %s not checked here: %s", p.id, stage.stage, stage.analyzer, exc
                )
                continue
            try:
                cls.check_policy(stage.options, tuple(p.categories), directory)
            except (OSError, ValueError, yaml.YAMLError) as exc:
                raise PolicyError(f"policy {p.id}, stage {stage.stage}: {exc}") from exc
    return policies
