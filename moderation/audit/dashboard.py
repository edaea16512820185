"""The transparency dashboard's figures for one tenant over a window of days: decisions per day
by action and by category, automated vs human share, override, appeal and reversal rates, review
SLA attainment per queue, median time to decision, golden-item agreement per moderator."""

from __future__ import annotations

import statistics
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, func, select

from moderation.db.tables import (
    AUTOMATED,
    appeals,
    as_utc,
    audit_events,
    decisions,
    golden_answers,
    review_tasks,
    submissions,
)

RESTRICTIVE = ("block", "restrict")


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def figures(conn: Connection, tenant_id: str, now: datetime, days: int = 30) -> dict[str, Any]:
    since = now - timedelta(days=days)
    d, s = decisions.c, submissions.c
    mine = and_(s.tenant_id == tenant_id, d.decided_at >= since, s.source != "play")  # playground trials left out
    joined = decisions.join(submissions, s.id == d.submission_id)
    day = func.date(d.decided_at)
    per_day: dict[str, dict[str, int]] = {}
    for when, action, n in conn.execute(
        select(day, d.action, func.count()).select_from(joined).where(mine).group_by(day, d.action).order_by(day)
    ).all():
        per_day.setdefault(str(when), {})[str(action)] = int(n)
    by_category = {
        str(c): int(n)
        for c, n in conn.execute(
            select(audit_events.c.category, func.count())
            .where(
                and_(
                    audit_events.c.tenant_id == tenant_id,
                    audit_events.c.action.in_(("decided", "reviewed")),
                    audit_events.c.occurred_at >= since,
                    audit_events.c.category.isnot(None),
                )
            )
            .group_by(audit_events.c.category)
            .order_by(func.count().desc())
        ).all()
    }
    share = dict(
        (bool(a), int(n))
        for a, n in conn.execute(
            select(d.automated, func.count()).select_from(joined).where(mine).group_by(d.automated)
        )
    )
    auto = decisions.alias("auto")
    human_rows = conn.execute(
        select(d.action, auto.c.action)
        .select_from(joined.join(auto, and_(auto.c.submission_id == d.submission_id, auto.c.dedupe_key == AUTOMATED)))
        .where(and_(mine, d.automated.is_(False)))
    ).all()
    # A human decision "overrides" when it differs from what the machine would have done:
    # for a hand-over (review, escalate) the machine decided nothing, so only QA disagreements count.
    overrides = sum(1 for h, a in human_rows if a not in ("review", "escalate") and h != a)
    qa_like = sum(1 for _, a in human_rows if a not in ("review", "escalate"))
    restrictive = sum(n for actions in per_day.values() for a, n in actions.items() if a in RESTRICTIVE)
    ap = appeals.c
    filed = int(
        conn.execute(select(func.count()).where(and_(ap.tenant_id == tenant_id, ap.created_at >= since))).scalar_one()
    )
    outcomes = dict(
        (str(o), int(n))
        for o, n in conn.execute(
            select(ap.outcome, func.count())
            .where(and_(ap.tenant_id == tenant_id, ap.decided_at >= since, ap.outcome.isnot(None)))
            .group_by(ap.outcome)
        )
    )
    t = review_tasks.c
    sla = []
    for queue, done, on_time in conn.execute(
        select(t.queue, func.count(), func.count().filter(t.closed_at <= t.due_at))
        .where(and_(t.tenant_id == tenant_id, t.status == "done", t.closed_at >= since, t.golden.is_(False)))
        .group_by(t.queue)
        .order_by(t.queue)
    ):
        sla.append({"queue": queue, "done": int(done), "on_time": int(on_time), "attainment": _rate(on_time, done)})
    latency: dict[str, float | None] = {}
    for label, automated in (("automated", True), ("human", False)):
        rows = conn.execute(
            select(s.created_at, d.decided_at)
            .select_from(joined)
            .where(and_(mine, d.automated.is_(automated)))
            .order_by(d.id.desc())
            .limit(5000)
        ).all()
        spans = [(as_utc(b) - as_utc(a)).total_seconds() for a, b in rows if a and b]
        latency[label] = round(statistics.median(spans), 3) if spans else None
    g = golden_answers.c
    golden = [
        {"moderator": m, "answered": int(n), "agreed": int(ok), "agreement": _rate(int(ok), int(n))}
        for m, n, ok in conn.execute(
            select(g.moderator, func.count(), func.count().filter(g.agreed.is_(True)))
            .where(g.tenant_id == tenant_id)
            .group_by(g.moderator)
            .order_by(g.moderator)
        )
    ]
    total = share.get(True, 0) + share.get(False, 0)
    decided_appeals = sum(outcomes.values())
    return {
        "days": days,
        "since": since.isoformat(),
        "per_day": per_day,
        "by_category": by_category,
        "automated": share.get(True, 0),
        "human": share.get(False, 0),
        "human_share": _rate(share.get(False, 0), total),
        "override_rate": _rate(overrides, qa_like),
        "appeal_rate": _rate(filed, restrictive),
        "reversal_rate": _rate(outcomes.get("reversed", 0) + outcomes.get("modified", 0), decided_appeals),
        "appeals": {"filed": filed, **outcomes},
        "sla": sla,
        "median_seconds_to_decision": latency,
        "golden": golden,
    }
