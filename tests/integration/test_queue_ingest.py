"""Queue-side ingest across the trust boundary (issue 10, finding 1): two platforms, each with a
broker account of its own, publish submissions without any credential in the message.

Before: platforms published Celery's `moderation.submit` task on the internal broker, with the
tenant's API key inside each message: any platform could read the others' keys and images,
publish internal tasks and write the verdict cache.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu.connection import Connection
from sqlalchemy import select

from moderation.access.ingest import create_account
from moderation.client import QueueProducer
from moderation.db.tables import audit_events, dead_letters, submissions
from moderation.gateway import amqp as gateway_amqp
from moderation.queue import INGEST_EXCHANGE, INGEST_ROUTING_KEY
from tests.support.images import picture
from tests.support.processes import Procs
from tests.support.services import CACHE_URL, REDIS_URL, unavailable
from tests.support.waiting import wait_until

pytestmark = pytest.mark.services

RABBIT = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")
RUN = f"{os.getpid()}-{secrets.token_hex(3)}"


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def by_external(ctx: Any, tenant: str, external_id: str) -> Any:
    with ctx.engine.connect() as conn:
        return conn.execute(
            select(submissions).where(submissions.c.tenant_id == tenant, submissions.c.external_id == external_id)
        ).first()


def decided(ctx: Any, tenant: str, external_id: str) -> Any:
    return wait_until(
        lambda: (r := by_external(ctx, tenant, external_id)) and r.status == "decided" and r,
        90,
        what=f"{tenant}/{external_id} decided",
    )


def rejections(ctx: Any, external_id: str) -> list[Any]:
    with ctx.engine.connect() as conn:
        rows = conn.execute(select(dead_letters).where(dead_letters.c.task == "submit")).all()
    return [r for r in rows if (r.payload or {}).get("external_id", "").startswith(external_id)]


# ------------------------------------------------------------------ RabbitMQ


@pytest.fixture(scope="module")
def rabbit(ctx: Any, keys: dict[str, str]) -> Iterator[dict[str, str]]:
    """A vhost for ingest, the gateway's account (guest here) on it, and two platform users."""
    vhost = f"moderation-ingest-{RUN}"
    try:
        rabbitmqctl("add_vhost", vhost)
    except (OSError, subprocess.CalledProcessError) as exc:
        unavailable("RabbitMQ (rabbitmqctl)", exc)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    made: dict[str, str] = {"vhost": vhost, "gateway": f"{RABBIT}/{vhost}"}
    with ctx.engine.begin() as conn:
        for tenant, who in (("acme", "a"), ("other", "b")):
            account = create_account(conn, tenant, f"plat-{who}-{RUN}", "amqp")
            gateway_amqp.provision(account["account"], account["password"], vhost)
            made[who] = f"amqp://{account['account']}:{account['password']}@127.0.0.1:5672/{vhost}"
            made[f"{who}_user"] = account["account"]
    try:
        yield made
    finally:
        for who in ("a", "b"):
            subprocess.run(["rabbitmqctl", "-q", "delete_user", made[f"{who}_user"]], capture_output=True, timeout=60)
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True, timeout=60)


def gateway(procs: Procs, url: str) -> Any:
    def consuming() -> bool:
        try:
            with Connection(url) as conn:
                ok = conn.default_channel.queue_declare(queue=INGEST_EXCHANGE, passive=True)
                return int(ok.consumer_count) >= 1
        except Exception:
            return False

    return procs.command(
        "gateway",
        ["-m", "moderation.cli", "ingest", "serve"],
        consuming if url.startswith("amqp") else (lambda: True),
        60,
        MODERATION_INGEST_URL=url,
    )


def test_two_platforms_submit_on_their_own_accounts(ctx, keys, procs, rabbit) -> None:
    procs.worker()
    gateway(procs, rabbit["gateway"])
    a, b = QueueProducer(rabbit["a"]), QueueProducer(rabbit["b"])
    a.submit("q-1", data=picture(700), policy="hash-only", caption="from the queue")
    b.submit("q-1", data=picture(710), policy="hash-only")
    a.submit("q-1", data=picture(700), policy="hash-only")  # a duplicate: the same submission
    row_a, row_b = decided(ctx, "acme", "q-1"), decided(ctx, "other", "q-1")
    assert row_a.source == row_b.source == "queue"
    assert row_a.api_key_id == f"ingest:{rabbit['a_user']}"
    assert row_a.sha256 == hashlib.sha256(picture(700)).hexdigest() != row_b.sha256

    # A blob is named only by the tenant that uploaded it; B's is answered like a missing one.
    a.submit("q-2", blob_sha256=row_a.sha256, policy="hash-only")
    decided(ctx, "acme", "q-2")
    a.submit("q-3", blob_sha256=row_b.sha256, policy="hash-only")
    a.submit("q-4", blob_sha256="0" * 64, policy="hash-only")
    wait_until(lambda: rejections(ctx, "q-3") and rejections(ctx, "q-4"), 60, what="blob rejections")
    theirs, nothing = rejections(ctx, "q-3")[0].error, rejections(ctx, "q-4")[0].error
    assert theirs.startswith("BLOB_NOT_FOUND") and nothing.startswith("BLOB_NOT_FOUND")
    assert theirs.replace(row_b.sha256, "X") == nothing.replace("0" * 64, "X")  # the same answer
    assert by_external(ctx, "acme", "q-3") is None


