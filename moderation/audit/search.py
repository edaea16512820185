"""Queries over the audit log, always within one tenant's chain."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, select

from moderation.audit.chain import event_json
from moderation.db.tables import audit_events


@dataclass(frozen=True)
class EventFilter:
    """Which events of the tenant's chain to read; every field narrows, none widens."""

    submission_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    action: str | None = None
    category: str | None = None
    automated: bool | None = None
    after_seq: int = 0


def search_events(conn: Connection, tenant_id: str, where: EventFilter, limit: int) -> dict[str, Any]:
    """Up to `limit` events of `tenant_id` in chain order after `where.after_seq`, and the
    `next_after_seq` to page on (None on the last page)."""
    t = audit_events.c
    conds = [t.tenant_id == tenant_id, t.seq > where.after_seq]
    if where.submission_id:
        conds.append(t.submission_id == where.submission_id)
    if where.since:
        conds.append(t.occurred_at >= where.since)
    if where.until:
        conds.append(t.occurred_at < where.until)
    if where.action:
        conds.append(t.action == where.action)
    if where.category:
        conds.append(t.category == where.category)
    if where.automated is not None:
        conds.append(t.automated == where.automated)
    rows = conn.execute(select(audit_events).where(and_(*conds)).order_by(t.seq).limit(limit)).all()
    return {"events": [event_json(r) for r in rows], "next_after_seq": rows[-1].seq if len(rows) == limit else None}
