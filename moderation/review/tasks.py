"""Opening review tasks: an automated decision that needs people (review, escalate, a QA sample)
opens one task per submission, in the decision's transaction, with its kind, priority, due time
(the policy's SLA for the queue) and whether its image is graphic (the exposure budget)."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from moderation.audit import Event
from moderation.db.rows import SubmissionRow
from moderation.db.sql import insert_ignore
from moderation.db.tables import AUTOMATED, review_tasks
from moderation.policy import Decision, Policy
from moderation.policy.schema import DEFAULT_REVIEW_SLA
from moderation.vocab import Action, Priority, ReviewStatus, TaskKind

#: Categories whose images count against a moderator's exposure budget when revealed.
GRAPHIC = ("violence_gore", "sexual", "nudity", "self_harm", "child_safety")
RESTRICTED_QUEUE = "restricted"
ESCALATION_QUEUE = "escalation"
APPEALS_QUEUE = "appeals"
QA_QUEUE = "qa"

# Severity tiers of the worst category (lower is served first); within a tier a higher score
# comes first, then the submission's own priority.
TIER = {
    "child_safety": 0,
    "self_harm": 10,
    "violence_gore": 20,
    "extremism": 20,
    "sexual": 20,
    "nudity": 30,
    "hate": 30,
    "harassment": 30,
    "weapons": 30,
    "drugs": 30,
}
_UNKNOWN_TIER = 40
OVERDUE_BOOST = 20  # an overdue task moves this far up, once


def priority_of(category: str | None, score: float, submission_priority: str | None) -> int:
    """The task's priority: the severity of the worst category, its score, the submission's priority."""
    tier = TIER.get(category or "", _UNKNOWN_TIER)
    return tier + round((1.0 - min(max(score, 0.0), 1.0)) * 9) + Priority.of(submission_priority).review_rank


def is_graphic(policy: Policy | None, scores: dict[str, float]) -> bool:
    """A score at or above the policy's review mark in a graphic category (a bank match sets 1.0)."""
    for cat in GRAPHIC:
        rule = policy.categories.get(cat) if policy else None
        mark = rule.review_at if rule else 0.5
        if scores.get(cat, 0.0) >= mark:
            return True
    return False


def child_safety_mark(policy: Policy | None) -> float:
    """The score from which a submission counts as child-safety material (restricted)."""
    rule = policy.categories.get("child_safety") if policy else None
    return rule.review_at if rule else 0.05


def sla_s(policy: Policy | None, queue: str) -> int:
    return policy.sla_s(queue) if policy else DEFAULT_REVIEW_SLA.get(queue, DEFAULT_REVIEW_SLA["default"])


def task_row(
    sub: SubmissionRow, decision: Decision, policy: Policy | None, now: datetime
) -> tuple[dict[str, Any], Event]:
    """The review task for `sub` (whose decision names a review queue) and its audit event."""
    assert decision.review_queue
    task_id = secrets.token_hex(16)
    queue = decision.review_queue
    top = decision.top_category
    restricted = queue == RESTRICTED_QUEUE or top == "child_safety"
    if restricted:
        queue = RESTRICTED_QUEUE
    kind = TaskKind.QA if queue == QA_QUEUE else TaskKind.REVIEW
    if decision.action == Action.ESCALATE and not restricted:
        kind, queue = TaskKind.ESCALATION, ESCALATION_QUEUE
    score = decision.categories.get(top, 0.0) if top else max(decision.categories.values(), default=0.0)
    row = {
        "id": task_id,
        "submission_id": sub.id,
        "tenant_id": sub.tenant_id,
        "dedupe_key": AUTOMATED,
        "kind": kind,
        "queue": queue,
        "reason": (decision.review_reason or "review")[:64],
        "status": ReviewStatus.OPEN,
        "priority": priority_of(top, score, sub.priority),
        "restricted": restricted,
        "graphic": is_graphic(policy, decision.categories),
        "category": top,
        "policy_id": decision.policy_id,
        "golden": False,
        "breached": False,
        "created_at": now,
        "due_at": now + timedelta(seconds=sla_s(policy, queue)),
    }
    event = Event(
        "routed_to_review",
        actor="system",
        submission_id=sub.id,
        category=top,
        automated=True,
        facts={"queue": queue, "kind": kind, "reason": decision.review_reason, "review_task_id": task_id},
    )
    return row, event


def open_tasks(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert the tasks; one per submission and decision (a redelivery opens none twice)."""
    if rows:
        conn.execute(insert_ignore(conn, review_tasks), rows)
