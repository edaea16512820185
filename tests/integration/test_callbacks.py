"""Signed webhook callbacks to the platform (the receiver is a test double of the platform).

The outbox row is written with the decision; these tests check that a delivery survives a
refusing receiver and a lost broker message, runs on its own worker, that each tenant signs with
its own secret over the delivery id, and that the SSRF guard follows each tenant's receiver rules
at submission and at delivery, whatever the name's IDNA reading or a second DNS answer.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import socket
import subprocess
import sys
from typing import Any

import pytest
from sqlalchemy import select, text

from moderation.db.tables import audit_events, callback_deliveries, dead_letters, submissions, tenants
from moderation.queue import CPU_QUEUES, Q_CALLBACKS
from tests.support.http import auth
from tests.support.images import picture
from tests.support.paths import REPO
from tests.support.receivers import FakeDNS, Receiver, answers_in_turn, callbacks_worker
from tests.support.services import scratch_database
from tests.support.waiting import wait_until

pytestmark = pytest.mark.services

PUBLIC = "93.184.215.14"


@pytest.fixture(scope="module")
def hooks(ctx: Any) -> dict[str, str]:
    """Keys of three tenants. `hooks` lets its receivers use plain http on 127.0.0.0/8 (where the
    test receivers listen); `hooks-http` allows plain http but no private network; `hooks-strict`
    keeps the defaults (https only, public addresses only)."""
    from moderation import callbacks
    from moderation.access.keys import create_key

    with ctx.engine.begin() as conn:
        keys = {
            "submitter": create_key(conn, "hooks", ["submitter"]),
            "admin": create_key(conn, "hooks", ["admin"]),
            "http": create_key(conn, "hooks-http", ["submitter"]),
            "strict": create_key(conn, "hooks-strict", ["submitter"]),
            "strict-admin": create_key(conn, "hooks-strict", ["admin"]),
        }
        callbacks.set_receiver_rules(conn, "hooks", callbacks.ReceiverRules.parse(True, ["127.0.0.0/8"]), "test")
        callbacks.set_receiver_rules(conn, "hooks-http", callbacks.ReceiverRules.parse(True, []), "test")
    return keys


def post(client: Any, key: str, seed: int, url: str) -> Any:
    return client.post(
        "/v1/submissions",
        headers=auth(key),
        files={"file": ("x.jpg", picture(seed))},
        data={"policy": "hash-only", "external_id": f"cb-{seed}", "callback_url": url},
    )


def submit(client: Any, key: str, seed: int, url: str) -> str:
    r = post(client, key, seed, url)
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def delivered(ctx: Any, sid: str, status: str) -> Any:
    """The submission's outbox row once it has `status` (else None)."""
    row = delivery(ctx, sid)
    return row if row is not None and row.status == status else None


def delivery(ctx: Any, sid: str) -> Any:
    with ctx.engine.connect() as conn:
        return conn.execute(select(callback_deliveries).where(callback_deliveries.c.submission_id == sid)).one_or_none()


def verifies(secret: str, headers: dict[str, str], body: bytes, delivery_id: str | None = None) -> list[bool]:
    """For each `v1=` of the signature header: does it verify with `secret` over "t.delivery.body"?"""
    parts = [part.split("=", 1) for part in headers["X-Moderation-Signature"].split(",")]
    t = next(v for k, v in parts if k == "t")
    signed = f"{t}.{headers['X-Moderation-Delivery'] if delivery_id is None else delivery_id}.".encode() + body
    mac = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return [hmac.compare_digest(v, mac) for k, v in parts if k == "v1"]


