"""Appeals (DSA Art. 20): a platform files one for its user against a submission's current
decision, within the appeal window; it becomes an `appeal` task for someone who did not decide
the submission before. One appeal is open at a time per submission."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, select
from sqlalchemy.exc import IntegrityError

from moderation import audit
from moderation.db.tables import appeals, as_utc, decisions, iso, review_tasks, submissions
from moderation.errors import ModerationError
from moderation.intake.text import check_text
from moderation.policy import Policy
from moderation.review.reviewer import restricted_submissions
from moderation.review.tasks import APPEALS_QUEUE, child_safety_mark, is_graphic, priority_of, sla_s
from moderation.vocab import ReviewStatus, TaskKind

MAX_STATEMENT = 5000
PROVISIONAL = ("review", "escalate")  # an automated hand-over to people, not a decision to appeal


def current_decision(conn: Connection, submission_id: str) -> Any:
    """The decision in force: the latest human one, else the automated one (None: undecided)."""
    rows = conn.execute(
        select(decisions).where(decisions.c.submission_id == submission_id).order_by(decisions.c.id)
    ).all()
    human = [r for r in rows if not r.automated]
    return (human or rows)[-1] if rows else None


def appeal_json(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "submission_id": row.submission_id,
        "status": row.status,
        "outcome": row.outcome,
        "statement": row.statement,
        "appellant_id": row.appellant_id,
        "decision_id": row.decision_id,
        "created_at": iso(row.created_at),
        "due_at": iso(row.due_at),
        "decided_at": iso(row.decided_at),
    }


def file_appeal(
    conn: Connection,
    tenant_id: str,
    submission_id: str,
    statement: object,
    appellant_id: object,
    filed_by: str,
    policies: dict[str, Policy],
    window_days: int,
    now: datetime,
) -> dict[str, Any]:
    """File an appeal and open its task. Returns the appeal as the API shows it.

    Raises NOT_FOUND (no such submission for the tenant), INVALID_REQUEST (statement missing or
    malformed), NOT_DECIDED, APPEAL_WINDOW_CLOSED, APPEAL_OPEN."""
    check_text("statement", statement, MAX_STATEMENT)
    check_text("appellant_id", appellant_id, 256)
    if not isinstance(statement, str) or not statement.strip():
        raise ModerationError("INVALID_REQUEST", "statement is required: the user's reasons.", field="statement")
    lock = select(submissions).where(and_(submissions.c.id == submission_id, submissions.c.tenant_id == tenant_id))
    sub = conn.execute(lock.with_for_update() if conn.dialect.name == "postgresql" else lock).first()
    if sub is None:
        raise ModerationError("NOT_FOUND", f"No submission {submission_id[:64]!r}.")
    if conn.execute(
        select(appeals.c.id).where(and_(appeals.c.submission_id == sub.id, appeals.c.status == "open"))
    ).first():
        raise ModerationError("APPEAL_OPEN")
    decision = current_decision(conn, sub.id)
    if decision is None or decision.action in PROVISIONAL:
        # Nothing final to appeal yet: a person still has to decide (its review task is open).
        raise ModerationError("NOT_DECIDED")
    pending = conn.execute(
        select(review_tasks.c.id).where(
            and_(
                review_tasks.c.submission_id == sub.id,
                review_tasks.c.status != ReviewStatus.DONE,
                review_tasks.c.golden.is_(False),
            )
        )
    ).first()
    if pending is not None:
        raise ModerationError("NOT_DECIDED", "A review of this submission is still open; appeal its outcome.")
    closes = as_utc(decision.decided_at) + timedelta(days=window_days)
    if now > closes:
        raise ModerationError("APPEAL_WINDOW_CLOSED", f"Appeals of this decision closed at {closes.isoformat()}.")
    policy = policies.get(sub.policy_id)
    appeal_id, task_id = secrets.token_hex(16), secrets.token_hex(16)
    due = now + timedelta(seconds=sla_s(policy, APPEALS_QUEUE))
    restricted = sub.id in restricted_submissions(conn, [sub.id], child_safety_mark(policy))
    scores = {k: float(v) for k, v in (decision.categories or {}).items()}
    top = max(scores, key=lambda k: scores[k]) if scores else None
    try:
        with conn.begin_nested():
            conn.execute(
                appeals.insert().values(
                    id=appeal_id,
                    tenant_id=tenant_id,
                    submission_id=sub.id,
                    decision_id=decision.id,
                    statement=statement,
                    appellant_id=appellant_id,
                    status="open",
                    task_id=task_id,
                    filed_by=filed_by,
                    created_at=now,
                    due_at=due,
                )
            )
    except IntegrityError as exc:  # a parallel filing won
        raise ModerationError("APPEAL_OPEN") from exc
    conn.execute(
        review_tasks.insert().values(
            id=task_id,
            submission_id=sub.id,
            tenant_id=tenant_id,
            dedupe_key=f"appeal:{appeal_id}",
            kind=TaskKind.APPEAL,
            queue=APPEALS_QUEUE,
            reason="appeal",
            status=ReviewStatus.OPEN,
            priority=priority_of(top, scores.get(top, 0.0) if top else 0.0, sub.priority),
            restricted=restricted,
            graphic=is_graphic(policy, scores),
            category=top,
            policy_id=sub.policy_id,
            appeal_id=appeal_id,
            golden=False,
            breached=False,
            created_at=now,
            due_at=due,
        )
    )
    audit.append(
        conn,
        tenant_id,
        [
            audit.Event(
                "appealed",
                actor=filed_by,
                submission_id=sub.id,
                automated=False,
                facts={
                    "appeal_id": appeal_id,
                    "review_task_id": task_id,
                    "decision_id": decision.id,
                    "appealed_action": decision.action,
                    "appellant_id": appellant_id,
                    "statement": statement,
                    "due_at": due.isoformat(),
                },
            )
        ],
    )
    row = conn.execute(select(appeals).where(appeals.c.id == appeal_id)).one()
    return appeal_json(row)


def list_appeals(
    conn: Connection, tenant_id: str, submission_id: str, hide_restricted: bool = False
) -> list[dict[str, Any]]:
    """The submission's appeals, oldest first. Raises NOT_FOUND for another tenant's submission
    (and, with `hide_restricted`, for child-safety material)."""
    sub = conn.execute(
        select(submissions.c.id).where(and_(submissions.c.id == submission_id, submissions.c.tenant_id == tenant_id))
    ).first()
    if sub is None or (hide_restricted and restricted_submissions(conn, [submission_id])):
        raise ModerationError("NOT_FOUND", f"No submission {submission_id[:64]!r}.")
    rows = conn.execute(
        select(appeals).where(appeals.c.submission_id == submission_id).order_by(appeals.c.created_at)
    ).all()
    return [appeal_json(r) for r in rows]
