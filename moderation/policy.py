"""Policies are data (`policies/*.yaml`), validated at start-up; `evaluate` is a pure function.

A policy names the categories in scope with their thresholds and DSA mapping, the analyzer
cascade, the minimum confidence, QA sampling, and what to do when analysis fails (fail
closed: review or block, never allow). Its version is the SHA-256 of its canonical JSON, so
any change to a threshold is a new version, recorded on every decision.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from moderation.analyzers.base import Finding

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

# EU DSA Transparency Database statement categories (STATEMENT_CATEGORY_*).
DSA_CATEGORIES = (
    "ANIMAL_WELFARE",
    "DATA_PROTECTION_AND_PRIVACY_VIOLATIONS",
    "ILLEGAL_OR_HARMFUL_SPEECH",
    "INTELLECTUAL_PROPERTY_INFRINGEMENTS",
    "NEGATIVE_EFFECTS_ON_CIVIC_DISCOURSE_OR_ELECTIONS",
    "NON_CONSENSUAL_BEHAVIOUR",
    "PORNOGRAPHY_OR_SEXUALIZED_CONTENT",
    "PROTECTION_OF_MINORS",
    "RISK_FOR_PUBLIC_SECURITY",
    "SCAMS_AND_FRAUD",
    "SELF_HARM",
    "SCOPE_OF_PLATFORM_SERVICE",
    "UNSAFE_AND_PROHIBITED_PRODUCTS",
    "VIOLENCE",
)

Action = Literal["allow", "restrict", "block", "review", "escalate"]
SEVERITY: dict[str, int] = {"allow": 0, "restrict": 1, "review": 2, "block": 3, "escalate": 4}
Visibility = Literal["REMOVED", "DISABLED", "DEMOTED", "AGE_RESTRICTED", "LABELLED"]
BUILTIN_STAGES = ("banks", "cache")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DsaMapping(_Strict):
    category: str
    ground: Literal["illegal_content", "incompatible_content"] = "incompatible_content"
    legal_ground: str | None = None  # for illegal_content: the law
    clause: str  # the terms-of-service clause (or the law's article) the decision cites

    @model_validator(mode="after")
    def _known(self) -> DsaMapping:
        if self.category not in DSA_CATEGORIES:
            raise ValueError(f"unknown DSA category {self.category!r}; one of {', '.join(DSA_CATEGORIES)}")
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

    @model_validator(mode="after")
    def _check(self) -> Policy:
        unknown = sorted(set(self.categories) - set(TAXONOMY))
        if unknown:
            raise ValueError(f"unknown categories {unknown}; the taxonomy is {', '.join(TAXONOMY)}")
        if not self.cascade:
            raise ValueError("cascade must name at least one stage")
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
    """Every policy in `directory`, validated, with the prompts their stages name
    (`options.prompt` => `prompts/<name>.yaml`, which must define every category of the policy)."""
    from moderation.vlm.prompts import load_prompt

    files = sorted(directory.glob("*.yaml"))
    if not files:
        raise PolicyError(f"{directory}: no policies (*.yaml)")
    policies = {p.id: p for p in (load_policy(f, features) for f in files)}
    for p in policies.values():
        for stage in p.cascade:
            name = stage.options.get("prompt")
            if name is None and stage.analyzer == "moderation.analyzers.vlm:VlmAnalyzer":
                name = "risk-v1"  # the analyzer's default prompt
            if name is None:
                continue
            try:
                spec = load_prompt(directory, str(name))
            except (OSError, ValueError, yaml.YAMLError) as exc:
                raise PolicyError(f"policy {p.id}, stage {stage.stage}: prompt {name!r}: {exc}") from exc
            missing = sorted(set(p.categories) - set(spec.categories))
            if missing:
                raise PolicyError(f"policy {p.id}, stage {stage.stage}: prompt {name!r} does not define {missing}")
    return policies


@dataclass(frozen=True)
class Decision:
    action: Action
    categories: dict[str, float]
    reasons: list[dict[str, Any]]
    policy_id: str
    policy_version: str
    automated: bool = True
    review_queue: str | None = None  # set: a review task is opened (action review/escalate, or QA sample)
    review_reason: str | None = None
    top_category: str | None = None
    visibility: str | None = None
    dsa: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "categories": self.categories,
            "reasons": self.reasons,
            "policy": {"id": self.policy_id, "version": self.policy_version},
            "automated": self.automated,
        }


def qa_draw(submission_id: str) -> float:
    """A uniform draw in [0, 1) fixed by the submission id: QA sampling is reproducible."""
    return int(hashlib.sha256(submission_id.encode()).hexdigest()[:13], 16) / float(16**13)


def evaluate(policy: Policy, findings: Iterable[Finding], qa: float = 1.0) -> Decision:
    """Apply `policy` to `findings`. Pure: same inputs, same decision.

    Order: a known-bad bank match blocks; an analyzer error fails closed; a known-good match
    allows; otherwise per-category thresholds, then the guards that can only make the
    action stricter (low confidence, prompt injection, uncovered categories) and QA sampling.
    """
    found = list(findings)
    reasons: list[dict[str, Any]] = []
    scores: dict[str, float] = {}
    for f in found:
        for cat, score in f.scores.items():
            if cat in policy.categories:
                scores[cat] = max(scores.get(cat, 0.0), float(score))

    def decide(action: Action, top: str | None = None, queue: str | None = None, why: str | None = None) -> Decision:
        rule = policy.categories.get(top) if top else None
        review_queue = queue
        if action in ("review", "escalate") and review_queue is None:
            review_queue = "restricted" if action == "escalate" else (rule.review_queue if rule else "default")
        review_reason = why if review_queue else None
        if action in ("allow", "block", "restrict") and review_queue is None and qa < policy.qa_sample_rate:
            review_queue, review_reason = "qa", "qa_sample"
            reasons.append({"code": "qa_sample", "rate": policy.qa_sample_rate})
        visibility = {"block": policy.visibility.block, "restrict": policy.visibility.restrict}.get(action)
        dsa: dict[str, Any] = {}
        if rule is not None:
            dsa = {
                "category": rule.dsa.category,
                "decision_ground": rule.dsa.ground,
                "legal_ground": rule.dsa.legal_ground,
                "clause": rule.dsa.clause,
            }
        return Decision(
            action=action,
            categories=dict(sorted(scores.items())),
            reasons=reasons,
            policy_id=policy.id,
            policy_version=policy.version,
            review_queue=review_queue,
            review_reason=review_reason,
            top_category=top,
            visibility=visibility,
            dsa=dsa,
        )

    # 1. Known-bad bank match: decided without any model.
    matches = [f.bank_match for f in found if f.bank_match]
    bad = [m for m in matches if m.get("kind") == "bad" and not m.get("near")]
    near_bad = [m for m in matches if m.get("kind") == "bad" and m.get("near")]
    good = [m for m in matches if m.get("kind") == "good" and not m.get("near")]
    if bad:
        match = min(bad, key=lambda m: int(m.get("distance", 0)))
        bank_cat: str | None = match.get("category")
        rule = policy.categories.get(bank_cat) if bank_cat else None
        if bank_cat:
            scores[bank_cat] = 1.0
        reasons.append({"code": "bank_match", **match, "clause": rule.dsa.clause if rule else None})
        return decide(
            "escalate" if rule and rule.escalate else "block", top=bank_cat if rule else None, why="bank_match"
        )

    # 2. Analyzer failure or unparseable output: fail closed (below, after the thresholds, so
    # that what the other analyzers found still counts: an error never weakens the outcome).
    errors = [f for f in found if f.error]

    # 3. Known-good match: allowed without models.
    if not errors and good and not near_bad:
        reasons.append({"code": "bank_match", **good[0]})
        return decide("allow")

    # 4. Thresholds.
    action: Action = "allow"
    top: str | None = None
    for cat, score in sorted(scores.items(), key=lambda kv: -kv[1]):
        rule = policy.categories[cat]
        hit: Action | None = None
        threshold = None
        if score >= rule.block_at:
            hit, threshold = ("escalate" if rule.escalate else "block"), rule.block_at
        elif rule.restrict_at is not None and score >= rule.restrict_at:
            hit, threshold = ("escalate" if rule.escalate else "restrict"), rule.restrict_at
        elif score >= rule.review_at:
            hit, threshold = ("escalate" if rule.escalate else "review"), rule.review_at
        if hit is None:
            continue
        reasons.append(
            {
                "code": "threshold",
                "category": cat,
                "score": score,
                "threshold": threshold,
                "action": hit,
                "clause": rule.dsa.clause,
            }
        )
        if SEVERITY[hit] > SEVERITY[action]:
            action, top = hit, cat
    why = "threshold" if action in ("review", "escalate") else None
    if errors:
        for f in errors:
            reasons.append({"code": "analyzer_error", "analyzer": f.analyzer, "error": f.error})
        if SEVERITY[policy.on_error] > SEVERITY[action]:
            action, why = policy.on_error, "analyzer_error"
        return decide(action, top=top, why=why)

    # 5. Guards: each can only make the outcome stricter.
    scored = [f for f in found if f.scores]
    low = [f for f in scored if f.confidence < policy.min_confidence]
    if low and action in ("allow", "restrict", "block"):
        reasons.append(
            {
                "code": "low_confidence",
                "min_confidence": policy.min_confidence,
                "confidence": min(f.confidence for f in low),
            }
        )
        action, why = "review", "low_confidence"
    if any(f.flags.get("prompt_injection") for f in found) and action in ("allow", "restrict"):
        reasons.append({"code": "prompt_injection"})
        action, why = "review", "prompt_injection"
    covered: set[str] = set()
    for f in found:
        covered |= f.coverage
    if near_bad and SEVERITY[action] < SEVERITY["review"]:
        # Close to a known-bad image but not a copy (e.g. the same picture with another caption):
        # never allowed automatically; a human compares.
        m = min(near_bad, key=lambda m: int(m.get("distance", 0)))
        reasons.append({"code": "bank_near_match", **m})
        action, why = "review", "bank_near_match"
        top = m.get("category") if m.get("category") in policy.categories else top
    uncovered = sorted(set(policy.categories) - covered)
    if uncovered and policy.on_uncovered == "review" and action == "allow":
        reasons.append({"code": "uncovered_categories", "categories": uncovered})
        action, why = "review", "uncovered_categories"
    if action == "allow" and not reasons:
        reasons.append({"code": "no_violation"})
    return decide(action, top=top, why=why)
