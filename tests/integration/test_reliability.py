"""Nothing accepted is lost: worker killed with -9, broker queue lost, broker restarted, poison inputs,
Postgres restart. On Redis and on RabbitMQ alike (TEST_BROKER, tests.support.broker)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import Any

import pytest
from sqlalchemy import func, select

from moderation.db.tables import audit_events, dead_letters, decisions, findings, submissions
from tests.support.http import auth
from tests.support.images import picture
from tests.support.waiting import wait_until

pytestmark = pytest.mark.services


def post(client: Any, key: str, seed: int, **fields: str) -> str:
    r = client.post("/v1/submissions", headers=auth(key), files={"file": ("x.jpg", picture(seed))}, data=fields)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def statuses(ctx: Any, ids: list[str]) -> dict[str, str]:
    with ctx.engine.connect() as conn:
        rows = conn.execute(select(submissions.c.id, submissions.c.status).where(submissions.c.id.in_(ids))).all()
    return {r.id: r.status for r in rows}


def analyzed(ctx: Any, ids: list[str], stage: str = "caption") -> int:
    """How many of `ids` have the stage's finding stored."""
    with ctx.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).where(findings.c.submission_id.in_(ids), findings.c.stage == stage)
            ).scalar_one()
        )


def all_final(ctx: Any, ids: list[str]) -> bool:
    return all(s in ("decided", "in_review") for s in statuses(ctx, ids).values())


def assert_exactly_one_automated_decision(ctx: Any, ids: list[str]) -> None:
    with ctx.engine.connect() as conn:
        counts = dict(
            conn.execute(
                select(decisions.c.submission_id, func.count())
                .where(decisions.c.submission_id.in_(ids), decisions.c.automated.is_(True))
                .group_by(decisions.c.submission_id)
            ).all()
        )
        decided_events = dict(
            conn.execute(
                select(audit_events.c.submission_id, func.count())
                .where(audit_events.c.submission_id.in_(ids), audit_events.c.action == "decided")
                .group_by(audit_events.c.submission_id)
            ).all()
        )
    assert set(counts) == set(ids), f"{len(set(ids) - set(counts))} submissions have no decision"
    assert set(counts.values()) == {1}
    assert decided_events == dict.fromkeys(ids, 1)


def chain_ok(client: Any, keys: dict[str, str]) -> None:
    verify = client.get("/v1/audit/verify", headers=auth(keys["auditor"])).json()
    assert verify["ok"], verify


def test_worker_killed_with_sigkill_mid_run_loses_nothing(client, keys, ctx, procs) -> None:
    # A slow model stage keeps items in flight when the worker dies: ~10 s of work on two
    # processes, all queued before the worker starts (on a busy machine posting can be slower
    # than the worker), so the kill lands mid-run however slow the machine is.
    ids = [post(client, keys["submitter"], 1000 + i, policy="test-cascade", caption="sleep=0.5") for i in range(40)]
    worker = procs.worker(concurrency=2)
    # Progress is read from the stage's findings: decisions come in groups (decide tasks queue
    # behind the analyze tasks), so "some decided" can mean "all decided".
    wait_until(lambda: analyzed(ctx, ids) >= 3, 120, what="some analyzed")
    assert analyzed(ctx, ids) < len(ids), "the run ended before the kill: nothing was in flight"
    worker.kill9()
    in_flight = [i for i, s in statuses(ctx, ids).items() if s in ("queued", "analyzing")]
    assert in_flight
    procs.worker(concurrency=2)
    procs.beat()
    wait_until(lambda: all_final(ctx, ids), 180, what="all decided after the kill")
    assert_exactly_one_automated_decision(ctx, ids)
    chain_ok(client, keys)


def test_broker_restart_mid_run_loses_nothing(client, keys, ctx, procs, broker) -> None:
    """The broker server stops and starts while items are queued and in flight. RabbitMQ keeps
    its durable queues and persistent messages, and redelivers what was unacknowledged when the
    connections dropped; Redis (no persistence here) comes back empty, and the reconciler
    re-enqueues from PostgreSQL. Either way: every item decided exactly once, the chain intact."""
    ids = [post(client, keys["submitter"], 1100 + i, policy="test-cascade", caption="sleep=0.3") for i in range(30)]
    worker = procs.worker(concurrency=2)
    beat = procs.beat()
    wait_until(lambda: analyzed(ctx, ids) >= 3, 120, what="some analyzed")
    assert analyzed(ctx, ids) < len(ids), "the run ended before the restart: nothing was in flight"
    broker.restart()
    time.sleep(5)
    if broker.kind == "redis":
        # A Celery worker may exit when Redis restarts under it (kombu 5.7 with redis-py 8.1,
        # docs/RELIABILITY.md); its supervisor (`moderation up`, compose, Kubernetes) starts it
        # again, which is what happens here.
        if worker.p.poll() is not None:
            procs.worker(concurrency=2)
        if beat.p.poll() is not None:
            procs.beat()
    else:  # RabbitMQ's clients reconnect by themselves
        assert worker.p.poll() is None and beat.p.poll() is None, "a process died with the RabbitMQ restart"
    # Submissions keep being accepted once the broker is back (the API's publisher reconnects).
    ids += [post(client, keys["submitter"], 1150 + i, policy="test-cascade", caption="sleep=0.1") for i in range(5)]
    wait_until(lambda: all_final(ctx, ids), 240, what="all decided after the broker restart")
    assert_exactly_one_automated_decision(ctx, ids)
    chain_ok(client, keys)


