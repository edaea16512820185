"""The append-only, per-tenant hash-chained audit log.

Each event's `body` is canonical JSON (sorted keys, compact, UTF-8) holding every field of the
event, and `row_hash = sha256(prev_hash + "\\n" + body)`. Appends for one tenant serialise on
that tenant's row in `audit_heads` (SELECT ... FOR UPDATE on PostgreSQL; SQLite serialises
writers anyway), so the chain has no forks. On PostgreSQL a trigger rejects UPDATE, DELETE and
TRUNCATE of `audit_events`, another lets a head move only forward, and the services' role may
only insert and read audit rows (see migrations 0001 and 0005); `verify` finds any edit made
around them, and `checkpoint` a rewrite of the whole chain.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, func, insert, select, update

from moderation.db.sql import insert_ignore
from moderation.db.tables import as_utc, audit_events, audit_heads, utcnow

GENESIS = "0" * 64
ACTIONS = (
    "received",
    "rejected",
    "analyzed",
    "decided",
    "routed_to_review",
    "reviewed",
    "appealed",
    "appeal_decided",
    "escalated",
    "media_revealed",
    "golden_marked",
    "golden_answered",
    "statement_submitted",
    "claimed",
    "callback_attempted",
    "statement_rejected",
    "dead_lettered",
    "exported",
    "bank_changed",
    "key_created",
    "key_revoked",
    "key_rotated",
    "tenant_created",
    "tenant_updated",
    "callback_secret_rotated",
    "callback_receivers_changed",
    "ingest_account_created",
    "ingest_account_revoked",
)


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_default)


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def chain_hash(prev_hash: str, body: str) -> str:
    return hashlib.sha256(f"{prev_hash}\n{body}".encode()).hexdigest()


@dataclass
class Event:
    action: str
    actor: str
    submission_id: str | None = None
    category: str | None = None
    automated: bool | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    occurred_at: datetime | None = None


def append(conn: Connection, tenant_id: str, events: list[Event]) -> list[int]:
    """Append `events` to the tenant's chain inside the caller's transaction. Returns their seqs.

    Call it last in a transaction: the head row stays locked until commit.
    """
    if not events:
        return []
    seq, prev = _lock_head(conn, tenant_id)
    now = utcnow()
    rows: list[dict[str, Any]] = []
    for ev in events:
        if ev.action not in ACTIONS:
            raise ValueError(f"unknown audit action {ev.action!r}")
        seq += 1
        occurred = ev.occurred_at or now
        body = canonical(
            {
                "tenant_id": tenant_id,
                "seq": seq,
                "action": ev.action,
                "actor": ev.actor,
                "submission_id": ev.submission_id,
                "category": ev.category,
                "automated": ev.automated,
                "occurred_at": occurred.isoformat(),
                "facts": ev.facts,
            }
        )
        row_hash = chain_hash(prev, body)
        rows.append(
            {
                "tenant_id": tenant_id,
                "seq": seq,
                "occurred_at": occurred,
                "action": ev.action,
                "submission_id": ev.submission_id,
                "category": ev.category,
                "automated": ev.automated,
                "actor": ev.actor,
                "body": body,
                "prev_hash": prev,
                "row_hash": row_hash,
            }
        )
        prev = row_hash
    conn.execute(insert(audit_events), rows)
    conn.execute(update(audit_heads).where(audit_heads.c.tenant_id == tenant_id).values(seq=seq, last_hash=prev))
    return [r["seq"] for r in rows]


def _lock_head(conn: Connection, tenant_id: str) -> tuple[int, str]:
    query = select(audit_heads.c.seq, audit_heads.c.last_hash).where(audit_heads.c.tenant_id == tenant_id)
    row = conn.execute(query.with_for_update()).first()
    if row is None:
        ensure_head(conn, tenant_id)
        row = conn.execute(query.with_for_update()).first()
        assert row is not None
    return int(row.seq), str(row.last_hash)


def ensure_head(conn: Connection, tenant_id: str) -> None:
    """Create the tenant's chain head if missing (concurrent callers: one wins, none fails)."""
    conn.execute(insert_ignore(conn, audit_heads), {"tenant_id": tenant_id, "seq": 0, "last_hash": GENESIS})


def tenants(conn: Connection) -> list[str]:
    """Every tenant that has a chain."""
    return list(conn.execute(select(audit_heads.c.tenant_id).order_by(audit_heads.c.tenant_id)).scalars())


