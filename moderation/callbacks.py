"""Webhook callbacks to the platform: a transactional outbox, signed deliveries, the SSRF guard.

A decision and its pending delivery row are written in one transaction (`enqueue`), so a
decision is never left without its callback: not by a worker killed after the commit, not by a
broker that lost the message. The task sent after commit is only a wake-up; the row is the
truth. `deliver` claims a row (its attempt counter is the lock), POSTs the signed body and
records the outcome; short back-offs retry through Celery, long ones and lost messages are
picked up by `overdue` from the reconciler. Deliveries are at least once: the receiver dedupes
on the `X-Moderation-Delivery` header (or the submission id in the body).

Destinations are checked where the request is made (`check_destination`): a callback URL that
resolves to a loopback, private, link-local or otherwise non-global address is refused unless
`callback_allow_private` is set, so a submitter cannot make the workers call into the
operator's own network. Redirects are never followed.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Connection, Engine, and_, insert, select, update

from moderation import audit
from moderation.errors import ModerationError
from moderation.models import (
    AUTOMATED,
    as_utc,
    callback_deliveries,
    dead_letters,
    decisions,
    iso,
    submissions,
    tenants,
    utcnow,
)
from moderation.settings import Settings

log = logging.getLogger(__name__)
Render = Callable[[str, str], dict[str, Any]]  # (tenant, submission id) -> the callback body

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
# A retry due sooner than this goes back to Celery with a countdown (well under any broker
# visibility timeout); a later one is left to the reconciler, which publishes due rows.
CELERY_RETRY_MAX_S = 60.0


class CallbackFailed(Exception):
    """The platform's endpoint did not take the callback; retry in `retry_in` seconds."""

    def __init__(self, message: str, retry_in: float) -> None:
        super().__init__(message)
        self.retry_in = retry_in


class DestinationRefused(Exception):
    """The callback URL points somewhere the workers must not call (final, never retried)."""


