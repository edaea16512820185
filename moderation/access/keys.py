"""Tenants and API keys: only a key's SHA-256 is stored; the key itself is shown once."""

from __future__ import annotations

import secrets

from sqlalchemy import Connection, insert, select

from moderation import audit
from moderation.access.auth import ROLES, digest
from moderation.db.tables import api_keys, tenants, utcnow


def ensure_tenant(conn: Connection, tenant_id: str, name: str | None = None) -> None:
    if conn.execute(select(tenants.c.id).where(tenants.c.id == tenant_id)).first() is None:
        conn.execute(insert(tenants).values(id=tenant_id, name=name or tenant_id, created_at=utcnow()))
    audit.ensure_head(conn, tenant_id)


def create_key(conn: Connection, tenant_id: str, roles: list[str], label: str | None = None) -> str:
    """Create a key (and the tenant if new). Returns the key itself: it is shown once, never stored."""
    bad = sorted(set(roles) - set(ROLES))
    if bad or not roles:
        raise ValueError(f"roles must be among {', '.join(ROLES)}; got {roles}")
    ensure_tenant(conn, tenant_id)
    key_id = secrets.token_hex(6)
    key = f"mk_{key_id}_{secrets.token_urlsafe(24)}"
    conn.execute(
        insert(api_keys).values(
            id=key_id,
            tenant_id=tenant_id,
            key_hash=digest(key),
            prefix=f"mk_{key_id}",
            roles=sorted(set(roles)),
            label=label,
            created_at=utcnow(),
        )
    )
    audit.append(
        conn,
        tenant_id,
        [audit.Event("key_created", actor="cli", automated=False, facts={"key_id": key_id, "roles": sorted(roles)})],
    )
    return key