@dataclass
class VerifyResult:
    ok: bool
    checked: int
    first_break: dict[str, Any] | None
    head: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked": self.checked, "first_break": self.first_break, "head": self.head}


def event_json(row: Any) -> dict[str, Any]:
    """An audit row as the API shows it: the hashed body plus its chain links."""
    return {**json.loads(row.body), "id": row.id, "prev_hash": row.prev_hash, "row_hash": row.row_hash}


_COLUMNS = ("tenant_id", "seq", "action", "actor", "submission_id", "category", "automated")


def verify(conn: Connection, tenant_id: str, batch: int = 5000) -> VerifyResult:
    """Walk the tenant's chain from the start and report the first break, if any.

    Checks: seq is contiguous from 1 (a deleted row breaks it), each prev_hash is the previous
    row_hash, each row_hash recomputes from prev_hash and body, the indexed columns agree with
    the body, the head records the last row (a deleted tail breaks it), and no row lies past the
    head (a head moved back to hide rows breaks it). The head is read first and the walk stops at
    it, so appends committed meanwhile are not mistaken for damage. A chain deleted and rebuilt
    with recomputed hashes verifies: a signed checkpoint (moderation.audit.checkpoint) catches that.
    """
    head = conn.execute(select(audit_heads).where(audit_heads.c.tenant_id == tenant_id)).first()
    head_json = {"seq": int(head.seq), "last_hash": head.last_hash} if head else None
    until = int(head.seq) if head is not None else None
    expected_seq, prev, checked = 1, GENESIS, 0
    for row in _walk(conn, tenant_id, batch):
        if until is not None and row.seq > until:
            break
        reason = _check_row(row, expected_seq, prev)
        if reason:
            return VerifyResult(False, checked, {"seq": row.seq, "id": row.id, "reason": reason}, head_json)
        checked += 1
        expected_seq, prev = row.seq + 1, row.row_hash
    last_seq = expected_seq - 1
    if (head is None and last_seq > 0) or (head is not None and (head.seq != last_seq or head.last_hash != prev)):
        return VerifyResult(
            False,
            checked,
            {"seq": last_seq + 1, "id": None, "reason": "chain ends before the recorded head (rows removed)"},
            head_json,
        )
    # Rows past the head: an append writes its rows and moves the head in one transaction, so in
    # any committed state the last row is the head. The last row is read before the head is read
    # again (a head can only have grown meanwhile); a last row beyond it means the head was moved
    # back to hide the rows after it.
    last_row = conn.execute(select(func.max(audit_events.c.seq)).where(audit_events.c.tenant_id == tenant_id)).scalar()
    head_now = conn.execute(select(audit_heads.c.seq).where(audit_heads.c.tenant_id == tenant_id)).scalar()
    if last_row is not None and (head_now is None or int(last_row) > int(head_now)):
        return VerifyResult(
            False,
            checked,
            {
                "seq": last_seq + 1,
                "id": None,
                "reason": f"rows up to seq {last_row} lie past the recorded head (head moved back)",
            },
            head_json,
        )
    return VerifyResult(True, checked, None, head_json)


def _walk(conn: Connection, tenant_id: str, batch: int) -> Iterator[Any]:
    after = 0
    while True:
        rows = conn.execute(
            select(audit_events)
            .where(and_(audit_events.c.tenant_id == tenant_id, audit_events.c.seq > after))
            .order_by(audit_events.c.seq)
            .limit(batch)
        ).all()
        yield from rows
        if len(rows) < batch:
            return
        after = rows[-1].seq


def _check_row(row: Any, expected_seq: int, prev: str) -> str | None:
    if row.seq != expected_seq:
        return f"seq {row.seq} where {expected_seq} was expected (rows removed or inserted)"
    if row.prev_hash != prev:
        return "prev_hash does not match the previous row's row_hash"
    if chain_hash(row.prev_hash, row.body) != row.row_hash:
        return "row_hash does not match the row's content (row edited)"
    try:
        body = json.loads(row.body)
    except ValueError:
        return "body is not JSON"
    for col in _COLUMNS:
        if body.get(col) != getattr(row, col):
            return f"column {col} differs from the hashed body (row edited)"
    if as_utc(row.occurred_at) != as_utc(datetime.fromisoformat(str(body.get("occurred_at")))):
        return "column occurred_at differs from the hashed body (row edited)"
    return None
