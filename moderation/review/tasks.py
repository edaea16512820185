"""Opening review tasks: an automated decision that needs people (review, escalate, a QA sample)
opens one task per submission, in the decision's transaction. Claims, leases and human decisions
come with the review console."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from moderation.audit import Event
from moderation.db.rows import SubmissionRow
from moderation.db.sql import insert_ignore
from moderation.db.tables import AUTOMATED, review_tasks
from moderation.policy import Decision
from moderation.vocab import Priority, ReviewStatus


def task_row(sub: SubmissionRow, decision: Decision, now: datetime) -> tuple[dict[str, Any], Event]:
    """The review task for `sub` (whose decision names a review queue) and its audit event."""
    assert decision.review_queue
    task_id = secrets.token_hex(16)
    row = {
        "id": task_id,
        "submission_id": sub.id,
        "tenant_id": sub.tenant_id,
        "dedupe_key": AUTOMATED,
        "queue": decision.review_queue,
        "reason": decision.review_reason or "review",
        "status": ReviewStatus.OPEN,
        "priority": Priority.of(sub.priority).review_rank,
        "created_at": now,
    }
    event = Event(
        "routed_to_review",
        actor="system",
        submission_id=sub.id,
        category=decision.top_category,
        automated=True,
        facts={"queue": decision.review_queue, "reason": decision.review_reason, "review_task_id": task_id},
    )
    return row, event


def open_tasks(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert the tasks; one per submission and decision (a redelivery opens none twice)."""
    if rows:
        conn.execute(insert_ignore(conn, review_tasks), rows)
