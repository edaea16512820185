"""Policies: their schema and loading (`schema`), the pure `evaluate` (`evaluate`), and routing
along the cascade (`cascade`)."""

from moderation.policy.evaluate import Decision, evaluate, qa_draw
from moderation.policy.schema import (
    BUILTIN_STAGES,
    DSA_CATEGORIES,
    TAXONOMY,
    CategoryRule,
    Policy,
    PolicyError,
    Stage,
    load_policies,
    load_policy,
)

__all__ = [
    "BUILTIN_STAGES",
    "DSA_CATEGORIES",
    "TAXONOMY",
    "CategoryRule",
    "Decision",
    "Policy",
    "PolicyError",
    "Stage",
    "evaluate",
    "load_policies",
    "load_policy",
    "qa_draw",
]
