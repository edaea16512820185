"""Scores beside the policy's marks: what the review case and the playground draw."""

from __future__ import annotations

from typing import Any

from moderation.policy.schema import Policy


def score_marks(policy: Policy | None, scores: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Per category, highest score first: the score and the policy's review/restrict/block marks
    and clause (None where the policy does not name the category)."""
    out: dict[str, dict[str, Any]] = {}
    for cat, score in sorted(scores.items(), key=lambda kv: -float(kv[1])):
        rule = policy.categories.get(cat) if policy else None
        out[cat] = {
            "score": float(score),
            "review_at": rule.review_at if rule else None,
            "restrict_at": rule.restrict_at if rule else None,
            "block_at": rule.block_at if rule else None,
            "clause": rule.dsa.clause if rule else None,
        }
    return out
