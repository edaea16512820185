"""Submission priority reaches the broker as its own kind of priority (issue 14): Redis' priority
steps serve the lowest number first, RabbitMQ's priority queues the highest; on both, `high`
items queued behind a backlog of `low` ones are analyzed first."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from moderation.db.tables import findings
from tests.support.http import submit, wait_final
from tests.support.images import picture
from tests.support.waiting import wait_until

pytestmark = pytest.mark.services


def test_high_priority_overtakes_a_low_priority_backlog(client, keys, ctx, procs, broker) -> None:
    key = keys["submitter"]

    def post(seed: int, priority: str) -> str:
        return str(
            submit(client, key, picture(seed), policy="test-cascade", caption="sleep=0.2", priority=priority)["id"]
        )

    low = [post(6100 + i, "low") for i in range(10)]
    high = [post(6200 + i, "high") for i in range(3)]
    wait_until(lambda: broker.queued("ingest") >= 1, 10, what="the backlog queued")
    procs.worker(concurrency=1)  # one slot: the broker's order is the order of the work
    for sid in low + high:
        wait_final(client, key, sid, timeout=120)
    with ctx.engine.connect() as conn:
        rows = conn.execute(
            select(findings.c.submission_id, findings.c.created_at).where(
                findings.c.submission_id.in_(low + high), findings.c.stage == "caption"
            )
        ).all()
    at = {r.submission_id: r.created_at for r in rows}
    low_times = sorted(at[s] for s in low)
    assert max(at[s] for s in high) < low_times[len(low) // 2], (
        f"high analyzed at ranks {sorted(sorted(at.values()).index(at[s]) for s in high)} of {len(at)}"
    )
