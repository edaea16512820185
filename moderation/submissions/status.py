"""The public status of a submission (the body of GET /v1/submissions/{id} and of its callbacks)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, and_, select

from moderation.db.tables import decisions, iso, submissions
from moderation.errors import ModerationError


def view(conn: Connection, tenant_id: str, submission_id: str) -> dict[str, Any]:
    """The public status of a submission: {id, status, decision}. Human decisions supersede automated."""
    sub = conn.execute(
        select(submissions.c.id, submissions.c.status, submissions.c.external_id, submissions.c.created_at).where(
            and_(submissions.c.id == submission_id, submissions.c.tenant_id == tenant_id)
        )
    ).first()
    if sub is None:
        raise ModerationError("NOT_FOUND", f"No submission {submission_id}.")
    rows = conn.execute(
        select(decisions).where(decisions.c.submission_id == submission_id).order_by(decisions.c.id)
    ).all()
    decision = None
    if rows:
        human = [r for r in rows if not r.automated]
        decision = _decision((human or rows)[-1])
    return {
        "id": sub.id,
        "status": sub.status,
        "external_id": sub.external_id,
        "created_at": iso(sub.created_at),
        "decision": decision,
        # Every decision, oldest first: a human one supersedes the automated one, never erases it.
        "history": [_decision(r) for r in rows],
    }


def _decision(d: Any) -> dict[str, Any]:
    return {
        "action": d.action,
        "categories": d.categories,
        "reasons": d.reasons,
        "policy": {"id": d.policy_id, "version": d.policy_version},
        "automated": bool(d.automated),
        "reviewer": d.reviewer_id,
        "decided_at": iso(d.decided_at),
    }