def test_decision_is_posted_signed_and_retried(client, hooks, ctx, procs) -> None:
    r = client.post("/v1/callbacks/secret", headers=auth(hooks["admin"]))
    assert r.status_code == 200, r.text
    secret = r.json()["secret"]
    receiver = Receiver(refuse=1)
    try:
        procs.worker()
        callbacks_worker(procs)
        sid = submit(client, hooks["submitter"], 808, receiver.url)
        wait_until(lambda: len(receiver.calls) >= 2, 60, what="callback retried and delivered")
    finally:
        receiver.close()
    (first, first_headers, _), (second, headers, body) = receiver.calls[:2]
    assert (first, second) == (503, 200)
    payload = json.loads(body)
    assert payload["id"] == sid and payload["external_id"] == "cb-808"
    assert payload["status"] == "decided" and payload["decision"]["action"] == "allow"
    # Signed with the tenant's own secret over timestamp, delivery id and body.
    assert verifies(secret, headers, body)[0] is True
    assert not any(verifies(secret, headers, body, delivery_id="0" * 32))  # another delivery's id
    t = headers["X-Moderation-Signature"].split(",")[0].removeprefix("t=")
    old_form = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    assert old_form not in headers["X-Moderation-Signature"]
    # One delivery, two attempts: the receiver dedupes on the delivery id.
    row = wait_until(lambda: delivered(ctx, sid, "delivered"), 30, what="outbox row delivered")
    assert first_headers["X-Moderation-Delivery"] == headers["X-Moderation-Delivery"] == row.id
    assert (first_headers["X-Moderation-Attempt"], headers["X-Moderation-Attempt"]) == ("1", "2")
    assert (row.attempts, row.last_status, row.event) == (2, 200, "automated")
    assert len(receiver.calls) == 2


def test_callback_message_lost_by_the_broker_is_still_delivered(client, hooks, ctx, procs, broker) -> None:
    receiver = Receiver(refuse=0)
    try:
        # The CPU worker never takes the callbacks queue: the decision is committed, its wake-up waits.
        assert Q_CALLBACKS not in CPU_QUEUES
        procs.worker()
        sid = submit(client, hooks["submitter"], 809, receiver.url)
        wait_until(lambda: delivery_status(ctx, sid) == "decided", 60, what="decided")
        assert delivery(ctx, sid).status == "pending"
        wait_until(lambda: broker.queued(Q_CALLBACKS) >= 1, 10, what="the callback message in the broker")
        broker.lose_everything()  # what a Redis restart without persistence does to the message
        callbacks_worker(procs)
        procs.beat()
        wait_until(lambda: receiver.calls, 60, what="the reconciler re-published the lost callback")
    finally:
        receiver.close()
    assert json.loads(receiver.calls[0][2])["id"] == sid
    row = wait_until(lambda: delivered(ctx, sid, "delivered"), 30, what="outbox row delivered")
    assert row.attempts == 1


def delivery_status(ctx: Any, sid: str) -> str:
    with ctx.engine.connect() as conn:
        return str(conn.execute(select(submissions.c.status).where(submissions.c.id == sid)).scalar_one())


def refused_at_submission(client: Any, key: str, url: str) -> None:
    r = post(client, key, 810, url)
    assert r.status_code == 422, (url, r.text)
    assert r.json()["error"]["code"] == "INVALID_REQUEST"
    assert r.json()["error"]["details"]["field"] == "callback_url"


def test_receiver_rules_are_per_tenant_at_submission(client, hooks) -> None:
    port = 9
    for url in (
        f"http://127.0.0.1:{port}/",  # plain http and loopback: neither allowed
        f"https://127.0.0.1:{port}/",
        f"https://localhost:{port}/",
        "https://169.254.169.254/latest/meta-data/",
        "https://[fd00:ec2::254]/",
        "http://hooks.example.com/",  # plain http to a public name
        f"https://127.1:{port}/",  # the resolver's reading of it is loopback
    ):
        refused_at_submission(client, hooks["strict"], url)
    # `hooks` lists 127.0.0.0/8 and allows http; other private and metadata addresses stay refused.
    for url in ("http://10.0.0.1/", "http://169.254.169.254/", "http://[::1]:9/", "http://192.168.1.1/"):
        refused_at_submission(client, hooks["submitter"], url)
    assert post(client, hooks["submitter"], 811, f"http://127.0.0.1:{port}/hook").status_code == 202
    # Another tenant's list does not help: hooks-http may use http, not 127.0.0.0/8.
    refused_at_submission(client, hooks["http"], f"http://127.0.0.1:{port}/hook")
    assert post(client, hooks["strict"], 812, "https://hooks.example.com/x").status_code == 202


