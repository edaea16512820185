"""Webhook signatures and the secrets behind them.

Every tenant has its own random secret from the moment it is created (`new_secret`, called by
`access.keys.ensure_tenant`; the 0004 migration gave one to each older tenant): there is no
shared deployment secret, so no tenant can sign another's callbacks. `rotate_secret` replaces
it; the one it replaced keeps signing beside it for a grace period.

`X-Moderation-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<delivery id>.<body>">`, one
`v1=` per valid secret: the MAC binds the body to its delivery id (`X-Moderation-Delivery`, the
receiver's dedupe key) and to the time, so neither can be swapped or replayed under another.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select, update

from moderation import audit
from moderation.db.tables import as_utc, iso, tenants, utcnow
from moderation.errors import ModerationError
from moderation.settings import Settings

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    """A fresh random signing secret (256 bits)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def signed_payload(timestamp: int, delivery_id: str, body: bytes) -> bytes:
    """What the MAC covers: `<t>.<delivery id>.<body>`."""
    return f"{timestamp}.{delivery_id}.".encode() + body


def sign(secret: str | Sequence[str], timestamp: int, delivery_id: str, body: bytes) -> str:
    """`X-Moderation-Signature` value: `t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<delivery id>.<body>">`.

    With several secrets (a rotation's grace period) there is one `v1=` per secret, the current
    one first: a receiver accepts the delivery when any of them verifies with the secret it holds.
    """
    keys = [secret] if isinstance(secret, str) else list(secret)
    payload = signed_payload(timestamp, delivery_id, body)
    macs = [hmac.new(k.encode(), payload, hashlib.sha256).hexdigest() for k in keys]
    return ",".join([f"t={timestamp}", *(f"v1={m}" for m in macs)])


def signing_secrets(conn: Connection, tenant_id: str, settings: Settings, now: datetime | None = None) -> list[str]:
    """The secrets a tenant's deliveries are signed with: its own, and the one it replaced while
    the rotation's grace period lasts.

    Raises ModerationError NOT_FOUND when the tenant does not exist.
    """
    row = conn.execute(
        select(tenants.c.callback_secret, tenants.c.callback_secret_prev, tenants.c.callback_secret_rotated_at).where(
            tenants.c.id == tenant_id
        )
    ).first()
    if row is None or not row.callback_secret:
        raise ModerationError("NOT_FOUND", f"No tenant {tenant_id!r} with a signing secret.")
    keys = [row.callback_secret]
    rotated = row.callback_secret_rotated_at
    grace = timedelta(seconds=settings.callback_secret_grace_s)
    if row.callback_secret_prev and rotated is not None and as_utc(rotated) + grace > (now or utcnow()):
        keys.append(row.callback_secret_prev)
    return keys


def rotate_secret(conn: Connection, tenant_id: str, settings: Settings, actor: str) -> dict[str, Any]:
    """Give the tenant a new signing secret; the old one keeps signing for the grace period.

    Returns {"secret", "previous_valid_until"}: the secret is shown here once. Audited (without it).
    Raises ModerationError NOT_FOUND when the tenant does not exist.
    """
    now = utcnow()
    current = conn.execute(select(tenants.c.callback_secret).where(tenants.c.id == tenant_id).with_for_update()).first()
    if current is None:
        raise ModerationError("NOT_FOUND", f"No tenant {tenant_id!r}.")
    secret = new_secret()
    conn.execute(
        update(tenants)
        .where(tenants.c.id == tenant_id)
        .values(callback_secret=secret, callback_secret_prev=current.callback_secret, callback_secret_rotated_at=now)
    )
    until = iso(now + timedelta(seconds=settings.callback_secret_grace_s))
    event = audit.Event("callback_secret_rotated", actor=actor, automated=False, facts={"previous_valid_until": until})
    audit.append(conn, tenant_id, [event])
    return {"secret": secret, "previous_valid_until": until}
