"""Claims on review tasks: `next`, claim, release, heartbeat, and the leases that run out.

A claim is a lease of `lease_s` held by one key, proved by a token only its holder got (the
database keeps its SHA-256). An expired lease is open again: every query treats it so, and
beat's `expire` writes it back. On PostgreSQL `next` locks its candidates with FOR UPDATE SKIP
LOCKED, so parallel moderators never wait on each other; every take is also a conditional
UPDATE (the row is still claimable), which keeps SQLite, whose writers are serialised, correct.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, exists, not_, or_, select, update

from moderation import audit
from moderation.db.tables import as_utc, decisions, iso, review_tasks
from moderation.errors import ModerationError
from moderation.review.reviewer import Reviewer, may_see, visible
from moderation.vocab import ReviewStatus

t = review_tasks.c
TASK_ID = re.compile(r"[0-9a-f]{32}")  # anything else names no task (and never reaches the driver)


def claimable(now: datetime) -> Any:
    """Open, or claimed with a lease that ran out."""
    return or_(t.status == ReviewStatus.OPEN, and_(t.status == ReviewStatus.CLAIMED, t.lease_until < now))


def conflicted(reviewer: Reviewer) -> Any:
    """Appeal tasks of submissions the reviewer decided before (a decision, or a task closed)."""
    earlier_decision = exists().where(
        and_(decisions.c.submission_id == t.submission_id, decisions.c.reviewer_id == reviewer.key_id)
    )
    earlier = review_tasks.alias("earlier")
    earlier_task = exists().where(
        and_(earlier.c.submission_id == t.submission_id, earlier.c.decided_by == reviewer.key_id)
    )
    return and_(t.appeal_id.isnot(None), or_(earlier_decision, earlier_task))


def status_of(row: Any, now: datetime) -> str:
    if row.status == ReviewStatus.CLAIMED and row.lease_until is not None and as_utc(row.lease_until) <= now:
        return str(ReviewStatus.OPEN)
    return str(row.status)


def task_json(row: Any, now: datetime) -> dict[str, Any]:
    """A task as the API lists it (a golden item looks like any other task)."""
    status = status_of(row, now)
    held = status == ReviewStatus.CLAIMED
    return {
        "id": row.id,
        "submission_id": row.submission_id,
        "kind": row.kind,
        "queue": row.queue,
        "reason": "review" if row.golden else row.reason,
        "status": status,
        "priority": row.priority,
        "category": row.category,
        "policy": row.policy_id,
        "created_at": iso(row.created_at),
        "due_at": iso(row.due_at),
        "overdue": status != ReviewStatus.DONE and row.due_at is not None and as_utc(row.due_at) < now,
        "claimed_by": row.claimed_by if held else None,
        "claimed_at": iso(row.claimed_at) if held else None,
        "claim_expires_at": iso(row.lease_until) if held else None,
        "decided_by": row.decided_by,
        "closed_at": iso(row.closed_at),
    }


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _take(conn: Connection, task_id: str, reviewer: Reviewer, now: datetime, lease_s: float) -> str | None:
    """Claim the task if it is still claimable (or already ours); returns the new token."""
    token = secrets.token_urlsafe(24)
    lease_until = now + timedelta(seconds=lease_s)
    taken = conn.execute(
        update(review_tasks)
        .where(
            and_(
                t.id == task_id,
                or_(claimable(now), and_(t.status == ReviewStatus.CLAIMED, t.claimed_by == reviewer.key_id)),
            )
        )
        .values(
            status=ReviewStatus.CLAIMED,
            claimed_by=reviewer.key_id,
            claim_token_hash=token_hash(token),
            claimed_at=now,
            lease_until=lease_until,
        )
    ).rowcount
    if not taken:
        return None
    row = conn.execute(select(t.submission_id, t.tenant_id).where(t.id == task_id)).one()
    audit.append(
        conn,
        row.tenant_id,
        [
            audit.Event(
                "claimed",
                actor=reviewer.key_id,
                submission_id=row.submission_id,
                automated=False,
                facts={"review_task_id": task_id, "lease_until": lease_until.isoformat()},
            )
        ],
    )
    return token


def claimed_view(conn: Connection, task_id: str, token: str, now: datetime) -> dict[str, Any]:
    row = conn.execute(select(review_tasks).where(t.id == task_id)).one()
    return {**task_json(row, now), "claim": {"token": token, "expires_at": iso(row.lease_until)}}


def next_task(
    conn: Connection,
    reviewer: Reviewer,
    now: datetime,
    lease_s: float,
    queue: str | None = None,
    prefer_non_graphic: bool = False,
    exclude: str | None = None,
) -> dict[str, Any] | None:
    """Claim the most urgent open task the reviewer may take (None: nothing to do).

    Order: (non-graphic first when the reviewer's exposure budget is spent), priority, due
    time, age. Appeals of submissions the reviewer decided before are never offered."""
    # Golden tasks are made for one moderator at a time (golden.serve), never taken from the pool.
    base = [visible(reviewer), not_(conflicted(reviewer)), t.golden.is_(False)]
    if queue:
        base.append(t.queue == queue)
    if exclude:
        base.append(t.id != exclude)
    order = [t.priority, t.due_at, t.created_at, t.id]
    if prefer_non_graphic:
        order.insert(0, t.graphic)
    # Two index scans (open tasks; claims whose lease ran out) rather than one OR, which would
    # sort the whole table; their heads are merged here.
    states = [t.status == ReviewStatus.OPEN, and_(t.status == ReviewStatus.CLAIMED, t.lease_until < now)]
    for _ in range(3):  # SQLite: a parallel writer may win every candidate of one read
        rows: list[Any] = []
        for state in states:
            stmt = select(t.id, *order).where(and_(state, *base)).order_by(*order).limit(4)
            if conn.dialect.name == "postgresql":
                stmt = stmt.with_for_update(skip_locked=True, of=review_tasks)
            rows += conn.execute(stmt).all()
        if not rows:
            return None
        rows.sort(key=_rank)
        for row in rows:
            token = _take(conn, row.id, reviewer, now, lease_s)
            if token:
                return claimed_view(conn, row.id, token, now)
    return None


_LAST = datetime.max.replace(tzinfo=UTC)


def _rank(row: Any) -> tuple[Any, ...]:
    """The ORDER BY of `next_task`, in Python (a missing due time sorts last)."""
    return tuple(_LAST if v is None else (as_utc(v) if isinstance(v, datetime) else v) for v in row[1:])


def get_task(conn: Connection, reviewer: Reviewer, task_id: str, *, lock: bool = False) -> Any:
    """The task row, if it exists for the reviewer. Raises ModerationError NOT_FOUND otherwise."""
    stmt = select(review_tasks).where(and_(t.id == task_id, t.tenant_id == reviewer.tenant_id))
    if lock and conn.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    row = conn.execute(stmt).first() if TASK_ID.fullmatch(task_id) else None
    if row is None or not may_see(reviewer, row):
        raise ModerationError("NOT_FOUND", f"No review task {task_id[:64]!r}.")
    return row


def check_conflict(conn: Connection, reviewer: Reviewer, row: Any) -> None:
    """Raises ModerationError CONFLICT_OF_INTEREST for an appeal of a submission the reviewer decided."""
    if row.appeal_id is None:
        return
    hit = conn.execute(select(t.id).where(and_(t.id == row.id, conflicted(reviewer)))).first()
    if hit is not None:
        raise ModerationError("CONFLICT_OF_INTEREST")


def claim(conn: Connection, reviewer: Reviewer, task_id: str, now: datetime, lease_s: float) -> dict[str, Any]:
    """Claim one task. Raises NOT_FOUND, TASK_CLOSED, ALREADY_CLAIMED, CONFLICT_OF_INTEREST."""
    row = get_task(conn, reviewer, task_id, lock=True)
    if row.status == ReviewStatus.DONE or (row.golden and row.claimed_by != reviewer.key_id):
        raise ModerationError("TASK_CLOSED")
    check_conflict(conn, reviewer, row)
    token = _take(conn, row.id, reviewer, now, lease_s)
    if token is None:
        raise ModerationError("ALREADY_CLAIMED")
    return claimed_view(conn, row.id, token, now)


def held(conn: Connection, reviewer: Reviewer, task_id: str, token: str | None, now: datetime) -> Any:
    """The task row, locked, if the reviewer holds a live claim proved by `token`.

    Raises NOT_FOUND, TASK_CLOSED, or CLAIM_REQUIRED (no claim, another's, a wrong token, expired)."""
    row = get_task(conn, reviewer, task_id, lock=True)
    if row.status == ReviewStatus.DONE:
        raise ModerationError("TASK_CLOSED")
    live = (
        row.status == ReviewStatus.CLAIMED
        and row.claimed_by == reviewer.key_id
        and row.lease_until is not None
        and as_utc(row.lease_until) > now
    )
    if not live or not token or not hmac.compare_digest(row.claim_token_hash or "", token_hash(str(token))):
        raise ModerationError("CLAIM_REQUIRED")
    return row


def holds(row: Any, reviewer: Reviewer, now: datetime) -> bool:
    """The reviewer holds a live claim on the task (the console's session proves the caller)."""
    return bool(
        row.status == ReviewStatus.CLAIMED
        and row.claimed_by == reviewer.key_id
        and row.lease_until is not None
        and as_utc(row.lease_until) > now
    )


def heartbeat(
    conn: Connection, reviewer: Reviewer, task_id: str, token: str | None, now: datetime, lease_s: float
) -> dict[str, Any]:
    """Extend the caller's lease by `lease_s` from now."""
    row = held(conn, reviewer, task_id, token, now)
    conn.execute(update(review_tasks).where(t.id == row.id).values(lease_until=now + timedelta(seconds=lease_s)))
    return claimed_view(conn, row.id, str(token), now)


def release(conn: Connection, reviewer: Reviewer, task_id: str, token: str | None, now: datetime) -> dict[str, Any]:
    """Give the task back to its queue (skip)."""
    row = held(conn, reviewer, task_id, token, now)
    # A golden task given back is withdrawn, not offered to others.
    status = ReviewStatus.DONE if row.golden else ReviewStatus.OPEN
    conn.execute(
        update(review_tasks)
        .where(t.id == row.id)
        .values(
            status=status,
            claimed_by=None,
            claim_token_hash=None,
            lease_until=None,
            closed_at=now if row.golden else None,
        )
    )
    return task_json(conn.execute(select(review_tasks).where(t.id == row.id)).one(), now)


def expire(conn: Connection, now: datetime) -> int:
    """Write expired leases back to open (beat), withdrawing golden tasks; returns how many."""
    expired = and_(t.status == ReviewStatus.CLAIMED, t.lease_until < now)
    conn.execute(
        update(review_tasks)
        .where(and_(expired, t.golden.is_(True)))
        .values(status=ReviewStatus.DONE, claim_token_hash=None, lease_until=None, closed_at=now)
    )
    return int(
        conn.execute(
            update(review_tasks)
            .where(and_(expired, t.golden.is_(False)))
            .values(status=ReviewStatus.OPEN, claimed_by=None, claim_token_hash=None, lease_until=None)
        ).rowcount
    )
