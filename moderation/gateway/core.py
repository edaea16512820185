"""What both transports share: account lookup, decoding, and retrying a message until it is
stored or rejected (a database outage keeps it unacknowledged, never loses it)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from moderation.access.ingest import IngestAccount, lookup
from moderation.errors import ModerationError
from moderation.pipeline.context import Context
from moderation.pipeline.queue_message import record_rejection, submit_message
from moderation.ttl import Missing, TTLCache

log = logging.getLogger(__name__)


def _transient() -> tuple[type[BaseException], ...]:
    """Faults of the database or the broker: the message is still ours to store, later."""
    from kombu.exceptions import OperationalError as KombuOperationalError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError, TimeoutError

    return (
        OperationalError,
        InterfaceError,
        DisconnectionError,
        TimeoutError,
        KombuOperationalError,
        RedisConnectionError,
        RedisTimeoutError,
        ConnectionError,
        OSError,
    )


TRANSIENT = _transient()


class Gateway:
    def __init__(self, ctx: Context, stop: threading.Event | None = None, account_ttl_s: float = 1.0) -> None:
        self.ctx = ctx
        self.stop = stop or threading.Event()
        # A revoked account stops within this time.
        self._accounts: TTLCache[str, IngestAccount | None] = TTLCache(account_ttl_s, max_items=10_000)
        self.handled = 0

    def max_body(self) -> int:
        return self.ctx.settings.max_upload_bytes * 4 // 3 + 64 * 1024

    def account(self, name: str | None) -> IngestAccount | None:
        if not name:
            return None
        found = self._accounts.get(name)
        if isinstance(found, Missing):
            with self.ctx.engine.connect() as conn:
                found = lookup(conn, name)
            self._accounts.set(name, found)
        return found

    def handle(self, account_name: str | None, body: bytes, transport: str, signature: str | None = None) -> Any:
        """One message, once. Raises what is worth retrying (database/broker faults)."""
        account = self.account(account_name)
        if account is not None and account.transport != transport:
            account = None  # a Redis account's name on RabbitMQ, or the other way round
        tenant = account.tenant_id if account else None
        if len(body) > self.max_body():
            exc = ModerationError("IMAGE_TOO_LARGE", "The message is over the upload size cap.")
            record_rejection(self.ctx, tenant, None, exc)
            return {"rejected": exc.code}
        try:
            message = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):  # nested past the parser's limit too
            exc = ModerationError("INVALID_MESSAGE", "The message is not JSON (or nests too deep).")
            record_rejection(self.ctx, tenant, None, exc)
            return {"rejected": exc.code}
        if account is not None and transport == "redis":
            expected = hmac.new((account.secret or "").encode(), body, hashlib.sha256).hexdigest()
            if not account.secret or not hmac.compare_digest(expected, signature or ""):
                exc = ModerationError("UNAUTHENTICATED", "The message's signature does not verify.")
                # Not the tenant's (whoever pushed it lacks its secret): a dead letter, not an event
                # in the tenant's own audit chain.
                record_rejection(self.ctx, None, message, exc)
                return {"rejected": exc.code}
        return submit_message(self.ctx, account, message)

    def give_up(self, account_name: str | None, body: bytes, why: str) -> bool:
        """Record a message that no gateway could finish (a poison input that kills or hangs the
        process that parses it): dead-lettered with the reason, never tried again. False when
        asked to stop before it was recorded (the caller leaves it unacknowledged)."""
        try:
            message = json.loads(body) if len(body) <= self.max_body() else None
        except (ValueError, UnicodeDecodeError, RecursionError):
            message = None
        exc = ModerationError("IMAGE_CORRUPT", f"The message was given up: {why}.")
        log.error("queue-side message of %s given up: %s", account_name, why)

        def record() -> bool:
            account = self.account(account_name)
            record_rejection(self.ctx, account.tenant_id if account else None, message, exc)
            return True

        return self._until_done(record) is not None

    def _refuse(self, account_name: str | None, body: bytes, exc: Exception) -> Any:
        """A message that fails in a way no retry will change (a bug, a value the database
        refuses): rejected with the reason, so it neither blocks the consumer nor is lost."""
        log.exception("queue-side message of %s cannot be processed", account_name, exc_info=exc)
        account = self.account(account_name)
        error = ModerationError("INVALID_MESSAGE", f"The message cannot be processed ({type(exc).__name__}).")
        try:
            message = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            message = None
        record_rejection(self.ctx, account.tenant_id if account else None, message, error)
        return {"rejected": error.code, "message": error.message}

    def handle_until_done(
        self, account_name: str | None, body: bytes, transport: str, signature: str | None = None
    ) -> Any:
        """`handle`, retried with backoff (1 s doubling to 30 s) while the database, broker or blob
        store is down. Returns None when asked to stop first: the caller then leaves the message
        unacknowledged, and the broker gives it to the next gateway."""

        def attempt() -> Any:
            try:
                return self.handle(account_name, body, transport, signature)
            except TRANSIENT:
                raise
            except ModerationError as exc:
                if not exc.final:  # the blob store (or another service) is unreachable: retried
                    raise
                return self._refuse(account_name, body, exc)
            except Exception as exc:  # not the database, broker or blob store: retrying changes nothing
                return self._refuse(account_name, body, exc)

        outcome = self._until_done(attempt)
        if outcome is not None:
            self.handled += 1
        return outcome

    def _until_done(self, step: Callable[[], Any]) -> Any:
        delay = 1.0
        while True:
            try:
                return step()
            except Exception as exc:  # a fault outside the message: it is still ours to store
                log.warning("queue-side submission not stored yet (retrying in %.0f s): %s", delay, exc)
                if self.stop.wait(delay):
                    return None
                delay = min(delay * 2, 30.0)
