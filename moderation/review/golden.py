"""Golden items: decided submissions an admin marked with the action a reviewer should reach.
`next` serves them at the configured rate as ordinary-looking tasks, claimed for the moderator
who gets one (never the same item twice to one moderator); the answer is recorded as agreement
or not and changes nothing about the submission."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, exists, func, insert, select

from moderation import audit
from moderation.db.sql import upsert
from moderation.db.tables import AUTOMATED, decisions, golden_answers, golden_items, iso, review_tasks, submissions
from moderation.errors import ModerationError
from moderation.policy import Policy
from moderation.review.leases import claimed_view, token_hash
from moderation.review.reviewer import Reviewer, restricted_submissions
from moderation.review.tasks import is_graphic, priority_of, sla_s
from moderation.vocab import ReviewStatus, TaskKind

ANSWERS = ("allow", "restrict", "block", "escalate")


def mark(
    conn: Connection, tenant_id: str, submission_id: str, expected: object, actor: str, now: datetime
) -> dict[str, Any]:
    """Mark a decided submission as golden. Raises NOT_FOUND, NOT_DECIDED, INVALID_REQUEST."""
    if expected not in ANSWERS:
        raise ModerationError(
            "INVALID_REQUEST", f"expected_action is one of {', '.join(ANSWERS)}.", field="expected_action"
        )
    sub = conn.execute(
        select(submissions.c.id).where(and_(submissions.c.id == submission_id, submissions.c.tenant_id == tenant_id))
    ).first()
    if sub is None:
        raise ModerationError("NOT_FOUND", f"No submission {submission_id[:64]!r}.")
    if conn.execute(select(decisions.c.id).where(decisions.c.submission_id == submission_id)).first() is None:
        raise ModerationError("NOT_DECIDED")
    values = {
        "tenant_id": tenant_id,
        "submission_id": submission_id,
        "expected_action": expected,
        "created_by": actor,
        "created_at": now,
    }
    upsert(conn, golden_items, ["tenant_id", "submission_id"], values)
    audit.append(
        conn,
        tenant_id,
        [
            audit.Event(
                "golden_marked",
                actor=actor,
                submission_id=submission_id,
                automated=False,
                facts={"expected_action": expected},
            )
        ],
    )
    return {"submission_id": submission_id, "expected_action": expected, "created_at": now.isoformat()}


def serve(
    conn: Connection, reviewer: Reviewer, now: datetime, lease_s: float, policies: dict[str, Policy] | None = None
) -> dict[str, Any] | None:
    """Open and claim a golden task for the reviewer (None: no item left for them). It looks like
    the task the item's automated decision would open: its category, graphic flag, queue SLA."""
    if not reviewer.general:
        return None
    dedupe = f"golden:{reviewer.key_id}"
    seen = exists().where(
        and_(review_tasks.c.submission_id == golden_items.c.submission_id, review_tasks.c.dedupe_key == dedupe)
    )
    items = conn.execute(
        select(golden_items, submissions.c.priority, submissions.c.policy_id)
        .join(submissions, submissions.c.id == golden_items.c.submission_id)
        .where(and_(golden_items.c.tenant_id == reviewer.tenant_id, ~seen))
        .order_by(func.random())
        .limit(10)
    ).all()
    # Child-safety material is never a golden item for the general queues.
    restricted = restricted_submissions(conn, [i.submission_id for i in items])
    item = next((i for i in items if i.submission_id not in restricted), None)
    if item is None:
        return None
    policy = (policies or {}).get(item.policy_id)
    auto = conn.execute(
        select(decisions.c.categories).where(
            and_(decisions.c.submission_id == item.submission_id, decisions.c.dedupe_key == AUTOMATED)
        )
    ).first()
    scores = {k: float(v) for k, v in ((auto.categories if auto else None) or {}).items() if isinstance(v, int | float)}
    top = max(scores, key=lambda k: scores[k]) if scores else None
    task_id, token = secrets.token_hex(16), secrets.token_urlsafe(24)
    conn.execute(
        insert(review_tasks).values(
            id=task_id,
            submission_id=item.submission_id,
            tenant_id=reviewer.tenant_id,
            dedupe_key=dedupe,
            kind=TaskKind.REVIEW,
            queue="default",
            reason="threshold",
            status=ReviewStatus.CLAIMED,
            priority=priority_of(top, scores.get(top, 0.0) if top else 0.0, item.priority),
            restricted=False,
            graphic=is_graphic(policy, scores),
            category=top,
            policy_id=item.policy_id,
            golden=True,
            breached=False,
            claimed_by=reviewer.key_id,
            claim_token_hash=token_hash(token),
            claimed_at=now,
            lease_until=now + timedelta(seconds=lease_s),
            # Created "now" like a fresh task, due as its queue's SLA says.
            created_at=now,
            due_at=now + timedelta(seconds=sla_s(policy, "default")),
        )
    )
    return claimed_view(conn, task_id, token, now)


def answer(conn: Connection, reviewer: Reviewer, task: Any, given: str, now: datetime) -> dict[str, Any]:
    """Record a moderator's answer to a golden task (agreement with the expected action)."""
    expected = conn.execute(
        select(golden_items.c.expected_action).where(
            and_(golden_items.c.tenant_id == reviewer.tenant_id, golden_items.c.submission_id == task.submission_id)
        )
    ).scalar()
    expected = str(expected or "")
    agreed = given == expected
    conn.execute(
        insert(golden_answers).values(
            tenant_id=reviewer.tenant_id,
            task_id=task.id,
            submission_id=task.submission_id,
            moderator=reviewer.key_id,
            expected_action=expected,
            given_action=given,
            agreed=agreed,
            answered_at=now,
        )
    )
    audit.append(
        conn,
        reviewer.tenant_id,
        [
            audit.Event(
                "golden_answered",
                actor=reviewer.key_id,
                submission_id=task.submission_id,
                automated=False,
                facts={"review_task_id": task.id, "expected_action": expected, "given_action": given, "agreed": agreed},
            )
        ],
    )
    return {"golden": True, "agreed": agreed}


def agreement(conn: Connection, tenant_id: str) -> list[dict[str, Any]]:
    """Per moderator: golden answers, agreements, rate, last answer."""
    g = golden_answers.c
    rows = conn.execute(
        select(
            g.moderator,
            func.count().label("answered"),
            func.count().filter(g.agreed.is_(True)).label("agreed"),
            func.max(g.answered_at).label("last"),
        )
        .where(g.tenant_id == tenant_id)
        .group_by(g.moderator)
        .order_by(g.moderator)
    ).all()
    return [
        {
            "moderator": r.moderator,
            "answered": int(r.answered),
            "agreed": int(r.agreed),
            "agreement": round(int(r.agreed) / int(r.answered), 4) if r.answered else None,
            "last_answered_at": iso(r.last),
        }
        for r in rows
    ]
