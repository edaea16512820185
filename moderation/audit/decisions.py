"""Decisions of one tenant for auditors: search with filters and keyset paging, the timeline of
one submission, and the rows that exports stream (CSV, JSON Lines, DSA statements)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, and_, exists, func, select
from sqlalchemy.dialects.postgresql import JSONB

from moderation.audit.chain import event_json
from moderation.db.tables import AUTOMATED, appeals, audit_events, decisions, iso, submissions
from moderation.errors import ModerationError
from moderation.intake.text import check_text
from moderation.policy.schema import TAXONOMY

d, s = decisions.c, submissions.c
ACTIONS = ("allow", "restrict", "block", "review", "escalate")
_SID = re.compile(r"[0-9a-f]{32}")
PLAYGROUND = "play"


@dataclass(frozen=True)
class DecisionFilter:
    """Every field narrows, none widens. `appealed`/`reversed`: decisions an appeal was filed
    against / that an appeal reversed or modified."""

    since: datetime | None = None
    until: datetime | None = None
    action: str | None = None
    category: str | None = None
    automated: bool | None = None
    reviewer: str | None = None
    policy: str | None = None
    policy_version: str | None = None
    appealed: bool | None = None
    reversed: bool | None = None

    def check(self) -> None:
        """Raises ModerationError INVALID_REQUEST naming the first bad filter."""
        if self.action is not None and self.action not in ACTIONS:
            raise ModerationError("INVALID_REQUEST", f"action is one of {', '.join(ACTIONS)}.", field="action")
        if self.category is not None and self.category not in TAXONOMY:
            raise ModerationError("INVALID_REQUEST", "category is one of the taxonomy's.", field="category")
        for name in ("reviewer", "policy", "policy_version"):
            check_text(name, getattr(self, name), 64)


def _conditions(conn: Connection, tenant_id: str, f: DecisionFilter) -> list[Any]:
    f.check()
    # Playground submissions (source `play`) are trials, not moderation: never exported or counted.
    conds: list[Any] = [s.tenant_id == tenant_id, s.source != PLAYGROUND]
    if f.since:
        conds.append(d.decided_at >= f.since)
    if f.until:
        conds.append(d.decided_at < f.until)
    if f.action:
        conds.append(d.action == f.action)
    if f.category:
        if conn.dialect.name == "postgresql":
            conds.append(d.categories.cast(JSONB).has_key(f.category))
        else:
            conds.append(func.json_extract(d.categories, f'$."{f.category}"').isnot(None))
    if f.automated is not None:
        conds.append(d.automated.is_(f.automated))
    if f.reviewer:
        conds.append(d.reviewer_id == f.reviewer)
    if f.policy:
        conds.append(d.policy_id == f.policy)
    if f.policy_version:
        conds.append(d.policy_version == f.policy_version)
    if f.appealed is not None:
        filed = exists().where(appeals.c.decision_id == d.id)
        conds.append(filed if f.appealed else ~filed)
    if f.reversed is not None:
        undone = exists().where(and_(appeals.c.decision_id == d.id, appeals.c.outcome.in_(("reversed", "modified"))))
        conds.append(undone if f.reversed else ~undone)
    return conds


def decision_json(row: Any) -> dict[str, Any]:
    return {
        "id": int(row.id),
        "submission_id": row.submission_id,
        "puid": row.external_id,
        "action": row.action,
        "categories": row.categories,
        "reasons": row.reasons,
        "policy": {"id": row.policy_id, "version": row.policy_version},
        "automated": bool(row.automated),
        "reviewer": row.reviewer_id,
        "kind": "automated" if row.dedupe_key == AUTOMATED else "human",
        "decided_at": iso(row.decided_at),
        "uploaded_at": iso(row.created_at),
    }


_COLUMNS: tuple[Any, ...] = (
    *(d.id, d.submission_id, d.dedupe_key, d.action, d.categories, d.reasons, d.policy_id, d.policy_version),
    *(d.automated, d.reviewer_id, d.decided_at, s.external_id, s.created_at, s.format, s.tenant_id),
)


def search(conn: Connection, tenant_id: str, f: DecisionFilter, after_id: int = 0, limit: int = 100) -> dict[str, Any]:
    """Decisions of the tenant in id order after `after_id`: {decisions, next_after_id}."""
    limit = max(1, min(limit, 1000))
    rows = conn.execute(
        select(*_COLUMNS)
        .join(submissions, s.id == d.submission_id)
        .where(and_(d.id > after_id, *_conditions(conn, tenant_id, f)))
        .order_by(d.id)
        .limit(limit)
    ).all()
    return {
        "decisions": [decision_json(r) for r in rows],
        "next_after_id": int(rows[-1].id) if len(rows) == limit else None,
    }


def stream(engine: Engine, tenant_id: str, f: DecisionFilter, batch: int = 1000) -> Iterator[list[Any]]:
    """Every matching decision, in id order, a batch at a time, each batch read in its own short
    transaction (an export of millions holds no lock and no cursor for its whole length)."""
    after = 0
    while True:
        with engine.connect() as conn:
            rows = conn.execute(
                select(*_COLUMNS)
                .join(submissions, s.id == d.submission_id)
                .where(and_(d.id > after, *_conditions(conn, tenant_id, f)))
                .order_by(d.id)
                .limit(batch)
            ).all()
        if not rows:
            return
        yield list(rows)
        after = int(rows[-1].id)
        if len(rows) < batch:
            return


def timeline(conn: Connection, tenant_id: str, submission_id: str) -> dict[str, Any]:
    """Everything the chain holds about one submission, in chain order. Raises NOT_FOUND for a
    submission of another tenant (or none)."""
    if (
        not _SID.fullmatch(submission_id)
        or conn.execute(select(s.id).where(and_(s.id == submission_id, s.tenant_id == tenant_id))).first() is None
    ):
        raise ModerationError("NOT_FOUND", f"No submission {submission_id[:64]!r}.")
    rows = conn.execute(
        select(audit_events)
        .where(and_(audit_events.c.tenant_id == tenant_id, audit_events.c.submission_id == submission_id))
        .order_by(audit_events.c.seq)
        .limit(10_000)
    ).all()
    return {"submission_id": submission_id, "events": [event_json(r) for r in rows]}