def test_decisions_do_not_wait_for_the_analyzer_backlog(client, keys, ctx, procs) -> None:
    """A worker takes finishing work (decide) before new analyzer work: the first items are decided
    while later ones still wait for their analysis, not all at once when the backlog has drained."""
    ids = [post(client, keys["submitter"], 1100 + i, policy="test-cascade", caption="sleep=0.3") for i in range(12)]
    procs.worker(concurrency=2)
    wait_until(lambda: all_final(ctx, ids), 120, what="all decided")
    with ctx.engine.connect() as conn:
        first_decided = conn.execute(
            select(func.min(decisions.c.decided_at)).where(decisions.c.submission_id.in_(ids))
        ).scalar_one()
        caption = findings.c.stage == "caption"
        last_analyzed = conn.execute(
            select(func.max(findings.c.created_at)).where(findings.c.submission_id.in_(ids), caption)
        ).scalar_one()
    assert first_decided < last_analyzed


def test_broker_losing_its_queue_loses_nothing(client, keys, ctx, procs, broker) -> None:
    ids = [post(client, keys["submitter"], 2000 + i, policy="hash-only") for i in range(30)]

    def all_published() -> bool:
        return set(ids) <= {sid for message in broker.ingest_messages() for sid in message}

    # The API groups ids into few messages: wait until the last group has gone out too.
    wait_until(all_published, 30, what="every id in an ingest message in the broker")
    broker.lose_everything()  # what a Redis restart without persistence does to our queues
    assert broker.queued("ingest") == 0
    assert set(statuses(ctx, ids).values()) == {"queued"}
    worker = procs.worker()
    procs.beat()
    wait_until(lambda: all_final(ctx, ids), 120, what="all decided after the queue was lost")
    # Recovered at once because the broker said its queue was empty, not by the hard time limit.
    assert "pipeline queue depth 0" in worker.text()
    assert_exactly_one_automated_decision(ctx, ids)
    assert set(statuses(ctx, ids).values()) == {"decided"}
    chain_ok(client, keys)


@pytest.mark.parametrize("how", ["crash", "fatal"])  # killed by the input; or exits: analyzer unusable
def test_poison_input_is_dead_lettered_and_fails_closed(client, keys, ctx, procs, how) -> None:
    worker = procs.worker(concurrency=1)
    seed = 3000 if how == "crash" else 3010
    poison = post(client, keys["submitter"], seed, policy="test-cascade", caption=how)
    wait_until(lambda: all_final(ctx, [poison]), 120, what="poison item given up")
    with ctx.engine.connect() as conn:
        d = conn.execute(select(decisions).where(decisions.c.submission_id == poison)).one()
        letters = conn.execute(select(dead_letters).where(dead_letters.c.submission_id == poison)).all()
    assert d.action == "review"  # fail closed, never allow
    assert "exhausted_retries" in [r["code"] for r in d.reasons]
    assert len(letters) == 1 and letters[0].attempts == ctx.settings.max_attempts + 3
    assert statuses(ctx, [poison])[poison] == "in_review"
    # The worker survived its children being killed and still works.
    assert worker.p.poll() is None
    good = post(client, keys["submitter"], seed + 1, policy="test-cascade", caption="")
    wait_until(lambda: all_final(ctx, [good]), 60, what="next item decided")
    assert statuses(ctx, [good])[good] == "decided"


def _pg_cluster() -> tuple[str, str] | None:
    if not shutil.which("pg_ctlcluster") or not os.path.isdir("/etc/postgresql"):
        return None
    versions = sorted(os.listdir("/etc/postgresql"))
    return (versions[-1], "main") if versions else None


def test_postgres_restart_loses_nothing(client, keys, ctx, procs) -> None:
    cluster = _pg_cluster()
    if cluster is None:
        pytest.skip("pg_ctlcluster is not available: cannot restart PostgreSQL here")
    procs.worker(concurrency=2)
    procs.beat()
    ids = [post(client, keys["submitter"], 4000 + i, policy="test-cascade", caption="sleep=0.1") for i in range(20)]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, "restart", "-m", "fast"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    # While it restarts, the API answers 503 or 202, never 500. Probed at least five times, then
    # until it accepts again (wait_until spaces the probes).
    answers: list[int] = []

    def probe() -> bool:
        r = client.post(
            "/v1/submissions",
            headers=auth(keys["submitter"]),
            files={"file": ("x.jpg", picture(4100 + len(answers)))},
            data={"policy": "hash-only"},
        )
        assert r.status_code in (202, 503), r.text
        answers.append(r.status_code)
        if r.status_code == 202:
            ids.append(r.json()["id"])
        return len(answers) >= 5 and r.status_code == 202

    wait_until(probe, 60, what="the API accepting submissions again after the restart")
    wait_until(lambda: _db_up(ctx), 60, what="PostgreSQL back")
    wait_until(lambda: all_final(ctx, ids), 180, what="all decided after the restart")
    assert_exactly_one_automated_decision(ctx, ids)
    chain_ok(client, keys)


def _db_up(ctx: Any) -> bool:
    try:
        with ctx.engine.connect() as conn:
            conn.execute(select(1))
        return True
    except Exception:
        return False
