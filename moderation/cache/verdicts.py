"""The verdict cache: analyzer findings reused for the same tenant, image, caption, policy and analyzers.

Key: the tenant (or `shared` where the deployment opts into cross-tenant reuse) + SHA-256 of the
image + SHA-256 of the caption + policy version + the cascade's analyzer paths, options and
versions. Any change to the image, the caption (analyzers read it as context), a threshold or a
model is a miss. Only findings without errors are stored (a failure is never replayed), and the
policy is evaluated afresh on a hit, so the decision is the one the policy would make.

The tenant is in the key so that one tenant's traffic never shows in another's decisions
(`cached: true` on B's audit events would tell B that A uploaded the image). Every value carries
an HMAC-SHA256 over its key and body (key from settings): whoever can write to the cache's Redis
cannot plant findings, nor move a real entry under another key; an entry that does not verify is
a miss, and is logged. Redis in production, on its own database or instance (memory-bounded,
LRU), never the broker's; an in-process store in the embedded mode.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from typing import Any, Protocol

from moderation.analyzers.base import Finding, analyzer_class
from moderation.policy import Policy
from moderation.settings import Settings
from moderation.ttl import TTLCache

log = logging.getLogger(__name__)

PREFIX = "moderation:verdict:"
SHARED = "shared"  # the key scope when the deployment shares entries across tenants
_MAGIC = b"v1:"
_MAC_HEX = 64


class Store(Protocol):
    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes, ttl_s: int) -> None: ...


class LocalStore:
    """The embedded default's store: in this process only, bounded."""

    def __init__(self, max_items: int = 100_000) -> None:
        self._data: TTLCache[str, bytes] = TTLCache(ttl_s=3600, max_items=max_items)

    def get(self, key: str) -> bytes | None:
        value = self._data.get(key)
        return value if isinstance(value, bytes) else None

    def set(self, key: str, value: bytes, ttl_s: int) -> None:
        self._data.set(key, value, ttl_s)


class RedisStore:
    """A Redis database or instance of the cache's own (`MODERATION_CACHE_URL`)."""

    def __init__(self, url: str) -> None:
        import redis

        self.url = url
        self.client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)

    def get(self, key: str) -> bytes | None:
        value = self.client.get(key)
        return value if isinstance(value, bytes) else None

    def set(self, key: str, value: bytes, ttl_s: int) -> None:
        self.client.set(key, value, ex=ttl_s)

    def bounded(self) -> bool | None:
        """Whether the server has a memory bound and an evicting policy (None: it will not say,
        as managed Redis often hides CONFIG)."""
        try:
            limit = self.client.config_get("maxmemory").get("maxmemory")
            policy = self.client.config_get("maxmemory-policy").get("maxmemory-policy")
        except Exception:
            return None
        return str(limit) not in ("0", "b'0'", "None") and str(policy).startswith("allkeys-")


def build_store(settings: Settings) -> tuple[Store, bytes]:
    """The store the settings select, and the MAC key for its values.

    Redis only with both `cache_url` and `cache_key` set: a shared store needs one key known to
    every process. Without them the store is this process's own (with a random key), so the
    cache never lands on the broker's Redis, where platforms and the queues live.
    """
    if settings.cache_url and settings.cache_key:
        store = RedisStore(settings.cache_url)
        if settings.cache_url == settings.celery_broker_url:
            log.error("MODERATION_CACHE_URL is the broker's URL: give the verdict cache its own Redis database")
        elif store.bounded() is False:
            log.warning("the verdict cache's Redis has no memory bound or no allkeys-* eviction policy")
        return store, settings.cache_key.encode()
    if settings.cache_url:
        log.error("MODERATION_CACHE_URL is set without MODERATION_CACHE_KEY: the verdict cache stays in-process")
    return LocalStore(settings.cache_max_items), secrets.token_bytes(32)


class VerdictCache:
    def __init__(self, store: Store, settings: Settings | None = None, mac_key: bytes | None = None) -> None:
        self.store = store
        self.settings = settings or Settings()
        self._mac_key = mac_key or secrets.token_bytes(32)
        self._signatures: dict[str, str] = {}
        self.rejected = 0  # entries that did not verify (planted or corrupted), since start

    def signature(self, policy: Policy) -> str:
        """The policy version plus what identifies each analyzer of its cascade."""
        if policy.version not in self._signatures:
            parts = [policy.version]
            for stage in policy.analyzer_stages:
                assert stage.analyzer is not None
                cls = analyzer_class(stage.analyzer)
                options = json.dumps(stage.options, sort_keys=True)
                parts.append(f"{stage.stage}={stage.analyzer}@{cls.identity(stage.options, self.settings)}:{options}")
            self._signatures[policy.version] = hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]
        return self._signatures[policy.version]

    def key(self, policy: Policy, tenant_id: str, sha256: str, caption: str | None) -> str:
        scope = SHARED if self.settings.cache_shared_across_tenants else hashlib.sha256(tenant_id.encode()).hexdigest()
        caption_hash = hashlib.sha256((caption or "").encode()).hexdigest()[:32]
        return f"{PREFIX}{scope[:32]}:{sha256}:{caption_hash}:{self.signature(policy)}"

    def _mac(self, key: str, body: bytes) -> bytes:
        return hmac.new(self._mac_key, key.encode() + b"\n" + body, hashlib.sha256).hexdigest().encode()

    def seal(self, key: str, body: bytes) -> bytes:
        return _MAGIC + self._mac(key, body) + b":" + body

    def open(self, key: str, raw: bytes) -> bytes | None:
        """The body of a sealed value, or None when its MAC does not verify for this key."""
        head = len(_MAGIC)
        if not raw.startswith(_MAGIC) or raw[head + _MAC_HEX : head + _MAC_HEX + 1] != b":":
            return None
        mac, body = raw[head : head + _MAC_HEX], raw[head + _MAC_HEX + 1 :]
        return body if hmac.compare_digest(mac, self._mac(key, body)) else None

    def get(self, policy: Policy, tenant_id: str, sha256: str, caption: str | None) -> list[Finding] | None:
        if not policy.cache.enabled or not policy.analyzer_stages:
            return None
        key = self.key(policy, tenant_id, sha256, caption)
        try:
            raw = self.store.get(key)
        except Exception:  # the cache is an optimisation: an unreachable store is a miss
            return None
        if raw is None:
            return None
        body = self.open(key, raw)
        if body is None:
            self.rejected += 1
            log.warning("verdict cache entry %s does not verify (planted or corrupted): ignored", key)
            return None
        try:
            findings = [Finding.from_json(f) for f in json.loads(body)]
        except Exception:  # written by another version: a miss
            return None
        if any(f.problem() for f in findings):
            return None
        for f in findings:
            f.cached = True
        return findings

    def put(self, policy: Policy, tenant_id: str, sha256: str, caption: str | None, findings: list[Finding]) -> bool:
        """Store the analyzer findings of a completed cascade (not bank findings, never errors)."""
        analyzed = [f for f in findings if f.stage not in ("banks", "cache")]
        if not policy.cache.enabled or not analyzed or any(f.error for f in findings):
            return False
        payload: list[dict[str, Any]] = [{**f.to_json(), "cached": False} for f in analyzed]
        key = self.key(policy, tenant_id, sha256, caption)
        try:
            self.store.set(key, self.seal(key, json.dumps(payload).encode()), policy.cache.ttl_s)
        except Exception:
            return False
        return True
