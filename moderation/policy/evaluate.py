"""`evaluate(policy, findings) -> Decision`: a pure function of the policy and the findings.

A known-bad bank match blocks; an analyzer error fails closed (review or block, never allow);
a known-good match allows; otherwise per-category thresholds, then guards that can only make
the outcome stricter. The decision carries the policy id and version it was made under.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from moderation.analyzers.base import Finding
from moderation.policy.schema import Policy
from moderation.vocab import Action


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


# One ordered procedure, read top to bottom as auditors read it (bank match, errors, known-good,
# thresholds, then guards that only make the outcome stricter): its steps share the scores and
# reasons gathered so far, and splitting it would scatter the order that the README documents.
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
        if action in (Action.REVIEW, Action.ESCALATE) and review_queue is None:
            review_queue = "restricted" if action == Action.ESCALATE else (rule.review_queue if rule else "default")
        review_reason = why if review_queue else None
        if (
            action in (Action.ALLOW, Action.BLOCK, Action.RESTRICT)
            and review_queue is None
            and qa < policy.qa_sample_rate
        ):
            review_queue, review_reason = "qa", "qa_sample"
            reasons.append({"code": "qa_sample", "rate": policy.qa_sample_rate})
        visibility = {Action.BLOCK: policy.visibility.block, Action.RESTRICT: policy.visibility.restrict}.get(action)
        dsa: dict[str, Any] = {}
        if rule is not None:
            dsa = {
                "category": rule.dsa.category,
                "keywords": list(rule.dsa.keywords),
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
            Action.ESCALATE if rule and rule.escalate else Action.BLOCK,
            top=bank_cat if rule else None,
            why="bank_match",
        )

    # 2. Analyzer failure or unparseable output: fail closed (below, after the thresholds, so
    # that what the other analyzers found still counts: an error never weakens the outcome).
    errors = [f for f in found if f.error]

    # 3. Known-good match: allowed without models.
    if not errors and good and not near_bad:
        reasons.append({"code": "bank_match", **good[0]})
        return decide(Action.ALLOW)

    # 4. Thresholds.
    action: Action = Action.ALLOW
    top: str | None = None
    for cat, score in sorted(scores.items(), key=lambda kv: -kv[1]):
        rule = policy.categories[cat]
        hit: Action | None = None
        threshold = None
        if score >= rule.block_at:
            hit, threshold = (Action.ESCALATE if rule.escalate else Action.BLOCK), rule.block_at
        elif rule.restrict_at is not None and score >= rule.restrict_at:
            hit, threshold = (Action.ESCALATE if rule.escalate else Action.RESTRICT), rule.restrict_at
        elif score >= rule.review_at:
            hit, threshold = (Action.ESCALATE if rule.escalate else Action.REVIEW), rule.review_at
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
        if hit.severity > action.severity:
            action, top = hit, cat
    why = "threshold" if action in (Action.REVIEW, Action.ESCALATE) else None
    if errors:
        for f in errors:
            reasons.append({"code": "analyzer_error", "analyzer": f.analyzer, "error": f.error})
        if Action(policy.on_error).severity > action.severity:
            action, why = Action(policy.on_error), "analyzer_error"
        return decide(action, top=top, why=why)

    # 5. Guards: each can only make the outcome stricter.
    scored = [f for f in found if f.scores]
    low = [f for f in scored if f.confidence < policy.min_confidence]
    if low and action in (Action.ALLOW, Action.RESTRICT, Action.BLOCK):
        reasons.append(
            {
                "code": "low_confidence",
                "min_confidence": policy.min_confidence,
                "confidence": min(f.confidence for f in low),
            }
        )
        action, why = Action.REVIEW, "low_confidence"
    if any(f.flags.get("prompt_injection") for f in found) and action in (Action.ALLOW, Action.RESTRICT):
        reasons.append({"code": "prompt_injection"})
        action, why = Action.REVIEW, "prompt_injection"
    elif any(f.flags.get("moderation_talk") for f in found) and action == Action.ALLOW:
        # Text about this image's own moderation (a stamp, a plea, a threat to the moderator) comes
        # in more phrasings than the injection rules know: a person reads it, nothing is blocked.
        reasons.append({"code": "moderation_talk"})
        action, why = Action.REVIEW, "moderation_talk"
    covered: set[str] = set()
    for f in found:
        covered |= f.coverage
    if near_bad and action.severity < Action.REVIEW.severity:
        # Close to a known-bad image but not a copy (e.g. the same picture with another caption):
        # never allowed automatically; a human compares.
        m = min(near_bad, key=lambda m: int(m.get("distance", 0)))
        reasons.append({"code": "bank_near_match", **m})
        action, why = Action.REVIEW, "bank_near_match"
        top = m.get("category") if m.get("category") in policy.categories else top
    uncovered = sorted(set(policy.categories) - covered)
    if uncovered and policy.on_uncovered == "review" and action == Action.ALLOW:
        reasons.append({"code": "uncovered_categories", "categories": uncovered})
        action, why = Action.REVIEW, "uncovered_categories"
    if action == Action.ALLOW and not reasons:
        reasons.append({"code": "no_violation"})
    return decide(action, top=top, why=why)
