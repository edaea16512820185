"""API keys: stored as SHA-256 digests, each bound to one tenant and a set of roles.

A key looks like `mk_<id>_<secret>`; only its digest is stored, so a database leak reveals
no usable key. Lookups are cached in-process for `key_cache_ttl_s` (a revoked key stops
working within that time) so that authentication costs no database round trip per request.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy import Engine, select

from moderation.db.tables import api_keys, tenants
from moderation.errors import ModerationError
from moderation.ttl import Missing, TTLCache

ROLES = ("submitter", "moderator", "auditor", "admin")


@dataclass(frozen=True)
class Principal:
    key_id: str
    tenant_id: str
    roles: frozenset[str]
    default_policy: str | None = None

    def require(self, *roles: str) -> None:
        if not self.roles.intersection(roles):
            raise ModerationError("FORBIDDEN", f"This endpoint needs one of the roles: {', '.join(roles)}.")


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyCache:
    def __init__(self, engine: Engine, ttl_s: float) -> None:
        self.engine = engine
        self._entries: TTLCache[str, Principal | None] = TTLCache(ttl_s, max_items=10_000)

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise ModerationError("UNAUTHENTICATED", "Send 'Authorization: Bearer <key>'.")
        key = authorization[7:].strip()
        h = digest(key)
        principal = self._entries.get(h)
        if isinstance(principal, Missing):
            principal = self._load(h)
            self._entries.set(h, principal)
        if principal is None:
            raise ModerationError("UNAUTHENTICATED", "Unknown or revoked API key.")
        return principal

    def _load(self, key_hash: str) -> Principal | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(
                    api_keys.c.id,
                    api_keys.c.tenant_id,
                    api_keys.c.roles,
                    api_keys.c.revoked_at,
                    tenants.c.default_policy,
                )
                .join(tenants, tenants.c.id == api_keys.c.tenant_id)
                .where(api_keys.c.key_hash == key_hash)
            ).first()
        if row is None or row.revoked_at is not None:
            return None
        return Principal(
            key_id=row.id, tenant_id=row.tenant_id, roles=frozenset(row.roles), default_policy=row.default_policy
        )