def test_a_platform_cannot_pose_as_another_or_reach_anything_else(ctx, keys, procs, rabbit) -> None:
    gateway(procs, rabbit["gateway"])
    body = QueueProducer.message("q-spoof", picture(720), None, policy="hash-only")
    # 1. user_id of the other platform: the broker refuses the publish (validated user-id).
    with Connection(rabbit["a"], transport_options={"confirm_publish": True}) as conn:
        producer = conn.Producer(auto_declare=False)
        with pytest.raises(Exception, match=r"PRECONDITION_FAILED|user_id"):
            producer.publish(
                body,
                exchange=INGEST_EXCHANGE,
                routing_key=INGEST_ROUTING_KEY,
                user_id=rabbit["b_user"],
                content_type="application/json",
                retry=False,
            )
    # 2. no user_id at all: the gateway cannot tell the tenant, so nothing is stored (recorded).
    with Connection(rabbit["a"], transport_options={"confirm_publish": True}) as conn:
        conn.Producer(auto_declare=False).publish(
            QueueProducer.message("q-anon", picture(721), None),
            exchange=INGEST_EXCHANGE,
            routing_key=INGEST_ROUTING_KEY,
            retry=False,
        )
    wait_until(lambda: rejections(ctx, "q-anon"), 60, what="anonymous message rejected")
    assert rejections(ctx, "q-anon")[0].error.startswith("UNAUTHENTICATED")
    assert by_external(ctx, "other", "q-spoof") is None and by_external(ctx, "acme", "q-anon") is None

    # 3. neither read the ingest queue (the other platform's messages), nor declare, nor
    #    publish anywhere but the ingest exchange.
    def refused(action: Any) -> None:
        with Connection(rabbit["a"]) as conn, pytest.raises(Exception, match=r"ACCESS_REFUSED|access to"):
            action(conn.channel())
            conn.drain_events(timeout=1)

    refused(lambda ch: ch.basic_get(queue=INGEST_EXCHANGE))
    refused(lambda ch: ch.queue_declare(queue=f"mine-{RUN}"))
    refused(lambda ch: ch.basic_publish(_msg(ch, b"{}"), exchange="", routing_key="ingest"))
    refused(lambda ch: ch.basic_publish(_msg(ch, b"{}"), exchange="celery", routing_key="ingest"))
    # 4. The internal broker and the cache are other servers, which the platform has no account
    #    on: its RabbitMQ credentials open nothing there.
    internal_vhost = rabbit["a"].rsplit("/", 1)[0] + "/%2F"
    with (
        pytest.raises(Exception, match=r"NOT_ALLOWED|ACCESS_REFUSED|access to vhost"),
        Connection(internal_vhost, connect_timeout=5) as conn,
    ):
        conn.ensure_connection(max_retries=1)
    a_user, a_password = rabbit["a"].split("//", 1)[1].split("@", 1)[0].split(":", 1)
    for url in (REDIS_URL, CACHE_URL):
        with pytest.raises(redis.RedisError):
            redis.Redis.from_url(url, username=a_user, password=a_password, socket_timeout=5).ping()


def _msg(channel: Any, body: bytes) -> Any:
    from amqp.basic_message import Message

    return Message(body, content_type="application/json")


