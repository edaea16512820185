"""Tenants and API keys: create, list, revoke, rotate. Only a key's SHA-256 is stored; the key
itself is returned once, by `create_key` and `rotate_key`, and never logged or audited (events
carry the key id). Revocation and rotation bump the access epoch in the same transaction, so
every process's key cache follows within `key_revocation_poll_s`."""

from __future__ import annotations

import re
import secrets
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, insert, select, update

from moderation import audit
from moderation.access import epoch
from moderation.access.auth import ROLES, digest
from moderation.db.tables import api_keys, as_utc, iso, tenants, utcnow
from moderation.errors import ModerationError
from moderation.intake.text import check_text

_KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")  # ids are 12 hex digits; junk is not looked up
MAX_GRACE_S = 30 * 86_400.0  # a rotated key kept alive longer than this is a second key, not a rotation


def ensure_tenant(conn: Connection, tenant_id: str, name: str | None = None) -> None:
    if conn.execute(select(tenants.c.id).where(tenants.c.id == tenant_id)).first() is None:
        # Its own webhook signing secret from the start (no shared default a tenant could sign
        # another's callbacks with); the form of callbacks.signing.new_secret, which this
        # sibling package may not import. Rotating it is how a platform gets to see it.
        secret = "whsec_" + secrets.token_urlsafe(32)
        conn.execute(
            insert(tenants).values(id=tenant_id, name=name or tenant_id, callback_secret=secret, created_at=utcnow())
        )
    audit.ensure_head(conn, tenant_id)


def create_key(conn: Connection, tenant_id: str, roles: list[str], label: str | None = None, actor: str = "cli") -> str:
    """Create a key (and the tenant if new). Returns the key itself: it is shown once, never stored.

    Raises ModerationError INVALID_REQUEST for roles outside ROLES or a label over 200 characters."""
    roles = _check_roles(roles)
    if label is not None and len(label) > 200:
        raise ModerationError("INVALID_REQUEST", "label is at most 200 characters.", field="label")
    check_text("label", label, 200)
    ensure_tenant(conn, tenant_id)
    key_id, key = _insert_key(conn, tenant_id, roles, label)
    audit.append(
        conn,
        tenant_id,
        [audit.Event("key_created", actor=actor, automated=False, facts={"key_id": key_id, "roles": roles})],
    )
    return key


def _check_roles(roles: list[str]) -> list[str]:
    bad = sorted(set(roles) - set(ROLES))
    if bad or not roles:
        raise ModerationError("INVALID_REQUEST", f"roles must be among {', '.join(ROLES)}; got {roles}", field="roles")
    return sorted(set(roles))


def _insert_key(conn: Connection, tenant_id: str, roles: list[str], label: str | None) -> tuple[str, str]:
    key_id = secrets.token_hex(6)
    key = f"mk_{key_id}_{secrets.token_urlsafe(24)}"
    conn.execute(
        insert(api_keys).values(
            id=key_id,
            tenant_id=tenant_id,
            key_hash=digest(key),
            prefix=f"mk_{key_id}",
            roles=roles,
            label=label,
            created_at=utcnow(),
        )
    )
    return key_id, key


def _view(row: Any) -> dict[str, Any]:
    """A key as listed: never the key or its hash."""
    revoked = None if row.revoked_at is None else as_utc(row.revoked_at)
    state = "active" if revoked is None else ("revoked" if revoked <= utcnow() else "expiring")
    return {
        "id": row.id,
        "prefix": row.prefix,
        "tenant_id": row.tenant_id,
        "roles": list(row.roles),
        "label": row.label,
        "created_at": iso(row.created_at),
        "last_used_at": iso(row.last_used_at),
        "revoked_at": iso(revoked),
        "state": state,
    }


_COLUMNS = (
    api_keys.c.id,
    api_keys.c.prefix,
    api_keys.c.tenant_id,
    api_keys.c.roles,
    api_keys.c.label,
    api_keys.c.created_at,
    api_keys.c.last_used_at,
    api_keys.c.revoked_at,
)


def list_keys(conn: Connection, tenant_id: str | None = None) -> list[dict[str, Any]]:
    """Every key (of one tenant), oldest first: id, prefix, tenant, roles, label, times, state."""
    query = select(*_COLUMNS).order_by(api_keys.c.tenant_id, api_keys.c.created_at, api_keys.c.id)
    if tenant_id is not None:
        query = query.where(api_keys.c.tenant_id == tenant_id)
    return [_view(r) for r in conn.execute(query)]


def get_key(conn: Connection, key_id: str, tenant_id: str | None = None, *, lock: bool = False) -> dict[str, Any]:
    """One key as listed. Raises ModerationError NOT_FOUND when it does not exist or belongs to
    another tenant than `tenant_id` (when given): the same answer, so ids of other tenants'
    keys cannot be probed."""
    query = select(*_COLUMNS).where(api_keys.c.id == key_id)
    if tenant_id is not None:
        query = query.where(api_keys.c.tenant_id == tenant_id)
    if lock:
        query = query.with_for_update()
    row = conn.execute(query).first() if _KEY_ID.fullmatch(key_id) else None
    if row is None:
        raise ModerationError("NOT_FOUND", f"No API key {key_id[:32]!r}.")
    return _view(row)


def revoke_key(conn: Connection, key_id: str, actor: str, tenant_id: str | None = None) -> dict[str, Any]:
    """Revoke a key now (one in a rotation's grace period too). Revoking a revoked key changes
    nothing. Returns the key as listed. Raises ModerationError NOT_FOUND (see `get_key`)."""
    key = get_key(conn, key_id, tenant_id, lock=True)
    if key["state"] == "revoked":
        return key
    now = utcnow()
    conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(revoked_at=now))
    epoch.bump(conn)
    audit.append(
        conn,
        key["tenant_id"],
        [audit.Event("key_revoked", actor=actor, automated=False, facts={"key_id": key_id, "revoked_at": iso(now)})],
    )
    return get_key(conn, key_id)


def rotate_key(
    conn: Connection, key_id: str, actor: str, tenant_id: str | None = None, grace_s: float = 0.0
) -> tuple[str, dict[str, Any]]:
    """Replace a key by a new one with the same tenant, roles and label; the old one is revoked
    now, or after `grace_s` seconds (both work meanwhile). Returns (the new key, shown once;
    the new key as listed).

    Raises ModerationError NOT_FOUND (see `get_key`), CONFLICT when the key is revoked or
    already being rotated, INVALID_REQUEST for a grace period outside [0, 30 days]."""
    if not 0 <= grace_s <= MAX_GRACE_S:
        raise ModerationError("INVALID_REQUEST", f"grace_s must lie in [0, {MAX_GRACE_S:.0f}].", field="grace_s")
    old = get_key(conn, key_id, tenant_id, lock=True)
    if old["state"] != "active":
        raise ModerationError("CONFLICT", f"API key {key_id} is {old['state']}; rotate its replacement instead.")
    new_id, new_key = _insert_key(conn, old["tenant_id"], old["roles"], old["label"])
    revoked_at = utcnow() + timedelta(seconds=grace_s)
    conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(revoked_at=revoked_at))
    epoch.bump(conn)
    audit.append(
        conn,
        old["tenant_id"],
        [
            audit.Event(
                "key_rotated",
                actor=actor,
                automated=False,
                facts={
                    "key_id": key_id,
                    "new_key_id": new_id,
                    "roles": old["roles"],
                    "old_key_revoked_at": iso(revoked_at),
                },
            )
        ],
    )
    return new_key, get_key(conn, new_id)
