"""Attempt counting and the findings of a submission: what each delivery counts first, what the
stages wrote, and the item due for its automated decision."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, and_, select, update

from moderation import audit
from moderation.analyzers.base import Finding
from moderation.db.rows import SubmissionRow
from moderation.db.sql import insert_ignore, relaxed_commit
from moderation.db.tables import audit_events, findings, submissions, utcnow
from moderation.pipeline.context import Context
from moderation.policy import Policy
from moderation.vocab import ACTIVE, SubmissionStatus


def count_attempts(conn: Connection, submission_ids: list[str]) -> list[SubmissionRow]:
    """Count this delivery (status -> analyzing) for the active ones among `submission_ids`."""
    return list(
        conn.execute(
            update(submissions)
            .where(and_(submissions.c.id.in_(submission_ids), submissions.c.status.in_(ACTIVE)))
            .values(attempts=submissions.c.attempts + 1, status=SubmissionStatus.ANALYZING, updated_at=utcnow())
            .returning(*submissions.c)
        ).all()
    )


def start_attempt(ctx: Context, submission_id: str) -> SubmissionRow | None:
    """Count this delivery in its own commit, before any work that parses the image, so a
    worker killed by a poison input still leaves the count behind."""
    with ctx.engine.begin() as conn:
        relaxed_commit(conn)  # losing this increment in a crash only loses one count
        rows = count_attempts(conn, [submission_id])
        return rows[0] if rows else None


def not_yet_received(conn: Connection, submission_ids: list[str]) -> set[str]:
    """Those of `submission_ids` whose `received` event is not in the log yet."""
    if not submission_ids:
        return set()
    seen = conn.execute(
        select(audit_events.c.submission_id).where(
            and_(audit_events.c.submission_id.in_(submission_ids), audit_events.c.action == "received")
        )
    ).scalars()
    return set(submission_ids) - set(seen)


def stored_findings(conn: Connection, submission_ids: list[str]) -> dict[str, list[Finding]]:
    out: dict[str, list[Finding]] = {sid: [] for sid in submission_ids}
    if submission_ids:
        rows = conn.execute(
            select(findings.c.submission_id, findings.c.body)
            .where(findings.c.submission_id.in_(submission_ids))
            .order_by(findings.c.id)
        ).all()
        for r in rows:
            out[r.submission_id].append(Finding.from_json(r.body))
    return out


@dataclass
class Due:
    """A submission ready for its automated decision, with what is still to be written."""

    sub: SubmissionRow
    policy: Policy | None
    found: list[Finding]
    new: list[Finding]
    events: list[audit.Event]
    reason: str | None = None


def insert_findings(conn: Connection, items: list[tuple[str, Finding]]) -> set[tuple[str, str]]:
    """Store findings (a redelivered one is ignored); returns the (submission, stage) pairs stored."""
    if not items:
        return set()
    now = utcnow()
    rows = conn.execute(
        insert_ignore(conn, findings).returning(findings.c.submission_id, findings.c.stage),
        [
            {
                "submission_id": sid,
                "stage": f.stage,
                "analyzer": f.analyzer,
                "analyzer_version": f.version,
                "body": f.to_json(),
                "created_at": now,
            }
            for sid, f in items
        ],
    ).all()
    return {(r.submission_id, r.stage) for r in rows}
