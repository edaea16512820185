"""Webhook callbacks to the platform: a transactional outbox, signed deliveries, the SSRF guard.

A decision and its pending delivery row are written in one transaction (`enqueue`), so a
decision is never left without its callback: not by a worker killed after the commit, not by a
broker that lost the message. The task sent after commit is only a wake-up; the row is the
truth. `deliver` claims a row (its attempt counter is the lock), POSTs the signed body and
records the outcome; short back-offs retry through Celery, long ones and lost messages are
picked up by `overdue` from the reconciler. Deliveries are at least once: the receiver dedupes
on the `X-Moderation-Delivery` header (or the submission id in the body).

Destinations are checked where the request is made: the URL's host in IDNA 2008 form is
resolved once, every address is checked against the tenant's receiver rules (`netguard`), and
the request connects to those addresses only, with Host, SNI and the certificate check on the
real name (`transport`). A refused destination is final (failed and dead-lettered, no retry).
Redirects are never followed. Deliveries run on their own queue and worker pool (`callbacks`),
so a slow receiver holds a callback thread, never an ingest or analyzer slot.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, insert, select, update

from moderation.audit import Event, append
from moderation.callbacks import transport
from moderation.callbacks.netguard import DestinationRefused, parse_destination, resolve
from moderation.callbacks.receivers import receiver_rules
from moderation.callbacks.signing import sign, signing_secrets
from moderation.db.tables import AUTOMATED, appeals, as_utc, callback_deliveries, dead_letters, iso, utcnow
from moderation.intake.text import printable
from moderation.settings import Settings
from moderation.submissions.status import view
from moderation.vocab import CallbackStatus

log = logging.getLogger(__name__)
_DEAD_LETTER_CHARS = 1000  # a dead letter keeps bounded facts: an error or a URL is cut here

PENDING, DELIVERED, FAILED = CallbackStatus.PENDING, CallbackStatus.DELIVERED, CallbackStatus.FAILED
# A retry due sooner than this goes back to Celery with a countdown (well under any broker
# visibility timeout); a later one is left to the reconciler, which publishes due rows.
CELERY_RETRY_MAX_S = 60.0


class CallbackFailed(Exception):
    """The platform's endpoint did not take the callback; retry in `retry_in` seconds."""

    def __init__(self, message: str, retry_in: float) -> None:
        super().__init__(message)
        self.retry_in = retry_in


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


def event_name(event: str) -> str:
    """The `event` a receiver sees: the automated decision, a human one, an appeal's outcome."""
    if event.startswith("appeal:"):
        return "appeal.decided"
    if event == AUTOMATED:
        return "decision.created"
    return "decision.updated"


def appeal_facts(conn: Connection, appeal_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(appeals).where(appeals.c.id == appeal_id)).first()
    if row is None:
        return None
    return {"id": row.id, "status": row.status, "outcome": row.outcome, "decided_at": iso(row.decided_at)}


def exchange_limit_s(settings: Settings) -> float:
    """The deadline of one request (connect, TLS, send, the answer's headers), however the
    receiver drips its bytes."""
    return settings.callback_timeout_s * 3


def attempt_limit_s(settings: Settings) -> float:
    """The longest one attempt may take (the callback task's time limit): the request and DNS."""
    return exchange_limit_s(settings) + 10


def backoff(settings: Settings, attempt: int) -> float:
    """Seconds before attempt `attempt + 1`: exponential from callback_backoff_s, capped."""
    return float(min(settings.callback_backoff_max_s, settings.callback_backoff_s * 4 ** (attempt - 1)))


def deliver(engine: Engine, settings: Settings, submission_id: str) -> str:
    """Deliver the submission's due pending callbacks; the body is its public status (`view`),
    read when the attempt is made (so a later human decision is what the platform gets).

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
        return "noop"
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
            outcomes.append(_post(engine, settings, row, attempt))
        except CallbackFailed as exc:
            retry = exc if retry is None or exc.retry_in < retry.retry_in else retry
    if retry is not None:
        raise retry
    return ",".join(outcomes)


def _post(engine: Engine, settings: Settings, row: Any, attempt: int) -> str:
    status: int | None = None
    try:
        dest = parse_destination(row.url)
        with engine.connect() as conn:
            rules = receiver_rules(conn, row.tenant_id)
            status_body = {"event": event_name(row.event), **view(conn, row.tenant_id, row.submission_id)}
            if row.event.startswith("appeal:"):
                status_body["appeal"] = appeal_facts(conn, row.event.split(":", 1)[1])
            keys = signing_secrets(conn, row.tenant_id, settings)
        addresses = resolve(dest, rules)  # once: the request connects to these and nothing else
        body = json.dumps(status_body, sort_keys=True, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "moderation-callback/1",
            "X-Moderation-Delivery": row.id,
            "X-Moderation-Attempt": str(attempt),
            "X-Moderation-Signature": sign(keys, int(time.time()), row.id, body),
        }
        status, _ = transport.post(
            dest,
            addresses,
            body,
            headers,
            timeout_s=settings.callback_timeout_s,
            deadline_s=exchange_limit_s(settings),
            ca_bundle=settings.callback_ca_bundle,
        )
        if 200 <= status < 300:
            _record(
                engine,
                row.id,
                attempt,
                row,
                status=DELIVERED,
                last_status=status,
                last_error=None,
                delivered_at=utcnow(),
            )
            return f"delivered:{status}"
        error = f"HTTP {status}"
    except DestinationRefused as exc:
        return _give_up(engine, row, attempt, f"refused: {exc}", status)
    except transport.TRANSIENT as exc:  # network, DNS, TLS, timeouts: worth another attempt
        error = f"{type(exc).__name__}: {exc}"
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
        row,
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


def _record(engine: Engine, delivery_id: str, attempt: int, row: Any = None, **values: Any) -> None:
    """Write this attempt's outcome (only while the row is still this attempt's) and, with `row`,
    the attempt into the tenant's audit chain (the submission's timeline shows every attempt)."""
    with engine.begin() as conn:
        mine = conn.execute(update(callback_deliveries).where(_mine(delivery_id, attempt)).values(**values)).rowcount
        if mine and row is not None:
            _audit_attempt(
                conn, row, attempt, values.get("last_status"), values.get("last_error"), values.get("status")
            )


def _audit_attempt(
    conn: Connection, row: Any, attempt: int, status: int | None, error: str | None, outcome: str | None
) -> None:
    append(
        conn,
        row.tenant_id,
        [
            Event(
                "callback_attempted",
                actor="system",
                submission_id=row.submission_id,
                automated=True,
                facts={
                    "delivery_id": row.id,
                    "event": event_name(row.event),
                    "attempt": attempt,
                    "http_status": status,
                    "error": printable(error, 300) if error else None,
                    "outcome": outcome or "retry",
                },
            )
        ],
    )


def _give_up(engine: Engine, row: Any, attempt: int, error: str, status: int | None) -> str:
    with engine.begin() as conn:
        mine = conn.execute(
            update(callback_deliveries)
            .where(_mine(row.id, attempt))
            .values(status=FAILED, last_status=status, last_error=error)
        ).rowcount
        if not mine:
            return "taken"
        _audit_attempt(conn, row, attempt, status, error, FAILED)
        conn.execute(
            insert(dead_letters).values(
                submission_id=row.submission_id,
                task="callback",
                error=printable(error, _DEAD_LETTER_CHARS),
                attempts=attempt,
                payload={"delivery_id": row.id, "url": printable(row.url, _DEAD_LETTER_CHARS), "event": row.event},
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