def sign(secret: str | Sequence[str], timestamp: int, body: bytes) -> str:
    """`X-Moderation-Signature` value: `t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.

    With several secrets (a rotation's grace period) there is one `v1=` per secret, the current
    one first: a receiver accepts the delivery when any of them verifies with the secret it holds.
    """
    keys = [secret] if isinstance(secret, str) else list(secret)
    macs = [hmac.new(k.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest() for k in keys]
    return ",".join([f"t={timestamp}", *(f"v1={m}" for m in macs)])


def signing_secrets(conn: Connection, tenant_id: str, settings: Settings, now: datetime | None = None) -> list[str]:
    """The secrets a tenant's deliveries are signed with: its own (else the deployment's), and
    the one it replaced while the rotation's grace period lasts."""
    row = conn.execute(
        select(tenants.c.callback_secret, tenants.c.callback_secret_prev, tenants.c.callback_secret_rotated_at).where(
            tenants.c.id == tenant_id
        )
    ).first()
    if row is None or not row.callback_secret:
        return [settings.callback_secret]
    keys = [row.callback_secret]
    rotated = row.callback_secret_rotated_at
    grace = timedelta(seconds=settings.callback_secret_grace_s)
    if rotated is not None and as_utc(rotated) + grace > (now or utcnow()):
        keys.append(row.callback_secret_prev or settings.callback_secret)  # none before: the deployment's
    return keys


def rotate_secret(conn: Connection, tenant_id: str, settings: Settings, actor: str) -> dict[str, Any]:
    """Give the tenant a new signing secret; the old one keeps signing for the grace period.

    Returns {"secret", "previous_valid_until"}: the secret is shown here once. Audited (without it).
    """
    now = utcnow()
    current = conn.execute(select(tenants.c.callback_secret).where(tenants.c.id == tenant_id).with_for_update()).first()
    if current is None:
        raise ModerationError("NOT_FOUND", f"No tenant {tenant_id!r}.")
    secret = "whsec_" + secrets.token_urlsafe(32)
    conn.execute(
        update(tenants)
        .where(tenants.c.id == tenant_id)
        .values(callback_secret=secret, callback_secret_prev=current.callback_secret, callback_secret_rotated_at=now)
    )
    until = iso(now + timedelta(seconds=settings.callback_secret_grace_s))
    event = audit.Event("callback_secret_rotated", actor=actor, automated=False, facts={"previous_valid_until": until})
    audit.append(conn, tenant_id, [event])
    return {"secret": secret, "previous_valid_until": until}


_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_V4_COMPAT = (ipaddress.ip_network("::/96"), ipaddress.ip_network("::ffff:0:0:0/96"))


def _refused_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        if any(ip in net for net in _V4_COMPAT):
            return True  # deprecated IPv4-compatible / SIIT forms: never a webhook receiver
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return _refused_address(embedded)
    return not ip.is_global or ip.is_multicast


def literal_host_refused(url: str) -> bool:
    """True when the URL names a non-global address or localhost literally (checked at submission).

    Raises ValueError when the URL cannot be parsed (a bad port, an unclosed IPv6 bracket).
    """
    import httpx

    parts = urlsplit(url)
    parts.port  # noqa: B018 - parses the port: ValueError when it is not a number in range
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise ValueError("no host")
    try:
        httpx.Request("POST", url)  # the request the client will make, built as it builds it
    except httpx.InvalidURL as exc:  # (an IDNA error is a ValueError already)
        raise ValueError(str(exc)) from exc
    try:
        ipaddress.ip_address(host)
    except ValueError:
        host.encode("idna")  # what the resolver will be asked: UnicodeError (a ValueError) when it cannot be
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return _refused_address(ipaddress.ip_address(host))
    except ValueError:
        return False


def check_destination(url: str, allow_private: bool) -> None:
    """Refuse a URL whose host resolves to a non-global address (unless `allow_private`).

    Raises DestinationRefused (final) or OSError when the name does not resolve (transient).
    The check resolves the name itself; the HTTP client resolves it again, so a DNS answer that
    changes in between (rebinding) is not covered: run workers behind an egress proxy for that.
    """
    if allow_private:
        return
    try:
        refused = literal_host_refused(url)
    except ValueError as exc:
        raise DestinationRefused(f"callback URL cannot be parsed: {exc}") from exc
    parts = urlsplit(url)
    host = parts.hostname or ""
    if refused:
        raise DestinationRefused(f"callback host {host!r} is not a public address")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if _refused_address(address):
            raise DestinationRefused(f"callback host {host!r} resolves to {address}, not a public address")


def _row(sub: Any, event: str, now: datetime) -> dict[str, Any]:
    return {
        "id": secrets.token_hex(16),
        "submission_id": sub.id,
        "tenant_id": sub.tenant_id,
        "event": event,
        "url": sub.callback_url,
        "status": PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }


def enqueue(conn: Connection, subs: Iterable[Any], event: str, now: datetime) -> list[str]:
    """Add a pending delivery for each submission that has a callback_url, inside `conn`.

    `event` is the decision's dedupe key (one delivery per decision). Returns the submission ids
    that got one; the caller publishes the callback task for them after commit.
    """
    rows = [_row(sub, event, now) for sub in subs if sub.callback_url]
    if rows:
        conn.execute(insert(callback_deliveries), rows)
    return [str(r["submission_id"]) for r in rows]


def attempt_limit_s(settings: Settings) -> float:
    """The longest one attempt may take (the callback task's time limit): connect, send, headers."""
    return settings.callback_timeout_s * 3 + 10


def backoff(settings: Settings, attempt: int) -> float:
    """Seconds before attempt `attempt + 1`: exponential from callback_backoff_s, capped."""
    return float(min(settings.callback_backoff_max_s, settings.callback_backoff_s * 4 ** (attempt - 1)))


def _adopt(engine: Engine, submission_id: str, now: datetime) -> bool:
    """A callback message from before the outbox (no row for a decided submission with a
    callback_url): write its row now, so an upgrade loses no callback. True when one was written."""
    from sqlalchemy.dialects import postgresql, sqlite

    with engine.begin() as conn:
        if conn.execute(
            select(callback_deliveries.c.id).where(callback_deliveries.c.submission_id == submission_id).limit(1)
        ).first():
            return False
        sub = conn.execute(
            select(submissions.c.id, submissions.c.tenant_id, submissions.c.callback_url)
            .join(decisions, decisions.c.submission_id == submissions.c.id)
            .where(submissions.c.id == submission_id, decisions.c.dedupe_key == AUTOMATED)
        ).first()
        if sub is None or not sub.callback_url:
            return False
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        row = _row(sub, AUTOMATED, now)
        return bool(conn.execute(dialect.insert(callback_deliveries).values(row).on_conflict_do_nothing()).rowcount)


def deliver(engine: Engine, settings: Settings, submission_id: str, render: Render) -> str:
    """Deliver the submission's due pending callbacks; `render(tenant, id)` is the body.

    Returns what happened ("delivered:200", "not_due", "failed", "scheduled", "noop"). Raises
    CallbackFailed when an attempt failed and the next one is due soon (the task retries with
    that countdown). A row that another delivery holds, or whose retry is later, is left alone.
    """
    now = utcnow()
    with engine.connect() as conn:
        rows = conn.execute(
            select(callback_deliveries)
            .where(and_(callback_deliveries.c.submission_id == submission_id, callback_deliveries.c.status == PENDING))
            .order_by(callback_deliveries.c.created_at)
        ).all()
    if not rows:
        if not _adopt(engine, submission_id, now):
            return "noop"
        return deliver(engine, settings, submission_id, render)
    outcomes: list[str] = []
    retry: CallbackFailed | None = None
    for row in rows:
        if as_utc(row.next_attempt_at) > now + timedelta(seconds=1):
            outcomes.append("not_due")
            continue
        if row.attempts >= settings.callback_max_attempts:  # its last attempts never finished (killed, hung)
            outcomes.append(_give_up(engine, row, int(row.attempts), row.last_error or "no attempt finished", None))
            continue
        attempt = int(row.attempts) + 1
        # The claim: the attempt counter moves only for the one delivery that read it, and the
        # row is not due again until this attempt has had time to finish (a worker killed
        # mid-request leaves it to the reconciler).
        hold = now + timedelta(seconds=attempt_limit_s(settings) + 30)
        with engine.begin() as conn:
            claimed = conn.execute(
                update(callback_deliveries)
                .where(
                    and_(
                        callback_deliveries.c.id == row.id,
                        callback_deliveries.c.status == PENDING,
                        callback_deliveries.c.attempts == row.attempts,
                    )
                )
                .values(attempts=attempt, next_attempt_at=hold)
            ).rowcount
        if not claimed:
            outcomes.append("taken")
            continue
        try:
            outcomes.append(_post(engine, settings, row, attempt, render))
        except CallbackFailed as exc:
            retry = exc if retry is None or exc.retry_in < retry.retry_in else retry
    if retry is not None:
        raise retry
    return ",".join(outcomes)


def _post(engine: Engine, settings: Settings, row: Any, attempt: int, render: Render) -> str:
    import httpx

    status: int | None = None
    try:
        check_destination(row.url, settings.callback_allow_private)
        body = json.dumps(render(row.tenant_id, row.submission_id), sort_keys=True, separators=(",", ":")).encode()
        timestamp = int(time.time())
        with engine.connect() as conn:
            keys = signing_secrets(conn, row.tenant_id, settings)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "moderation-callback/1",
            "X-Moderation-Delivery": row.id,
            "X-Moderation-Attempt": str(attempt),
            "X-Moderation-Signature": sign(keys, timestamp, body),
        }
        # Streamed and closed unread: the receiver's body is never needed, and never held in memory.
        with httpx.stream("POST", row.url, content=body, headers=headers, timeout=settings.callback_timeout_s) as r:
            status = r.status_code
        if 200 <= status < 300:
            _record(
                engine, row.id, attempt, status=DELIVERED, last_status=status, last_error=None, delivered_at=utcnow()
            )
            return f"delivered:{status}"
        error = f"HTTP {status}"
    except DestinationRefused as exc:
        return _give_up(engine, row, attempt, f"refused: {exc}", status)
    except (httpx.HTTPError, OSError) as exc:  # network, DNS, timeouts: worth another attempt
        error = f"{type(exc).__name__}: {exc}"
    except (ValueError, httpx.InvalidURL) as exc:  # a URL the client or resolver cannot use: final
        return _give_up(engine, row, attempt, f"refused: unusable callback URL: {type(exc).__name__}: {exc}", status)
    except Exception as exc:  # anything else (a time limit): this attempt failed, the budget bounds it
        log.exception("callback %s attempt %d failed unexpectedly", row.id, attempt)
        error = f"{type(exc).__name__}: {exc}"
    if attempt >= settings.callback_max_attempts:
        return _give_up(engine, row, attempt, error, status)
    delay = backoff(settings, attempt)
    _record(
        engine,
        row.id,
        attempt,
        last_status=status,
        last_error=error,
        next_attempt_at=utcnow() + timedelta(seconds=delay),
    )
    log.info("callback %s to %s failed (attempt %d, next in %.0f s): %s", row.id, row.url, attempt, delay, error)
    if delay <= CELERY_RETRY_MAX_S:
        raise CallbackFailed(f"{row.url}: {error}", delay)
    return "scheduled"