def test_a_name_resolving_to_a_private_address_is_refused_at_delivery(client, hooks, ctx, procs) -> None:
    # A name (accepted at submission) that resolves to loopback on this machine.
    from moderation.callbacks import address_allowed

    name = socket.gethostname()
    found = {ipaddress.ip_address(info[4][0]) for info in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}
    assert found and not any(address_allowed(ip) for ip in found), f"{name} must resolve to a non-public address"
    receiver = Receiver(refuse=0)
    try:
        procs.worker()
        callbacks_worker(procs)
        sid = submit(client, hooks["http"], 813, f"http://{name}:{receiver.port}/hook")
        row = wait_until(lambda: delivered(ctx, sid, "failed"), 60, what="delivery refused")
    finally:
        receiver.close()
    assert receiver.calls == []
    assert row.attempts == 1 and "not a public address nor in this tenant's networks" in row.last_error
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


@pytest.mark.parametrize(
    ("seed", "host", "idna2003", "idna2008"),
    [
        (821, "ß.example", "ss.example", "xn--zca.example"),
        (822, "ς.example", "xn--4xa.example", "xn--3xa.example"),
        (823, "क्\u200dष.example", "xn--11b2ezc.example", "xn--11b2ezcw70k.example"),
        (824, "ß\uff0eexample", "ss.example", "xn--zca.example"),
    ],
)
def test_idna_divergent_host_to_a_private_address_is_refused_at_delivery(
    client, hooks, ctx, monkeypatch, seed, host, idna2003, idna2008
) -> None:
    from moderation import callbacks

    # Python's codec (IDNA 2003) reads the name as a public host; the name the request uses
    # (IDNA 2008, as httpx encodes it) points at the receiver on loopback.
    monkeypatch.setattr(socket, "getaddrinfo", FakeDNS({idna2003: [PUBLIC], idna2008: ["127.0.0.1"]}))
    receiver = Receiver(refuse=0)
    try:
        refused = decided_without_workers(client, ctx, hooks["http"], seed, f"http://{host}:{receiver.port}/hook")
        assert callbacks.deliver(ctx.engine, ctx.settings, refused) == "failed"
        assert receiver.calls == []
        assert "127.0.0.1" in delivery(ctx, refused).last_error
        # The tenant whose networks hold the receiver gets it, on the IDNA 2008 name.
        allowed = decided_without_workers(client, ctx, hooks["submitter"], seed, f"http://{host}:{receiver.port}/hook")
        assert callbacks.deliver(ctx.engine, ctx.settings, allowed) == "delivered:200"
    finally:
        receiver.close()
    assert receiver.calls[0][1]["Host"] == f"{idna2008}:{receiver.port}"


def test_rebinding_after_the_check_does_not_move_the_request(client, hooks, ctx, monkeypatch) -> None:
    from moderation import callbacks

    dns = FakeDNS({"rebind.example": answers_in_turn([PUBLIC], ["127.0.0.1"])})
    monkeypatch.setattr(socket, "getaddrinfo", dns)
    connects: list[str] = []
    real = socket.create_connection

    def create_connection(address: Any, *args: Any, **kw: Any) -> socket.socket:
        connects.append(str(address[0]))
        if address[0] != "127.0.0.1":
            raise ConnectionRefusedError("test: not reachable")
        return real(address, *args, **kw)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    receiver = Receiver(refuse=0)
    try:
        sid = decided_without_workers(client, ctx, hooks["http"], 830, f"http://rebind.example:{receiver.port}/h")
        with pytest.raises(callbacks.CallbackFailed):  # the checked (public) address did not answer: retried
            callbacks.deliver(ctx.engine, ctx.settings, sid)
    finally:
        receiver.close()
    assert receiver.calls == [] and connects == [PUBLIC]
    assert dns.asked == ["rebind.example"]
    assert "ConnectError" in delivery(ctx, sid).last_error


def test_attempts_that_never_finished_are_bounded(client, hooks, ctx) -> None:
    from moderation import callbacks

    receiver = Receiver(refuse=0)
    try:
        sid = decided_without_workers(client, ctx, hooks["submitter"], 812, receiver.url)
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


