"""Signed webhook callbacks to the platform (the receiver is a test double of the platform).

The outbox row is written with the decision; these tests check that a delivery survives a
refusing receiver, a lost broker message, and that the SSRF guard refuses private addresses.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import select

from moderation.db.tables import callback_deliveries, dead_letters, submissions
from moderation.queue import CPU_QUEUES, Q_CALLBACKS
from tests.support.http import auth
from tests.support.images import picture
from tests.support.waiting import wait_until

pytestmark = pytest.mark.services


class Receiver:
    """A platform endpoint that refuses its first `refuse` deliveries (503) and takes the next ones."""

    def __init__(self, refuse: int = 1) -> None:
        self.calls: list[tuple[int, dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = 503 if len(outer.calls) < refuse else 200
                outer.calls.append((status, dict(self.headers), body))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def submit(client: Any, key: str, seed: int, url: str) -> str:
    r = client.post(
        "/v1/submissions",
        headers=auth(key),
        files={"file": ("x.jpg", picture(seed))},
        data={"policy": "hash-only", "external_id": f"cb-{seed}", "callback_url": url},
    )
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def delivered(ctx: Any, sid: str, status: str) -> Any:
    """The submission's outbox row once it has `status` (else None)."""
    row = delivery(ctx, sid)
    return row if row is not None and row.status == status else None


def delivery(ctx: Any, sid: str) -> Any:
    with ctx.engine.connect() as conn:
        return conn.execute(select(callback_deliveries).where(callback_deliveries.c.submission_id == sid)).one_or_none()


