"""Sessions of the web console: an API key with a reviewing role is exchanged once for a random
session token (the browser keeps it in an HttpOnly, SameSite=Strict cookie; the database keeps
its SHA-256), with a CSRF token for every form. A session is only as good as its key: a revoked
key (or one whose grace period ended) ends every session made with it at the next request, and
its roles are read from the key each time. The console's claim tokens live here too, so that the
browser never holds them."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, or_, select, update

from moderation.db.tables import api_keys, as_utc, web_sessions


@dataclass(frozen=True)
class WebSession:
    token_hash: str
    tenant_id: str
    key_id: str
    roles: frozenset[str]
    label: str | None
    csrf: str
    claims: dict[str, str]  # task id -> claim token
    expires_at: datetime


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_session(conn: Connection, tenant_id: str, key_id: str, ttl_s: float, now: datetime) -> str:
    """A new session for the key; returns its token (for the cookie, shown nowhere else)."""
    token = secrets.token_urlsafe(32)
    conn.execute(
        web_sessions.insert().values(
            token_hash=_hash(token),
            tenant_id=tenant_id,
            key_id=key_id,
            csrf=secrets.token_urlsafe(24),
            claims={},
            created_at=now,
            expires_at=now + timedelta(seconds=ttl_s),
        )
    )
    return token


def load_session(conn: Connection, token: str | None, now: datetime) -> WebSession | None:
    """The live session of `token` with its key's current roles (None: none, expired, signed
    out, or its key revoked)."""
    if not token or len(token) > 100:
        return None
    s, k = web_sessions.c, api_keys.c
    row = conn.execute(
        select(s.token_hash, s.tenant_id, s.key_id, s.csrf, s.claims, s.expires_at, k.roles, k.label)
        .join(api_keys, and_(k.id == s.key_id, k.tenant_id == s.tenant_id))
        .where(
            and_(
                s.token_hash == _hash(token),
                s.revoked_at.is_(None),
                s.expires_at > now,
                or_(k.revoked_at.is_(None), k.revoked_at > now),
            )
        )
    ).first()
    if row is None:
        return None
    return WebSession(
        token_hash=row.token_hash,
        tenant_id=row.tenant_id,
        key_id=row.key_id,
        roles=frozenset(row.roles or []),
        label=row.label,
        csrf=row.csrf,
        claims=dict(row.claims or {}),
        expires_at=as_utc(row.expires_at),
    )


def end_session(conn: Connection, token: str | None, now: datetime) -> None:
    if token and len(token) <= 100:
        conn.execute(update(web_sessions).where(web_sessions.c.token_hash == _hash(token)).values(revoked_at=now))


def remember_claim(conn: Connection, session: WebSession, task_id: str, claim_token: str | None) -> None:
    """Keep (or, with None, forget) the console's claim token for a task; at most 20 kept."""
    claims: dict[str, Any] = dict(session.claims)
    if claim_token is None:
        claims.pop(task_id, None)
    else:
        claims[task_id] = claim_token
        while len(claims) > 20:
            claims.pop(next(iter(claims)))
    conn.execute(update(web_sessions).where(web_sessions.c.token_hash == session.token_hash).values(claims=claims))
