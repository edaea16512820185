"""Rate limits: token buckets per API key, per client address and per tenant's `high` priority.

`Limiter.take(buckets)` takes one token from each bucket, or from none: it answers 0 when the
request may go on, else the seconds until it may (the `Retry-After` the API sends with 429).
Redis holds the buckets where the deployment has it (shared by every API replica, one script
call per request, the server's clock); the embedded default keeps them in-process. A limiter
that cannot reach Redis lets requests through (and logs it): rate limits protect the service,
they must not become the outage.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bucket:
    key: str
    rate: float  # tokens per second
    burst: float  # the bucket's size


class Limiter(Protocol):
    def take(self, buckets: list[Bucket]) -> float: ...


class LocalLimiter:
    """This process's buckets (the embedded default: one API process)."""

    def __init__(self, max_buckets: int = 100_000) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self.max_buckets = max_buckets

    def take(self, buckets: list[Bucket]) -> float:
        now = time.monotonic()
        with self._lock:
            if len(self._buckets) > self.max_buckets:  # forget the idle ones (they are full again anyway)
                self._buckets = {k: v for k, v in self._buckets.items() if now - v[0] < 60}
            levels = []
            for b in buckets:
                stamp, tokens = self._buckets.get(b.key, (now, b.burst))
                levels.append(min(b.burst, tokens + (now - stamp) * b.rate))
            wait = max(((1 - level) / b.rate for b, level in zip(buckets, levels, strict=True) if level < 1), default=0)
            if wait > 0:
                return wait
            for b, level in zip(buckets, levels, strict=True):
                self._buckets[b.key] = (now, level - 1)
            return 0.0


# KEYS: the buckets; ARGV: rate, burst for each. One token from each, or none.
_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local levels = {}
local wait = 0
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  local b = redis.call('HMGET', key, 's', 'v')
  local stamp = tonumber(b[1]) or now
  local level = tonumber(b[2]) or burst
  level = math.min(burst, level + (now - stamp) * rate)
  levels[i] = level
  if level < 1 then wait = math.max(wait, (1 - level) / rate) end
end
if wait > 0 then return tostring(wait) end
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i - 1])
  local burst = tonumber(ARGV[2 * i])
  redis.call('HSET', key, 's', tostring(now), 'v', tostring(levels[i] - 1))
  redis.call('PEXPIRE', key, math.ceil(burst / rate * 1000) + 1000)
end
return '0'
"""


class RedisLimiter:
    """Buckets in Redis, shared by every API replica."""

    def __init__(self, url: str, prefix: str = "moderation:rl:") -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.prefix = prefix
        self._script: Any = self.client.register_script(_SCRIPT)
        self._warned = 0.0

    def take(self, buckets: list[Bucket]) -> float:
        keys = [self.prefix + b.key for b in buckets]
        args: list[float] = []
        for b in buckets:
            args += [b.rate, b.burst]
        try:
            return float(self._script(keys=keys, args=args))
        except Exception as exc:  # Redis unreachable: let the request through
            if time.monotonic() - self._warned > 60:
                self._warned = time.monotonic()
                log.warning("rate limits not applied (Redis unreachable): %s", exc)
            return 0.0


def build_limiter(redis_url: str | None) -> Limiter:
    return RedisLimiter(redis_url) if redis_url else LocalLimiter()
