"""The reconciler: re-enqueue submissions and callback deliveries that the broker may have lost."""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, select, update

from moderation import callbacks
from moderation.db.tables import as_utc, submissions, utcnow
from moderation.pipeline.context import Context
from moderation.pipeline.findings import stored_findings
from moderation.pipeline.stats import next_queue
from moderation.queue import Q_CALLBACKS, Q_DECIDE, Q_INGEST, T_CALLBACK
from moderation.vocab import ACTIVE

log = logging.getLogger(__name__)


def reconcile(ctx: Context) -> dict[str, int]:
    """Re-enqueue stuck submissions and overdue callback deliveries (the broker may have lost them)."""
    outcome = _reconcile_submissions(ctx)
    # A delivery overdue by the stale window is lost (or its back-off outlived a Celery countdown,
    # or its worker died mid-request) unless the callbacks queue still holds work: past the hard
    # bound it is published anyway, the claim in `callbacks.deliver` makes duplicates harmless.
    s = ctx.settings
    backlog = ctx.publisher.queue_depth(Q_CALLBACKS) not in (0, None)
    late_s = max(s.stale_after_s * 5, s.redelivery_after_s * 2) if backlog else s.stale_after_s
    due = callbacks.overdue(ctx.engine, late_s, s.reconcile_batch)
    for sid in due:
        ctx.publisher.send(T_CALLBACK, [sid], Q_CALLBACKS)
    if due:
        log.warning("reconciler re-published the callbacks of %d submissions", len(due))
    outcome["callbacks"] = len(due)
    return outcome


def _reconcile_submissions(ctx: Context) -> dict[str, int]:
    """Re-enqueue submissions stuck without progress (the broker may have lost them).

    A stale item is re-published when the queues it can be waiting in are empty (nothing can be
    waiting for it: the broker lost its queue, or its worker died) or when it has been stuck past
    the hard bound: five times `stale_after_s`, and at least twice the broker's visibility timeout, so that
    a long GPU backlog (items queued, not lost) does not turn into duplicate deliveries that use
    up attempts. Duplicates are harmless otherwise: each delivery is idempotent.
    """
    now = utcnow()
    s = ctx.settings
    cutoff = now - timedelta(seconds=s.stale_after_s)
    hard_cutoff = now - timedelta(seconds=max(s.stale_after_s * 5, s.redelivery_after_s * 2))
    with ctx.engine.connect() as conn:
        stale = conn.execute(
            select(submissions.c.id, submissions.c.priority, submissions.c.updated_at, submissions.c.policy_id)
            .where(and_(submissions.c.status.in_(ACTIVE), submissions.c.updated_at < cutoff))
            .order_by(submissions.c.updated_at)
            .limit(s.reconcile_batch)
        ).all()
        done = stored_findings(conn, [r.id for r in stale]) if stale else {}
    if not stale:
        return {"stale": 0, "requeued": 0}
    # Anything still waiting in a queue (a long analyzer backlog) is not lost: re-enqueue an item
    # when the queues it can be waiting in are empty (ingest, and the queue of its next stage, or
    # decide), or past the hard limit. A GPU backlog does not hold back a lost CPU-stage item.
    depth_of: dict[str, int | None] = {}

    def depth(queue: str) -> int | None:
        if queue not in depth_of:
            depth_of[queue] = ctx.publisher.queue_depth(queue)
        return depth_of[queue]

    def waiting_in(r: Any) -> list[str]:
        return [Q_INGEST, next_queue(ctx, r.policy_id, {f.stage for f in done.get(r.id, [])}), Q_DECIDE]

    due = [r for r in stale if as_utc(r.updated_at) < hard_cutoff or all(depth(q) == 0 for q in set(waiting_in(r)))]
    if not due:
        return {"stale": len(stale), "requeued": 0}
    ids = [r.id for r in due]
    with ctx.engine.begin() as conn:
        conn.execute(
            update(submissions)
            .where(and_(submissions.c.id.in_(ids), submissions.c.status.in_(ACTIVE)))
            .values(updated_at=now)
        )
    by_priority: dict[str, list[str]] = defaultdict(list)
    for r in due:
        by_priority[r.priority].append(r.id)
    for priority, pids in by_priority.items():
        for k in range(0, len(pids), ctx.settings.ingest_batch_max):
            ctx.publisher.ingest(pids[k : k + ctx.settings.ingest_batch_max], priority)
    known = [d for d in depth_of.values() if d is not None]
    total = sum(known) if len(known) == len(depth_of) else None
    details = " ".join(f"{q}={d}" for q, d in depth_of.items())
    log.warning("reconciler re-enqueued %d stale submissions (pipeline queue depth %s: %s)", len(due), total, details)
    return {"stale": len(stale), "requeued": len(due)}