def test_a_stale_attempt_cannot_overwrite_a_newer_one(client, hooks, ctx) -> None:
    from moderation import callbacks
    from moderation.callbacks import outbox

    receiver = Receiver(refuse=0)
    try:
        sid = decided_without_workers(client, ctx, hooks["submitter"], 814, receiver.url)
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


def secret_of(ctx: Any, tenant: str) -> str:
    with ctx.engine.connect() as conn:
        return str(conn.execute(select(tenants.c.callback_secret).where(tenants.c.id == tenant)).scalar_one())


def test_every_tenant_gets_its_own_secret_when_created(ctx) -> None:
    from moderation.access.keys import create_key, ensure_tenant
    from moderation.callbacks import signing_secrets

    with ctx.engine.begin() as conn:
        create_key(conn, "own-secret-a", ["submitter"])
        ensure_tenant(conn, "own-secret-b")
    a, b = secret_of(ctx, "own-secret-a"), secret_of(ctx, "own-secret-b")
    assert a != b and a.startswith("whsec_") and len(a) >= 40 and len(b) >= 40
    with ctx.engine.connect() as conn:
        assert signing_secrets(conn, "own-secret-a", ctx.settings) == [a]
    with ctx.engine.begin() as conn:
        ensure_tenant(conn, "own-secret-a")  # an existing tenant keeps its secret
    assert secret_of(ctx, "own-secret-a") == a


def test_tenant_secret_rotation_keeps_the_old_signature_for_the_grace_period(client, ctx, monkeypatch) -> None:
    from moderation import callbacks
    from moderation.access.keys import create_key

    with ctx.engine.begin() as conn:
        admin = create_key(conn, "hooks-co", ["admin"])
        submitter = create_key(conn, "hooks-co", ["submitter"])
        callbacks.set_receiver_rules(conn, "hooks-co", callbacks.ReceiverRules.parse(True, ["127.0.0.1/32"]), "test")
    initial = secret_of(ctx, "hooks-co")
    assert client.post("/v1/callbacks/secret", headers=auth(submitter)).status_code == 403
    r = client.post("/v1/callbacks/secret", headers=auth(admin))
    assert r.status_code == 200, r.text
    secret = r.json()["secret"]
    assert secret.startswith("whsec_") and secret != initial and r.json()["previous_valid_until"]

    receiver = Receiver(refuse=0)
    try:
        sid = decided_without_workers(client, ctx, submitter, 815, receiver.url)
        assert callbacks.deliver(ctx.engine, ctx.settings, sid) == "delivered:200"
        # Past the grace period only the tenant's current secret signs.
        monkeypatch.setattr(ctx.settings, "callback_secret_grace_s", 0)
        later = decided_without_workers(client, ctx, submitter, 816, receiver.url)
        assert callbacks.deliver(ctx.engine, ctx.settings, later) == "delivered:200"
    finally:
        receiver.close()
    (_, during, body), (_, after, body2) = receiver.calls
    assert verifies(secret, during, body) == [True, False]
    assert verifies(initial, during, body) == [False, True]  # the one it replaced, during the grace period
    assert verifies(secret, after, body2) == [True]
    with ctx.engine.connect() as conn:
        bodies = conn.execute(
            select(audit_events.c.body).where(
                audit_events.c.tenant_id == "hooks-co", audit_events.c.action == "callback_secret_rotated"
            )
        ).all()
    assert len(bodies) == 1 and secret not in bodies[0].body  # audited, never stored in the log


