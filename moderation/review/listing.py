"""Lists of review tasks (filters, cursor paging) and the numbers a queue page and /metrics show:
backlog, oldest open age and SLA breaches per queue; and beat's SLA ageing."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select, update

from moderation.db.tables import as_utc, review_tasks
from moderation.errors import ModerationError
from moderation.intake.text import check_text
from moderation.review.leases import claimable, task_json
from moderation.review.reviewer import Reviewer, visible
from moderation.review.tasks import OVERDUE_BOOST
from moderation.vocab import ReviewStatus, TaskKind

t = review_tasks.c
MAX_PAGE = 500


@dataclass(frozen=True)
class TaskFilter:
    queue: str | None = None
    kind: str | None = None
    status: str | None = None
    category: str | None = None
    policy: str | None = None
    overdue: bool | None = None
    mine: bool = False

    def check(self) -> None:
        """Raises ModerationError INVALID_REQUEST for a kind or status outside the vocabulary, or a
        filter that is not text (control characters: PostgreSQL refuses NUL)."""
        for name in ("queue", "category", "policy"):
            check_text(name, getattr(self, name), 64)
        if self.kind is not None and self.kind not in set(TaskKind):
            raise ModerationError("INVALID_REQUEST", f"kind is one of {', '.join(TaskKind)}.", field="kind")
        if self.status is not None and self.status not in set(ReviewStatus):
            raise ModerationError("INVALID_REQUEST", f"status is one of {', '.join(ReviewStatus)}.", field="status")


def _cursor(row: Any) -> str:
    raw = f"{as_utc(row.created_at).isoformat()}|{row.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _after(cursor: str) -> Any:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, task_id = raw.split("|", 1)
        at = datetime.fromisoformat(when).astimezone(UTC)
        if not re.fullmatch(r"[0-9a-f]{32}", task_id):
            raise ValueError("not a task id")
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise ModerationError("INVALID_REQUEST", "cursor is not one this API gave out.", field="cursor") from exc
    return or_(t.created_at > at, and_(t.created_at == at, t.id > task_id))


def list_tasks(
    conn: Connection, reviewer: Reviewer, f: TaskFilter, now: datetime, cursor: str | None = None, limit: int = 50
) -> dict[str, Any]:
    """The tasks the reviewer may see, oldest first: {tasks, next_cursor}."""
    f.check()
    limit = max(1, min(limit, MAX_PAGE))
    conditions = [visible(reviewer)]
    if f.queue:
        conditions.append(t.queue == f.queue)
    if f.kind:
        conditions.append(t.kind == f.kind)
    if f.category:
        conditions.append(t.category == f.category)
    if f.policy:
        conditions.append(t.policy_id == f.policy)
    if f.mine:
        conditions += [t.claimed_by == reviewer.key_id, t.status == ReviewStatus.CLAIMED, t.lease_until >= now]
    if f.status == ReviewStatus.OPEN:
        conditions.append(claimable(now))
    elif f.status == ReviewStatus.CLAIMED:
        conditions += [t.status == ReviewStatus.CLAIMED, t.lease_until >= now]
    elif f.status == ReviewStatus.DONE:
        conditions.append(t.status == ReviewStatus.DONE)
    if f.overdue is not None:
        late = and_(t.status != ReviewStatus.DONE, t.due_at < now)
        conditions.append(late if f.overdue else ~late)
    if cursor:
        conditions.append(_after(cursor))
    rows = conn.execute(
        select(review_tasks).where(and_(*conditions)).order_by(t.created_at, t.id).limit(limit + 1)
    ).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return {"tasks": [task_json(r, now) for r in rows], "next_cursor": _cursor(rows[-1]) if more and rows else None}


def queue_counts(conn: Connection, reviewer: Reviewer, now: datetime) -> list[dict[str, Any]]:
    """Per queue the reviewer may see: open tasks, the oldest one's created and due times, overdue count."""
    rows = conn.execute(
        select(
            t.queue,
            func.count().label("open"),
            func.min(t.created_at).label("oldest"),
            func.min(t.due_at).label("first_due"),
            func.count().filter(t.due_at < now).label("overdue"),
        )
        .where(and_(visible(reviewer), claimable(now)))
        .group_by(t.queue)
        .order_by(t.queue)
    ).all()
    return [
        {
            "queue": r.queue,
            "open": int(r.open),
            "oldest_created_at": as_utc(r.oldest).isoformat() if r.oldest else None,
            "oldest_age_s": (now - as_utc(r.oldest)).total_seconds() if r.oldest else 0.0,
            "first_due_at": as_utc(r.first_due).isoformat() if r.first_due else None,
            "overdue": int(r.overdue or 0),
        }
        for r in rows
    ]


def backlog(conn: Connection, now: datetime) -> list[dict[str, Any]]:
    """Every tenant's queues together (/metrics): open tasks, oldest open age, breaches so far."""
    open_rows = conn.execute(
        select(t.queue, func.count().label("open"), func.min(t.created_at).label("oldest"))
        .where(t.status != ReviewStatus.DONE)
        .group_by(t.queue)
    ).all()
    breaches: dict[str, int] = dict(
        (str(q), int(n))
        for q, n in conn.execute(select(t.queue, func.count()).where(t.breached.is_(True)).group_by(t.queue)).all()
    )
    out = {
        r.queue: {
            "queue": r.queue,
            "open": int(r.open),
            "oldest_age_s": max(0.0, (now - as_utc(r.oldest)).total_seconds()) if r.oldest else 0.0,
            "breaches": int(breaches.get(r.queue, 0)),
        }
        for r in open_rows
    }
    for queue, n in breaches.items():
        out.setdefault(queue, {"queue": queue, "open": 0, "oldest_age_s": 0.0, "breaches": int(n)})
    return sorted(out.values(), key=lambda q: str(q["queue"]))


def age_overdue(conn: Connection, now: datetime) -> int:
    """Beat's SLA ageing: each task past its due time moves OVERDUE_BOOST up (once) and counts
    as a breach. Returns how many breached now."""
    least = func.greatest if conn.dialect.name == "postgresql" else func.max  # SQLite's scalar max
    return int(
        conn.execute(
            update(review_tasks)
            .where(and_(t.status != ReviewStatus.DONE, t.breached.is_(False), t.golden.is_(False), t.due_at < now))
            .values(breached=True, priority=least(t.priority - OVERDUE_BOOST, 0))
        ).rowcount
    )