def test_messages_carry_no_credentials_and_rejections_are_bounded(ctx, keys, procs, rabbit) -> None:
    gateway(procs, rabbit["gateway"])
    with Connection(rabbit["a"], transport_options={"confirm_publish": True}) as conn:
        producer = conn.Producer(auto_declare=False)

        def send(body: bytes) -> None:
            producer.publish(
                body,
                exchange=INGEST_EXCHANGE,
                routing_key=INGEST_ROUTING_KEY,
                user_id=rabbit["a_user"],
                content_type="application/json",
                retry=False,
            )

        image = base64.b64encode(picture(730)).decode()
        send(json.dumps({"external_id": "q-key", "api_key": keys["submitter"], "image_b64": image}).encode())
        send(json.dumps({"external_id": "q-bad", "image_b64": base64.b64encode(b"not an image").decode()}).encode())
        send(json.dumps({"external_id": "q-long" + "x" * 100_000, "image_b64": "!!"}).encode())
        send(json.dumps({"external_id": "q-extra", "image_b64": image, "x" * 5000: "y" * 100_000}).encode())
        send(b"q-notjson \x00\xff")
    wait_until(lambda: all(rejections(ctx, e) for e in ("q-key", "q-bad", "q-long", "q-extra")), 60, what="rejections")
    assert rejections(ctx, "q-key")[0].error.startswith("INVALID_MESSAGE")  # a credential in a message
    assert rejections(ctx, "q-bad")[0].error.startswith("UNSUPPORTED_MEDIA_TYPE")
    assert by_external(ctx, "acme", "q-key") is None
    with ctx.engine.connect() as conn:
        letters = conn.execute(select(dead_letters.c.payload, dead_letters.c.error)).all()
        logged = conn.execute(select(audit_events.c.body).where(audit_events.c.action == "rejected")).scalars().all()
    assert all(keys["submitter"] not in json.dumps(r.payload) + r.error for r in letters)
    assert all(keys["submitter"] not in body for body in logged)
    # bounded in characters (JSON escapes would count one emoji as 12)
    unbounded = [r for r in letters if len(json.dumps(r.payload, ensure_ascii=False)) >= 2000 or len(r.error) > 1000]
    assert not unbounded, [(json.dumps(r.payload)[:300], r.error[:300]) for r in unbounded]
    assert all(len(body) < 4000 for body in logged)  # the append-only log takes bounded facts only


# ------------------------------------------------------------------ Redis


@pytest.fixture(scope="module")
def redis_accounts(ctx: Any, keys: dict[str, str]) -> Iterator[dict[str, Any]]:
    """Two platforms as Redis ACL users of the ingest Redis (here the test Redis, db 0 unused)."""
    from moderation.gateway import redis_lists

    admin = redis.Redis.from_url(REDIS_URL)
    made: dict[str, Any] = {}
    with ctx.engine.begin() as conn:
        for tenant, who in (("acme", "a"), ("other", "b")):
            account = create_account(conn, tenant, f"rplat-{who}-{RUN}", "redis")
            redis_lists.provision(REDIS_URL, account["account"], account["password"])
            made[who] = account
    try:
        yield made
    finally:
        for who in ("a", "b"):
            admin.execute_command("ACL", "DELUSER", made[who]["account"])


