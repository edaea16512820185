"""Waiting for hash-bank changes to apply in the workers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from moderation.db.tables import audit_events
from tests.support.waiting import wait_until


def bank_changes_applied(ctx: Any, tenant: str) -> None:
    """Wait until every bank change of `tenant` so far applies to the workers' next lookups.

    What cannot be observed: whether a worker's in-memory index has reloaded. Each worker process
    (each prefork child) keeps its own index and refreshes it only on a lookup, once it is older
    than MODERATION_BANK_CACHE_TTL_S; nothing outside the process shows it, and a probe submission
    would only show the one child that took it. Retrying the real submission until its outcome
    appears would accept a stale first decision, which the tests must not.

    What is observed instead is what the product guarantees: a change applies to every lookup that
    starts `bank_cache_ttl_s` after its commit. Every bank change is audited as `bank_changed`,
    written last in the change's own transaction, so the wait is for the tenant's newest
    `bank_changed` event to be older than the workers' `bank_cache_ttl_s` (the same environment,
    so the same setting).
    """
    ttl = ctx.settings.bank_cache_ttl_s

    def applied() -> bool:
        with ctx.engine.connect() as conn:
            newest = conn.execute(
                select(func.max(audit_events.c.occurred_at)).where(
                    audit_events.c.tenant_id == tenant, audit_events.c.action == "bank_changed"
                )
            ).scalar_one()
        assert newest is not None, f"no bank change of {tenant!r} was audited"
        return (datetime.now(UTC) - newest).total_seconds() > ttl

    wait_until(applied, 30, interval=0.05, what=f"bank changes of {tenant!r} older than {ttl} s (the index refresh)")
