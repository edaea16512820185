"""Webhook signatures: per-tenant secrets with rotation and a grace period, and the
`X-Moderation-Signature` header (`t=<unix time>,v1=<hex HMAC-SHA256 of "t.body">`, one `v1=` per valid secret)."""

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