def test_admins_set_their_own_tenants_receiver_rules(client, hooks, ctx) -> None:
    admin, other = auth(hooks["strict-admin"]), auth(hooks["admin"])
    assert client.get("/v1/callbacks/receivers", headers=admin).json() == {"allow_http": False, "private_networks": []}
    assert client.get("/v1/callbacks/receivers", headers=auth(hooks["strict"])).status_code == 403
    assert client.put("/v1/callbacks/receivers", headers=auth(hooks["strict"]), json={}).status_code == 403
    for bad in (
        {"private_networks": ["example.com"]},
        {"private_networks": ["10.0.0.0/33"]},
        {"private_networks": "10.0.0.0/8"},
        {"allow_http": "maybe"},
        {"allow_http": True, "extra": 1},
    ):
        r = client.put("/v1/callbacks/receivers", headers=admin, json=bad)
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error"]["code"] == "INVALID_REQUEST"
    r = client.put(
        "/v1/callbacks/receivers", headers=admin, json={"allow_http": True, "private_networks": ["10.9.8.7/16", "::1"]}
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"allow_http": True, "private_networks": ["10.9.0.0/16", "::1/128"]}
    assert client.get("/v1/callbacks/receivers", headers=admin).json() == r.json()
    assert client.get("/v1/callbacks/receivers", headers=other).json()["private_networks"] == ["127.0.0.0/8"]
    with ctx.engine.connect() as conn:
        events = conn.execute(
            select(audit_events.c.body).where(
                audit_events.c.tenant_id == "hooks-strict", audit_events.c.action == "callback_receivers_changed"
            )
        ).all()
    assert len(events) == 1 and "10.9.0.0/16" in events[0].body
    # Back to the defaults (other tests rely on this tenant being strict).
    assert client.put("/v1/callbacks/receivers", headers=admin, json={}).json()["private_networks"] == []


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "moderation.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_cli_sets_a_tenants_receiver_rules(service_env, ctx) -> None:
    from moderation.access.keys import ensure_tenant

    with ctx.engine.begin() as conn:
        ensure_tenant(conn, "cli-hooks-rules")
    shown = cli("callbacks", "receivers", "--tenant", "cli-hooks-rules")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == {"allow_http": False, "private_networks": []}
    r = cli("callbacks", "receivers", "--tenant", "cli-hooks-rules", "--allow-http", "--private-network", "10.0.0.0/8")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"allow_http": True, "private_networks": ["10.0.0.0/8"]}
    r = cli("callbacks", "receivers", "--tenant", "cli-hooks-rules", "--no-allow-http")  # keeps the networks
    assert json.loads(r.stdout) == {"allow_http": False, "private_networks": ["10.0.0.0/8"]}
    r = cli("callbacks", "receivers", "--tenant", "cli-hooks-rules", "--private-network", "not-a-network")
    assert r.returncode == 2 and r.stdout == ""
    assert cli("callbacks", "receivers", "--tenant", "no-such-tenant-x").returncode == 1
    r = cli("callbacks", "receivers", "--tenant", "cli-hooks-rules", "--clear-private-networks")
    assert json.loads(r.stdout) == {"allow_http": False, "private_networks": []}


def test_migration_gives_every_existing_tenant_its_own_secret() -> None:
    from alembic import command
    from sqlalchemy import create_engine

    from moderation.db.migrate import alembic_config
    from moderation.settings import Settings

    with scratch_database(f"moderation_cb_migration_{os.getpid()}") as url:
        settings = Settings(database_url=url)
        cfg = alembic_config(settings)
        command.upgrade(cfg, "0003")
        engine = create_engine(settings.db_url)
        try:
            with engine.begin() as conn:
                for tenant_id, secret in (("t1", None), ("t2", None), ("t3", "whsec_kept")):
                    conn.execute(
                        text(
                            "INSERT INTO tenants (id, name, callback_secret, created_at) VALUES (:id, :id, :s, now())"
                        ),
                        {"id": tenant_id, "s": secret},
                    )
            command.upgrade(cfg, "0004")
            with engine.connect() as conn:
                c = tenants.c
                columns = (c.id, c.callback_secret, c.callback_allow_http, c.callback_private_networks)
                rows = {r.id: r for r in conn.execute(select(*columns)).all()}
            command.downgrade(cfg, "0003")
        finally:
            engine.dispose()
    assert rows["t3"].callback_secret == "whsec_kept"
    fresh = [rows["t1"].callback_secret, rows["t2"].callback_secret]
    assert all(s and s.startswith("whsec_") and len(s) >= 40 for s in fresh) and fresh[0] != fresh[1]
    assert all(r.callback_allow_http is False and r.callback_private_networks == [] for r in rows.values())
