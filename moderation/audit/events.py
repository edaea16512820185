"""The audit events of a submission's life, built from its durable rows: received, analyzed,
decided (with the DSA statement of reasons), dead-lettered. Pure builders: appending them to
the chain is `chain.append`'s job, in the caller's transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from moderation.analyzers.base import Finding
from moderation.audit.chain import Event
from moderation.db.rows import SubmissionRow
from moderation.db.tables import iso
from moderation.policy import Decision, Policy


def received_event(sub: SubmissionRow) -> Event:
    """The `received` audit event, built from the durable submission row.

    It is appended by the first worker delivery, in the same transaction as its other events,
    rather than by the API: the API then never waits on the tenant's chain lock, and the
    row committed before the 202 already holds every request fact. `occurred_at` is the
    acceptance time; the chain position records when it was appended.
    """
    return Event(
        "received",
        actor=sub.api_key_id or "system",
        submission_id=sub.id,
        automated=None,
        occurred_at=sub.created_at,
        facts={
            "puid": sub.external_id,
            "source": sub.source,
            "content_type": f"image/{str(sub.format).lower()}",
            "content_hashes": {"sha256": sub.sha256, "pdq": sub.pdq, "phash": sub.phash},
            "byte_size": sub.byte_size,
            "width": sub.width,
            "height": sub.height,
            "frames": sub.frames,
            "uploader_id": sub.uploader_id,
            "policy": sub.policy_id,
            "priority": sub.priority,
            "request": {"time": iso(sub.created_at), "client_ip": sub.request_ip, "api_key_id": sub.api_key_id},
        },
    )


def analyzed_event(submission_id: str, f: Finding) -> Event:
    return Event(
        "analyzed",
        actor="system",
        submission_id=submission_id,
        automated=True,
        facts={
            "stage": f.stage,
            "analyzer": f.analyzer,
            "analyzer_version": f.version,
            "model": f.model,
            "scores": f.scores,
            "confidence": f.confidence,
            "flags": f.flags,
            "error": f.error,
            "bank_match": f.bank_match,
            "rationale": f.rationale,
            "cached": f.cached,
        },
    )


def statement_of_reasons(
    sub: SubmissionRow, policy: Policy | None, decision: Decision, found: list[Finding], decided_at: datetime
) -> dict[str, Any]:
    """The DSA statement-of-reasons fields of an automated decision (see DESIGN.md, Audit event)."""
    rule = policy.categories.get(decision.top_category) if policy and decision.top_category else None
    models = [f.model for f in found if f.model]
    return {
        "puid": sub.external_id or sub.id,
        "content_type": f"image/{str(sub.format).lower()}",
        "content_hashes": {"sha256": sub.sha256, "pdq": sub.pdq, "phash": sub.phash},
        "content_date": iso(sub.created_at),
        "application_date": decided_at.isoformat(),
        "action": decision.action,
        "decision_visibility": decision.visibility,
        "territorial_scope": policy.territorial_scope if policy else [],
        "decision_ground": decision.dsa.get("decision_ground"),
        "illegal_content_legal_ground": decision.dsa.get("legal_ground"),
        "incompatible_content_ground": decision.dsa.get("clause"),
        "category": decision.dsa.get("category"),
        "decision_facts": [r for r in decision.reasons],
        "source_type": policy.source_type if policy else "SOURCE_VOLUNTARY",
        "automated_detection": True,
        "automated_decision": "AUTOMATED_DECISION_FULLY",
        "models": models,
        "analyzers": [{"stage": f.stage, "analyzer": f.analyzer, "version": f.version} for f in found],
        "policy": {"id": decision.policy_id, "version": decision.policy_version},
        "scores": decision.categories,
        "thresholds": (
            {"block_at": rule.block_at, "review_at": rule.review_at, "restrict_at": rule.restrict_at} if rule else None
        ),
        "rationale": {k: v for f in found for k, v in f.rationale.items()},
        # How each stage's scores were made (VLM: the generated number, or its token-probability expectation).
        "score_methods": {f.stage: f.score_methods for f in found if f.score_methods},
        "review": {"queue": decision.review_queue, "reason": decision.review_reason} if decision.review_queue else None,
        "attempt": int(sub.attempts or 1),
        "cached": any(f.cached for f in found),
    }


def decided_event(sub: SubmissionRow, decision: Decision, statement: dict[str, Any], now: datetime) -> Event:
    """The automated `decided` event: its facts are the DSA statement of reasons."""
    return Event(
        "decided",
        actor="system",
        submission_id=sub.id,
        category=decision.top_category,
        automated=True,
        occurred_at=now,
        facts=statement,
    )


def dead_lettered_event(sub: SubmissionRow, task: str, error: str) -> Event:
    """The give-up of a submission's deliveries (it then fails closed to review)."""
    return Event(
        "dead_lettered",
        actor="system",
        submission_id=sub.id,
        automated=True,
        facts={"task": task, "error": error, "attempts": int(sub.attempts)},
    )
