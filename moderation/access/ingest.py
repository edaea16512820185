"""Queue-side ingest accounts: which broker account publishes for which tenant.

A platform that submits over a queue gets a broker account of its own (a RabbitMQ user that may
only publish to the ingest exchange, or a Redis ACL user that may only push to its own list),
never a credential inside its messages and never the connection of the internal queues. The
broker authenticates the account; this table maps it to the tenant. Redis accounts also sign
their messages (HMAC with `secret`), since a Redis list does not say who pushed to it.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select, update

from moderation import audit
from moderation.db.tables import ingest_accounts, tenants, utcnow
from moderation.errors import ModerationError

TRANSPORTS = ("amqp", "redis")
ACCOUNT = re.compile(r"^[a-z0-9][a-z0-9_.-]{2,62}$")


@dataclass(frozen=True)
class IngestAccount:
    account: str
    tenant_id: str
    transport: str
    secret: str | None
    default_policy: str | None


def create_account(conn: Connection, tenant_id: str, account: str, transport: str) -> dict[str, Any]:
    """Record a platform's broker account. Returns {"account", "tenant", "transport", "password",
    "secret"}: the broker password to give the platform (and, for Redis, its signing secret),
    shown once; the broker user itself is made by `gateway.provision`."""
    if transport not in TRANSPORTS:
        raise ModerationError("INVALID_REQUEST", f"transport must be one of {', '.join(TRANSPORTS)}.")
    if not ACCOUNT.match(account):
        raise ModerationError("INVALID_REQUEST", "account: 3-63 of a-z, 0-9, '_', '.', '-'.")
    if conn.execute(select(tenants.c.id).where(tenants.c.id == tenant_id)).first() is None:
        raise ModerationError("NOT_FOUND", f"No tenant {tenant_id!r}.")
    if conn.execute(select(ingest_accounts.c.account).where(ingest_accounts.c.account == account)).first():
        raise ModerationError("CONFLICT", f"Ingest account {account!r} exists already.")
    secret = "isec_" + secrets.token_urlsafe(32) if transport == "redis" else None
    conn.execute(
        insert(ingest_accounts).values(
            account=account, tenant_id=tenant_id, transport=transport, secret=secret, created_at=utcnow()
        )
    )
    event = audit.Event(
        "ingest_account_created", actor="cli", automated=False, facts={"account": account, "transport": transport}
    )
    audit.append(conn, tenant_id, [event])
    return {
        "account": account,
        "tenant": tenant_id,
        "transport": transport,
        "password": secrets.token_hex(24),  # hex: never read as an option by rabbitmqctl
        "secret": secret,
    }


def revoke_account(conn: Connection, account: str) -> str:
    """Stop accepting the account's messages (the broker user should be removed too). Returns its tenant."""
    row = conn.execute(select(ingest_accounts.c.tenant_id).where(ingest_accounts.c.account == account)).first()
    if row is None:
        raise ModerationError("NOT_FOUND", f"No ingest account {account!r}.")
    conn.execute(update(ingest_accounts).where(ingest_accounts.c.account == account).values(revoked_at=utcnow()))
    event = audit.Event("ingest_account_revoked", actor="cli", automated=False, facts={"account": account})
    audit.append(conn, row.tenant_id, [event])
    return str(row.tenant_id)


def lookup(conn: Connection, account: str) -> IngestAccount | None:
    """The live account of that name, or None (unknown or revoked)."""
    row = conn.execute(
        select(ingest_accounts, tenants.c.default_policy)
        .join(tenants, tenants.c.id == ingest_accounts.c.tenant_id)
        .where(ingest_accounts.c.account == account)
    ).first()
    if row is None or row.revoked_at is not None:
        return None
    return IngestAccount(row.account, row.tenant_id, row.transport, row.secret, row.default_policy)


def list_accounts(conn: Connection, tenant_id: str | None = None) -> list[dict[str, Any]]:
    q = select(
        ingest_accounts.c.account,
        ingest_accounts.c.tenant_id,
        ingest_accounts.c.transport,
        ingest_accounts.c.created_at,
        ingest_accounts.c.revoked_at,
    ).order_by(ingest_accounts.c.account)
    if tenant_id is not None:
        q = q.where(ingest_accounts.c.tenant_id == tenant_id)
    return [dict(r._mapping) for r in conn.execute(q)]
