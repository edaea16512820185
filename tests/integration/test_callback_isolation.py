"""Callbacks run on their own queue and worker pool: receivers that drip their answer a byte at a
time, or never answer, hold callback threads only, never the slots that ingest needs."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import select

from moderation.db.tables import callback_deliveries, submissions
from moderation.queue import CPU_QUEUES, Q_CALLBACKS
from tests.support.http import auth, submit
from tests.support.images import picture
from tests.support.receivers import DripReceiver, callbacks_worker
from tests.support.waiting import wait_until

pytestmark = pytest.mark.services

# Long enough that a receiver dripping a byte a second holds an attempt for a minute (3x this).
TIMEOUT_S = "20"


def status(ctx: Any, sid: str) -> str:
    with ctx.engine.connect() as conn:
        return str(conn.execute(select(submissions.c.status).where(submissions.c.id == sid)).scalar_one())


def delivery_status(ctx: Any, sid: str) -> str:
    with ctx.engine.connect() as conn:
        c = callback_deliveries.c
        return str(conn.execute(select(c.status).where(c.submission_id == sid)).scalar_one())


def test_slow_receivers_do_not_delay_a_hash_only_decision(client, ctx, procs) -> None:
    from moderation import callbacks
    from moderation.access.keys import create_key

    with ctx.engine.begin() as conn:
        key = create_key(conn, "iso-hooks", ["submitter"])
        callbacks.set_receiver_rules(conn, "iso-hooks", callbacks.ReceiverRules.parse(True, ["127.0.0.0/8"]), "test")
    drip, silent = DripReceiver(every=1.0), DripReceiver(every=1.0, silent=True)
    try:
        # The processes `moderation up` (and compose) run: the CPU worker on its queues, which
        # do not include callbacks, and the callbacks worker, a thread pool.
        assert Q_CALLBACKS not in CPU_QUEUES
        procs.worker(MODERATION_CALLBACK_TIMEOUT_S=TIMEOUT_S)
        callbacks_worker(procs, MODERATION_CALLBACK_TIMEOUT_S=TIMEOUT_S)
        hooked = [
            submit(client, key, picture(900 + i), policy="hash-only", callback_url=(drip, silent)[i % 2].url)["id"]
            for i in range(8)
        ]
        # Receivers hold deliveries now (more of them than the CPU worker has slots).
        wait_until(lambda: drip.accepted + silent.accepted >= 4, 60, what="callbacks held by slow receivers")
        started = time.monotonic()
        probe = submit(client, key, picture(950), policy="hash-only")["id"]
        wait_until(lambda: status(ctx, probe) == "decided", 15, what="the hash-only decision beside slow callbacks")
        took = time.monotonic() - started
        # Nothing was delivered, nothing finished: the slow receivers are still holding on.
        assert all(delivery_status(ctx, sid) == "pending" for sid in hooked)
    finally:
        drip.close()
        silent.close()
    assert took < 10, f"a hash-only decision took {took:.1f} s while receivers were slow"
    assert client.get(f"/v1/submissions/{probe}", headers=auth(key)).json()["decision"]["action"] == "allow"
