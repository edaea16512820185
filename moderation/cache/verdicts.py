"""The verdict cache: analyzer findings reused for the same image, caption, policy and analyzers.

Key: SHA-256 of the image + SHA-256 of the caption + policy version + the cascade's analyzer
paths, options and versions. Any change to the image, the caption (analyzers read it as
context), a threshold or a model is a miss. Only findings without errors are stored (a failure
is never replayed), and the policy is evaluated afresh on a hit, so the decision is the one the
policy would make. Redis in production (TTL per policy); an in-process dict in the embedded mode.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Protocol

from moderation.analyzers.base import Finding, analyzer_class
from moderation.policy import Policy
from moderation.settings import Settings
from moderation.ttl import TTLCache

PREFIX = "moderation:verdict:"


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
    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)

    def get(self, key: str) -> bytes | None:
        value = self.client.get(key)
        return value if isinstance(value, bytes) else None

    def set(self, key: str, value: bytes, ttl_s: int) -> None:
        self.client.set(key, value, ex=ttl_s)


class VerdictCache:
    def __init__(self, store: Store, settings: Settings | None = None) -> None:
        self.store = store
        self.settings = settings or Settings()
        self._signatures: dict[str, str] = {}

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

    def key(self, policy: Policy, sha256: str, caption: str | None) -> str:
        caption_hash = hashlib.sha256((caption or "").encode()).hexdigest()[:32]
        return f"{PREFIX}{sha256}:{caption_hash}:{self.signature(policy)}"

    def get(self, policy: Policy, sha256: str, caption: str | None) -> list[Finding] | None:
        if not policy.cache.enabled or not policy.analyzer_stages:
            return None
        try:
            raw = self.store.get(self.key(policy, sha256, caption))
            if raw is None:
                return None
            findings = [Finding.from_json(f) for f in json.loads(raw)]
        except Exception:  # the cache is an optimisation: a broken or unreadable entry is a miss
            return None
        if any(f.problem() for f in findings):
            return None
        for f in findings:
            f.cached = True
        return findings

    def put(self, policy: Policy, sha256: str, caption: str | None, findings: list[Finding]) -> bool:
        """Store the analyzer findings of a completed cascade (not bank findings, never errors)."""
        analyzed = [f for f in findings if f.stage not in ("banks", "cache")]
        if not policy.cache.enabled or not analyzed or any(f.error for f in findings):
            return False
        payload: list[dict[str, Any]] = [{**f.to_json(), "cached": False} for f in analyzed]
        try:
            self.store.set(self.key(policy, sha256, caption), json.dumps(payload).encode(), policy.cache.ttl_s)
        except Exception:
            return False
        return True
