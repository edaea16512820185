"""Redis, where a deployment has no RabbitMQ: each platform account is a Redis ACL user that may
only push to its own list (`moderation:ingest:<account>`), and signs each message with its
ingest secret (HMAC-SHA256), so neither the list nor a leaked broker password alone makes a
message the tenant's. Lists are moved item by item to a processing list and removed from it only
once stored or rejected; a gateway that dies leaves them there, and the next one takes them up.

An envelope on the list: `{"body": "<the message, JSON text>", "sig": "<hex HMAC of body>"}`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

from sqlalchemy import and_, select

from moderation.db.tables import ingest_accounts
from moderation.gateway.core import Gateway
from moderation.queue import INGEST_LIST_PREFIX as PREFIX

log = logging.getLogger(__name__)


def list_key(account: str) -> str:
    return f"{PREFIX}{account}"


def processing_key(account: str) -> str:
    return f"{PREFIX}{account}:processing"


def acl_rules(account: str, password: str) -> list[str]:
    """`ACL SETUSER` rules of a platform account: push to its own list, nothing else."""
    # SELECT only chooses the database: the key pattern holds in every one.
    rules = ["reset", "on", f">{password}", f"~{list_key(account)}", "resetchannels", "-@all"]
    return [*rules, "+rpush", "+lpush", "+select", "+ping"]


def provision(admin_url: str, account: str, password: str) -> None:
    import redis

    redis.Redis.from_url(admin_url).execute_command("ACL", "SETUSER", account, *acl_rules(account, password))


def _unwrap(raw: bytes) -> tuple[bytes, str | None]:
    try:
        envelope = json.loads(raw)
        body, sig = envelope["body"], envelope.get("sig")
        if isinstance(body, str) and (sig is None or isinstance(sig, str)):
            return body.encode(), sig
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        pass
    return raw, None  # not an envelope: the signature check rejects it


def serve(
    gateway: Gateway, url: str, poll_s: float = 0.05, accounts_every_s: float = 2.0, max_deliveries: int = 5
) -> None:
    """Consume every live Redis account's list until `gateway.stop` is set."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
    accounts: list[str] = []
    listed_at = 0.0
    recovered: set[str] = set()
    delay = 1.0
    while not gateway.stop.is_set():
        try:
            if time.monotonic() - listed_at > accounts_every_s:
                accounts = _redis_accounts(gateway)
                listed_at = time.monotonic()
            moved = 0
            for account in accounts:
                if account not in recovered:  # what a gateway that died left in processing
                    for raw in client.lrange(processing_key(account), 0, -1):
                        left = raw if isinstance(raw, bytes) else str(raw).encode()
                        _recover(gateway, client, account, left, max_deliveries)
                    recovered.add(account)
                item = client.lmove(list_key(account), processing_key(account), "LEFT", "RIGHT")
                if isinstance(item, bytes):
                    moved += 1
                    _one(gateway, client, account, item)
            delay = 1.0
            if not moved:
                gateway.stop.wait(poll_s)
        except Exception as exc:  # Redis or the database down: keep the items, try again
            log.warning("ingest gateway (redis) paused (%s); retrying in %.0f s", exc, delay)
            if gateway.stop.wait(delay):
                return
            delay = min(delay * 2, 30.0)


def _recover(gateway: Gateway, client: Any, account: str, raw: bytes, max_deliveries: int) -> None:
    """An item a gateway took and never finished: counted (a hash per account, by digest), taken
    again, and dead-lettered once it has been taken `max_deliveries` times (poison)."""
    counts, digest = f"{processing_key(account)}:deliveries", hashlib.sha256(raw).hexdigest()
    taken = int(client.hincrby(counts, digest, 1)) + 1  # the first delivery was never counted
    if taken >= max_deliveries:
        body, _ = _unwrap(raw)
        if gateway.give_up(account, body, f"taken {taken} times without finishing"):
            client.lrem(processing_key(account), 1, raw)
            client.hdel(counts, digest)
        return
    _one(gateway, client, account, raw)
    client.hdel(counts, digest)


def _one(gateway: Gateway, client: Any, account: str, raw: bytes) -> None:
    body, sig = _unwrap(raw)
    if gateway.handle_until_done(account, body, "redis", sig) is not None:
        client.lrem(processing_key(account), 1, raw)


def _redis_accounts(gateway: Gateway) -> list[str]:
    c = ingest_accounts.c
    with gateway.ctx.engine.connect() as conn:
        rows = conn.execute(
            select(c.account).where(and_(c.transport == "redis", c.revoked_at.is_(None))).order_by(c.account)
        )
        return [str(r.account) for r in rows]