def test_decision_is_posted_signed_and_retried(client, keys, ctx, procs) -> None:
    receiver = Receiver(refuse=1)
    try:
        procs.worker()
        sid = submit(client, keys["submitter"], 808, receiver.url)
        wait_until(lambda: len(receiver.calls) >= 2, 60, what="callback retried and delivered")
    finally:
        receiver.close()
    (first, first_headers, _), (second, headers, body) = receiver.calls[:2]
    assert (first, second) == (503, 200)
    payload = json.loads(body)
    assert payload["id"] == sid and payload["external_id"] == "cb-808"
    assert payload["status"] == "decided" and payload["decision"]["action"] == "allow"
    fields = dict(part.split("=", 1) for part in headers["X-Moderation-Signature"].split(","))
    expected = hmac.new(
        ctx.settings.callback_secret.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(fields["v1"], expected)
    # One delivery, two attempts: the receiver dedupes on the delivery id.
    row = wait_until(lambda: delivered(ctx, sid, "delivered"), 30, what="outbox row delivered")
    assert first_headers["X-Moderation-Delivery"] == headers["X-Moderation-Delivery"] == row.id
    assert (first_headers["X-Moderation-Attempt"], headers["X-Moderation-Attempt"]) == ("1", "2")
    assert (row.attempts, row.last_status, row.event) == (2, 200, "automated")
    assert len(receiver.calls) == 2


def test_callback_message_lost_by_the_broker_is_still_delivered(client, keys, ctx, procs, redis_client) -> None:
    receiver = Receiver(refuse=0)
    try:
        # No worker takes the callbacks queue yet: the decision is committed, its wake-up message waits.
        procs.worker(queues=",".join(q for q in CPU_QUEUES if q != Q_CALLBACKS))
        sid = submit(client, keys["submitter"], 809, receiver.url)
        wait_until(lambda: delivery_status(ctx, sid) == "decided", 60, what="decided")
        assert delivery(ctx, sid).status == "pending"
        wait_until(lambda: queued(redis_client, Q_CALLBACKS) >= 1, 10, what="the callback message in Redis")
        redis_client.flushdb()  # what a Redis restart without persistence does to the message
        procs.worker(queues=Q_CALLBACKS)
        procs.beat()
        wait_until(lambda: receiver.calls, 60, what="the reconciler re-published the lost callback")
    finally:
        receiver.close()
    assert json.loads(receiver.calls[0][2])["id"] == sid
    row = wait_until(lambda: delivered(ctx, sid, "delivered"), 30, what="outbox row delivered")
    assert row.attempts == 1


def queued(redis_client: Any, queue: str) -> int:
    """Messages in `queue` over its priority lists (kombu keeps one Redis list per priority step)."""
    keys = [k for k in redis_client.keys(f"{queue}*") if redis_client.type(k) == b"list"]
    return sum(int(redis_client.llen(k)) for k in keys)


def delivery_status(ctx: Any, sid: str) -> str:
    with ctx.engine.connect() as conn:
        return str(conn.execute(select(submissions.c.status).where(submissions.c.id == sid)).scalar_one())


def test_private_destinations_are_refused(client, keys, ctx, procs, monkeypatch) -> None:
    receiver = Receiver(refuse=0)
    try:
        # At submission: a literal private address or localhost is a 422.
        monkeypatch.setattr(ctx.settings, "callback_allow_private", False)
        for url in (receiver.url, f"http://localhost:{receiver.port}/", "http://169.254.169.254/latest/meta-data/"):
            r = client.post(
                "/v1/submissions",
                headers=auth(keys["submitter"]),
                files={"file": ("x.jpg", picture(810))},
                data={"policy": "hash-only", "callback_url": url},
            )
            assert r.status_code == 422, (url, r.text)
            assert r.json()["error"]["code"] == "INVALID_REQUEST"
            assert r.json()["error"]["details"]["field"] == "callback_url"
        monkeypatch.setattr(ctx.settings, "callback_allow_private", True)
        # At delivery: "127.1" is no address literal, but it resolves to 127.0.0.1. Refused, final.
        procs.worker(MODERATION_CALLBACK_ALLOW_PRIVATE="false")
        sid = submit(client, keys["submitter"], 811, f"http://127.1:{receiver.port}/hook")
        row = wait_until(lambda: delivered(ctx, sid, "failed"), 60, what="delivery refused")
    finally:
        receiver.close()
    assert receiver.calls == []
    assert row.attempts == 1 and "127.0.0.1" in row.last_error and "not a public address" in row.last_error
    with ctx.engine.connect() as conn:
        letter = conn.execute(
            select(dead_letters).where(dead_letters.c.submission_id == sid, dead_letters.c.task == "callback")
        ).one()
    assert letter.payload["delivery_id"] == row.id and "refused" in letter.error
    # Operators see it: the failed count is exported.
    lines = client.get("/metrics").text.splitlines()
    failed = [ln for ln in lines if ln.startswith('moderation_callbacks{status="failed"}')]
    assert failed and float(failed[0].split()[-1]) >= 1


def decided_without_workers(client: Any, ctx: Any, key: str, seed: int, url: str) -> str:
    """A decided submission with a pending outbox row, decided in this process (no worker runs)."""
    from moderation.pipeline.advance import advance

    sid = submit(client, key, seed, url)
    advance(ctx, [sid])
    assert delivery_status(ctx, sid) == "decided"
    return sid


def test_attempts_that_never_finished_are_bounded(client, keys, ctx) -> None:
    from moderation import callbacks

    receiver = Receiver(refuse=0)
    try:
        sid = decided_without_workers(client, ctx, keys["submitter"], 812, receiver.url)
        row = delivery(ctx, sid)
        # Every attempt so far was claimed and never finished (workers killed mid-request).
        with ctx.engine.begin() as conn:
            conn.execute(
                callback_deliveries.update()
                .where(callback_deliveries.c.id == row.id)
                .values(attempts=ctx.settings.callback_max_attempts)
            )
        outcome = callbacks.deliver(ctx.engine, ctx.settings, sid)
    finally:
        receiver.close()
    assert outcome == "failed" and receiver.calls == []
    row = delivery(ctx, sid)
    limit = ctx.settings.callback_max_attempts
    assert (row.status, row.attempts, row.last_error) == ("failed", limit, "no attempt finished")
    with ctx.engine.connect() as conn:
        assert conn.execute(select(dead_letters.c.id).where(dead_letters.c.submission_id == sid)).all()


def test_a_stale_attempt_cannot_overwrite_a_newer_one(client, keys, ctx) -> None:
    from moderation import callbacks
    from moderation.callbacks import outbox

    receiver = Receiver(refuse=0)
    try:
        sid = decided_without_workers(client, ctx, keys["submitter"], 813, receiver.url)
        assert callbacks.deliver(ctx.engine, ctx.settings, sid) == "delivered:200"
    finally:
        receiver.close()
    row = delivery(ctx, sid)
    assert (row.status, row.attempts) == ("delivered", 1)
    # An attempt that started earlier and fails late (attempt 1 again) writes nothing.
    assert outbox._give_up(ctx.engine, row, 1, "late failure", 504) == "taken"
    assert delivery(ctx, sid).status == "delivered"
    with ctx.engine.connect() as conn:
        assert not conn.execute(select(dead_letters.c.id).where(dead_letters.c.submission_id == sid)).all()


def verifies(secret: str, headers: dict[str, str], body: bytes) -> list[bool]:
    """For each `v1=` of the signature header: does it verify with `secret`?"""
    parts = [part.split("=", 1) for part in headers["X-Moderation-Signature"].split(",")]
    t = next(v for k, v in parts if k == "t")
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return [hmac.compare_digest(v, mac) for k, v in parts if k == "v1"]


def test_tenant_secret_rotation_keeps_the_old_signature_for_the_grace_period(client, ctx, monkeypatch) -> None:
    from moderation import callbacks
    from moderation.access.keys import create_key
    from moderation.db.tables import audit_events

    with ctx.engine.begin() as conn:
        admin = create_key(conn, "hooks-co", ["admin"])
        submitter = create_key(conn, "hooks-co", ["submitter"])
    assert client.post("/v1/callbacks/secret", headers=auth(submitter)).status_code == 403
    r = client.post("/v1/callbacks/secret", headers=auth(admin))
    assert r.status_code == 200, r.text
    secret = r.json()["secret"]
    assert secret.startswith("whsec_") and r.json()["previous_valid_until"]

    receiver = Receiver(refuse=0)
    try:
        sid = decided_without_workers(client, ctx, submitter, 815, receiver.url)
        assert callbacks.deliver(ctx.engine, ctx.settings, sid) == "delivered:200"
        # Past the grace period only the tenant's own secret signs.
        monkeypatch.setattr(ctx.settings, "callback_secret_grace_s", 0)
        later = decided_without_workers(client, ctx, submitter, 816, receiver.url)
        assert callbacks.deliver(ctx.engine, ctx.settings, later) == "delivered:200"
    finally:
        receiver.close()
    (_, during, body), (_, after, body2) = receiver.calls
    assert verifies(secret, during, body) == [True, False]
    assert verifies(ctx.settings.callback_secret, during, body) == [False, True]  # the deployment's, before
    assert verifies(secret, after, body2) == [True]
    with ctx.engine.connect() as conn:
        bodies = conn.execute(
            select(audit_events.c.body).where(
                audit_events.c.tenant_id == "hooks-co", audit_events.c.action == "callback_secret_rotated"
            )
        ).all()
    assert len(bodies) == 1 and secret not in bodies[0].body  # audited, never stored in the log