def _mine(delivery_id: str, attempt: int) -> Any:
    """The row, while it is still pending and this attempt is its latest (a stale one writes nothing)."""
    c = callback_deliveries.c
    return and_(c.id == delivery_id, c.status == PENDING, c.attempts == attempt)


def _record(engine: Engine, delivery_id: str, attempt: int, **values: Any) -> None:
    with engine.begin() as conn:
        conn.execute(update(callback_deliveries).where(_mine(delivery_id, attempt)).values(**values))


def _give_up(engine: Engine, row: Any, attempt: int, error: str, status: int | None) -> str:
    with engine.begin() as conn:
        mine = conn.execute(
            update(callback_deliveries)
            .where(_mine(row.id, attempt))
            .values(status=FAILED, last_status=status, last_error=error)
        ).rowcount
        if not mine:
            return "taken"
        conn.execute(
            insert(dead_letters).values(
                submission_id=row.submission_id,
                task="callback",
                error=error,
                attempts=attempt,
                payload={"delivery_id": row.id, "url": row.url, "event": row.event},
                created_at=utcnow(),
            )
        )
    log.warning("callback %s to %s given up after %d attempts: %s", row.id, row.url, attempt, error)
    return FAILED


def overdue(engine: Engine, late_s: float, limit: int) -> list[str]:
    """Submission ids with a pending delivery overdue by more than `late_s` seconds.

    Their next attempt is re-dated to now, so each is published once per `late_s`: a delivery
    whose message was lost, whose worker died mid-request, or whose back-off was longer than a
    Celery countdown should be.
    """
    now = utcnow()
    cutoff = now - timedelta(seconds=late_s)
    with engine.begin() as conn:
        rows = conn.execute(
            select(callback_deliveries.c.id, callback_deliveries.c.submission_id)
            .where(and_(callback_deliveries.c.status == PENDING, callback_deliveries.c.next_attempt_at < cutoff))
            .order_by(callback_deliveries.c.next_attempt_at)
            .limit(limit)
        ).all()
        if rows:
            conn.execute(
                update(callback_deliveries)
                .where(callback_deliveries.c.id.in_([r.id for r in rows]), callback_deliveries.c.status == PENDING)
                .values(next_attempt_at=now)
            )
    return list(dict.fromkeys(str(r.submission_id) for r in rows))
