"""API keys: stored as SHA-256 digests, each bound to one tenant and a set of roles.

A key looks like `mk_<id>_<secret>`; only its digest is stored, so a database leak reveals
no usable key. Lookups (keys and tenants' policy settings) are cached in-process so that
authentication costs no database round trip per request; the cache is dropped whenever the
access epoch moves (`epoch`: bumped by every revocation, rotation and tenant change), which
each process reads at most every `poll_s`. A revoked key therefore fails in every process
within `poll_s` (0.5 s by default). A rotated key kept alive for a grace period carries its end
(`expires_at`) and stops at that instant without any poll.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select

from moderation.access import epoch
from moderation.access.usage import LastUsedWriter
from moderation.db.tables import api_keys, as_utc, tenants, utcnow
from moderation.errors import ModerationError
from moderation.ttl import Missing, TTLCache

# senior_moderator: a moderator who also decides escalations; restricted_reviewer: the only role
# that sees the child-safety (restricted) queue, whose tasks do not exist for anyone else.
ROLES = ("submitter", "moderator", "senior_moderator", "restricted_reviewer", "auditor", "admin")


@dataclass(frozen=True)
class Principal:
    key_id: str
    tenant_id: str
    roles: frozenset[str]
    default_policy: str | None = None
    expires_at: datetime | None = None  # a rotated key in its grace period

    def require(self, *roles: str) -> None:
        if not self.roles.intersection(roles):
            raise ModerationError("FORBIDDEN", f"This endpoint needs one of the roles: {', '.join(roles)}.")


@dataclass(frozen=True)
class TenantAccess:
    """What a tenant's submissions may choose: its default policy and its allow-list.

    `allowed_policies` None: every policy the deployment ships. Otherwise the list, plus the
    tenant's effective default (naming the policy one would get anyway grants nothing)."""

    tenant_id: str
    default_policy: str | None
    allowed_policies: frozenset[str] | None

    def allows(self, policy_id: str, deployment_default: str) -> bool:
        if self.allowed_policies is None:
            return True
        return policy_id in self.allowed_policies or policy_id == (self.default_policy or deployment_default)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyCache:
    """The process's view of keys and tenants (thread-safe). See the module docstring."""

    def __init__(self, engine: Engine, ttl_s: float, poll_s: float = 0.5, last_used_every_s: float = 60.0) -> None:
        self.engine = engine
        self.poll_s = poll_s
        self._entries: TTLCache[str, Principal | None] = TTLCache(ttl_s, max_items=10_000)
        self._tenants: TTLCache[str, TenantAccess | None] = TTLCache(ttl_s, max_items=10_000)
        self._epoch: int | None = None
        self._next_poll = 0.0
        self._poll_lock = threading.Lock()
        # Bumped when the caches are dropped: a lookup that started before the drop may have
        # read the old row, so its result is not cached.
        self._generation = 0
        self.last_used = LastUsedWriter(engine, last_used_every_s)

    def authenticate(self, authorization: str | None, lookup: bool = True) -> Principal:
        """The caller of `Authorization: Bearer <key>`. With `lookup` False only a key this
        process holds in its cache is known (an address guessing keys costs no database read,
        while the keys in use from it still work).

        Raises ModerationError UNAUTHENTICATED for a missing, unknown, revoked or expired key
        (and, without `lookup`, for one not in the cache); a database error when the access
        epoch cannot be read (fail closed: 503)."""
        if not authorization or not authorization.lower().startswith("bearer "):
            raise ModerationError("UNAUTHENTICATED", "Send 'Authorization: Bearer <key>'.")
        key = authorization[7:].strip()
        h = digest(key)
        self._sync()
        principal = self._entries.get(h)
        if isinstance(principal, Missing) and not lookup:
            raise ModerationError("UNAUTHENTICATED", "Unknown key (not looked up for this address now).")
        if isinstance(principal, Missing):
            generation = self._generation
            principal = self._load(h)
            if generation == self._generation:
                self._entries.set(h, principal)
        if principal is None or (principal.expires_at is not None and principal.expires_at <= utcnow()):
            raise ModerationError("UNAUTHENTICATED", "Unknown or revoked API key.")
        self.last_used.touch(principal.key_id)
        return principal

    def peek(self, authorization: str | None) -> Principal | None:
        """The caller when this process already knows the key and no epoch read is due: no
        database, no lock, so the API can answer it on the event loop. None: ask `authenticate`
        (unknown here, a read due, or no longer valid)."""
        if time.monotonic() >= self._next_poll or not authorization or not authorization.lower().startswith("bearer "):
            return None
        principal = self._entries.get(digest(authorization[7:].strip()))
        if not isinstance(principal, Principal):
            return None
        if principal.expires_at is not None and principal.expires_at <= utcnow():
            return None
        self.last_used.touch(principal.key_id)
        return principal

    def tenant(self, tenant_id: str) -> TenantAccess | None:
        """The tenant's policy settings (None: no such tenant), cached like keys."""
        self._sync()
        access = self._tenants.get(tenant_id)
        if isinstance(access, Missing):
            generation = self._generation
            with self.engine.connect() as conn:
                row = conn.execute(
                    select(tenants.c.default_policy, tenants.c.allowed_policies).where(tenants.c.id == tenant_id)
                ).first()
            access = (
                None
                if row is None
                else TenantAccess(
                    tenant_id,
                    row.default_policy,
                    None if row.allowed_policies is None else frozenset(row.allowed_policies),
                )
            )
            if generation == self._generation:
                self._tenants.set(tenant_id, access)
        return access

    def invalidate(self) -> None:
        """Drop every cached key and tenant (this process only; others follow the epoch)."""
        self._generation += 1
        self._entries = TTLCache(self._entries.ttl_s, self._entries.max_items)
        self._tenants = TTLCache(self._tenants.ttl_s, self._tenants.max_items)

    def _sync(self) -> None:
        """Read the access epoch when `poll_s` has passed since the last read; drop the caches
        when it moved. Threads that find a read due wait for it (a few ms), so none of them uses
        an entry older than `poll_s` plus that read."""
        if time.monotonic() < self._next_poll:
            return
        with self._poll_lock:
            started = time.monotonic()
            if started < self._next_poll:
                return  # another thread just read it
            current = epoch.poll(self.engine)
            if current != self._epoch:
                if self._epoch is not None:
                    self.invalidate()
                self._epoch = current
            self._next_poll = started + self.poll_s

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
        if row is None:
            return None
        expires_at = None if row.revoked_at is None else as_utc(row.revoked_at)
        if expires_at is not None and expires_at <= utcnow():
            return None
        return Principal(
            key_id=row.id,
            tenant_id=row.tenant_id,
            roles=frozenset(row.roles),
            default_policy=row.default_policy,
            expires_at=expires_at,
        )