def test_redis_accounts_push_only_their_own_signed_messages(ctx, keys, procs, redis_accounts) -> None:
    a, b = redis_accounts["a"], redis_accounts["b"]
    host = REDIS_URL.split("//", 1)[1]

    def as_platform(account: dict[str, Any]) -> redis.Redis:
        return redis.Redis.from_url(f"redis://{account['account']}:{account['password']}@{host}")

    procs.worker()
    gateway(procs, REDIS_URL)
    QueueProducer(f"redis://{a['account']}:{a['password']}@{host}", secret=a["secret"]).submit(
        "r-1", data=picture(740), policy="hash-only"
    )
    assert decided(ctx, "acme", "r-1").source == "queue"

    mine, theirs = f"moderation:ingest:{a['account']}", f"moderation:ingest:{b['account']}"
    client = as_platform(a)
    for attempt in (
        lambda: client.rpush(theirs, b"{}"),  # pose as B
        lambda: client.lrange(theirs, 0, -1),  # read B's messages
        lambda: client.lrange(mine, 0, -1),  # read at all
        lambda: client.lpush("ingest", b"{}"),  # an internal Celery queue
        lambda: client.keys("*"),
        lambda: client.get("moderation:verdict:x"),  # the cache's keys
        lambda: client.set("moderation:verdict:x", b"allow"),
        lambda: client.publish("celery", b"x"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
    # A message on A's own list signed with B's secret (or not signed) is not A's: rejected.
    body = QueueProducer.message("r-forged", picture(741), None, policy="hash-only")
    client.rpush(mine, json.dumps({"body": body.decode(), "sig": "0" * 64}))
    wait_until(lambda: rejections(ctx, "r-forged") or None, 30, what="forged message rejected")
    assert by_external(ctx, "acme", "r-forged") is None and by_external(ctx, "other", "r-forged") is None


def test_the_gateway_keeps_a_message_until_it_is_stored(ctx, monkeypatch) -> None:
    """A database outage while a message is handled: retried (never acknowledged, never lost)."""
    import threading

    from sqlalchemy.exc import OperationalError

    from moderation.gateway import core

    calls = {"n": 0}
    real = core.submit_message

    def flaky(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection"))
        return real(*args)

    monkeypatch.setattr(core, "submit_message", flaky)
    monkeypatch.setattr(core.Gateway, "account", lambda self, name: None)  # no DB for the lookup
    gw = core.Gateway(ctx, threading.Event())
    started = time.monotonic()
    outcome = gw.handle_until_done("nobody", b'{"external_id": "q-outage"}', "amqp")
    assert calls["n"] == 3 and outcome == {"rejected": "UNAUTHENTICATED", "message": outcome["message"]}
    assert time.monotonic() - started >= 3  # backed off 1 s, then 2 s
    stopped = threading.Event()
    stopped.set()
    calls["n"] = 0
    assert core.Gateway(ctx, stopped).handle_until_done("nobody", b"{}", "amqp") is None  # stop: left unacked


def test_a_blob_store_outage_keeps_the_message(ctx, keys, monkeypatch) -> None:
    """The blob store unreachable while a queue-side image is stored: retried until the store is
    back (never rejected, never dead-lettered), then stored once."""
    import threading

    from moderation.gateway import core
    from moderation.intake.s3blobs import S3BlobStore

    with ctx.engine.begin() as conn:
        account = create_account(conn, "acme", f"outage-{RUN}", "amqp")
    real_store = ctx.blobs
    down = S3BlobStore("unreachable", endpoint_url="http://127.0.0.1:9", timeout_s=0.5, max_attempts=1)
    monkeypatch.setattr(ctx, "blobs", down)
    stop = threading.Event()
    gw = core.Gateway(ctx, stop)
    body = QueueProducer.message(f"outage-{RUN}", picture(745), None, policy="hash-only")
    outcome: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: outcome.update(r=gw.handle_until_done(account["account"], body, "amqp")))
    worker.start()
    time.sleep(2.5)  # a few attempts against the unreachable store
    assert worker.is_alive() and not rejections(ctx, f"outage-{RUN}")
    assert by_external(ctx, "acme", f"outage-{RUN}") is None  # nothing committed without its blob
    monkeypatch.setattr(ctx, "blobs", real_store)  # the store is back
    worker.join(60)
    assert not worker.is_alive() and outcome["r"]["created"] is True, outcome
    row = by_external(ctx, "acme", f"outage-{RUN}")
    assert row is not None and real_store.get(row.sha256) == picture(745)
    assert not rejections(ctx, f"outage-{RUN}")


def test_a_message_no_gateway_finishes_is_dead_lettered(ctx, keys, procs, rabbit) -> None:
    """A poison message (one that kills or hangs every gateway that parses it) is delivered at
    most MODERATION_INGEST_MAX_DELIVERIES times, then recorded as given up: it never loops."""
    first = gateway(procs, rabbit["gateway"])  # declares the queues
    first.stop()
    QueueProducer(rabbit["a"]).submit("q-poison", data=picture(760), policy="hash-only")
    with Connection(rabbit["gateway"]) as conn:  # stands in for gateways that die on it
        channel = conn.channel()
        deliveries = 0
        for _ in range(10):
            message = channel.basic_get(queue=INGEST_EXCHANGE, no_ack=False)
            if message is None:
                break
            deliveries += 1
            channel.basic_reject(message.delivery_tag, requeue=True)
        assert deliveries == 5
        wait_until(
            lambda: channel.queue_declare(queue=f"{INGEST_EXCHANGE}.dead", passive=True).message_count == 1,
            10,
            what="dead-lettered by the broker",
        )
    gateway(procs, rabbit["gateway"])
    wait_until(lambda: rejections(ctx, "q-poison"), 60, what="poison recorded")
    assert "given up: delivered 5 times" in rejections(ctx, "q-poison")[0].error
    assert by_external(ctx, "acme", "q-poison") is None


def test_redis_items_left_by_dead_gateways_are_counted(ctx, keys, procs, redis_accounts) -> None:
    from moderation.gateway import redis_lists

    a = redis_accounts["a"]
    admin = redis.Redis.from_url(REDIS_URL)
    producer = QueueProducer(f"redis://{a['account']}:{a['password']}@x/0", secret=a["secret"])
    import hashlib as _hashlib
    import hmac as _hmac

    def envelope(external_id: str, seed: int) -> bytes:
        body = producer.message(external_id, picture(seed), None, policy="hash-only")
        sig = _hmac.new(a["secret"].encode(), body, _hashlib.sha256).hexdigest()
        return json.dumps({"body": body.decode(), "sig": sig}).encode()

    processing = redis_lists.processing_key(a["account"])
    poison, survivor = envelope("r-poison", 770), envelope("r-survivor", 771)
    admin.rpush(processing, poison, survivor)  # what two gateways that died left behind
    admin.hset(f"{processing}:deliveries", _hashlib.sha256(poison).hexdigest(), 3)  # taken 4 times so far
    procs.worker()
    gateway(procs, REDIS_URL)
    assert decided(ctx, "acme", "r-survivor").source == "queue"  # taken up again, not lost
    wait_until(lambda: rejections(ctx, "r-poison"), 60, what="poison given up")
    assert "taken 5 times" in rejections(ctx, "r-poison")[0].error
    assert admin.llen(processing) == 0
