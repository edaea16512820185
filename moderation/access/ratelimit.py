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

    def try_take(self, buckets: list[Bucket]) -> float | None:
        """`take` when it needs no I/O (the API calls it on its event loop); None: call `take`."""


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

    def try_take(self, buckets: list[Bucket]) -> float | None:
        return self.take(buckets)


# KEYS: the buckets; ARGV: rate, burst, wanted for each. At least one token from each bucket
# (or none from any); from each as many as wanted and there are. Returns the wait (seconds) when
# refused, else the tokens taken from each bucket.
_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local levels = {}
local wait = 0
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[3 * i - 2])
  local burst = tonumber(ARGV[3 * i - 1])
  local b = redis.call('HMGET', key, 's', 'v')
  local stamp = tonumber(b[1]) or now
  local level = tonumber(b[2]) or burst
  level = math.min(burst, level + (now - stamp) * rate)
  levels[i] = level
  if level < 1 then wait = math.max(wait, (1 - level) / rate) end
end
if wait > 0 then return {tostring(wait)} end
local taken = {'0'}
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[3 * i - 2])
  local burst = tonumber(ARGV[3 * i - 1])
  local n = math.max(1, math.min(tonumber(ARGV[3 * i]), math.floor(levels[i])))
  redis.call('HSET', key, 's', tostring(now), 'v', tostring(levels[i] - n))
  redis.call('PEXPIRE', key, math.ceil(burst / rate * 1000) + 1000)
  taken[i + 1] = tostring(n)
end
return taken
"""


class RedisLimiter:
    """Buckets in Redis, shared by every API replica.

    A script call per request costs the API more CPU than the rest of its admission: so each
    process takes a small batch of a busy bucket's tokens at once (`lease_share` of its rate,
    at least one) and spends them locally for up to `lease_s`; tokens left when the lease ends
    are dropped (never returned, so the limit holds: each replica is ahead by at most one
    batch). Slow buckets (the unknown-key one, `high` priority) take one token at a time."""

    def __init__(
        self, url: str, prefix: str = "moderation:rl:", lease_share: float = 0.05, lease_s: float = 0.5
    ) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self.prefix = prefix
        self.lease_share = lease_share
        self.lease_s = lease_s
        self._script: Any = self.client.register_script(_SCRIPT)
        self._warned = 0.0
        self._local: dict[str, tuple[float, int]] = {}  # bucket -> (lease end, tokens left)
        self._lock = threading.Lock()

    def _batch(self, b: Bucket) -> int:
        return max(1, int(min(b.rate * self.lease_share, b.burst * self.lease_share)))

    def try_take(self, buckets: list[Bucket]) -> float | None:
        now = time.monotonic()
        with self._lock:
            if not all(self._has(b.key, now) for b in buckets):
                return None
            for b in buckets:
                end, left = self._local[b.key]
                self._local[b.key] = (end, left - 1)
        return 0.0

    def take(self, buckets: list[Bucket]) -> float:
        local = self.try_take(buckets)
        if local is not None:
            return local
        now = time.monotonic()
        with self._lock:
            lacking = [b for b in buckets if not self._has(b.key, now)]
        keys = [self.prefix + b.key for b in lacking]
        args: list[float] = []
        for b in lacking:
            args += [b.rate, b.burst, self._batch(b)]
        try:
            answer = self._script(keys=keys, args=args)
        except Exception as exc:  # Redis unreachable: let the request through
            if time.monotonic() - self._warned > 60:
                self._warned = time.monotonic()
                log.warning("rate limits not applied (Redis unreachable): %s", exc)
            return 0.0
        wait = float(answer[0])
        if wait > 0:
            return wait  # nothing taken, from Redis or from the local leases
        until = time.monotonic() + self.lease_s
        with self._lock:
            if len(self._local) > 100_000:
                self._local.clear()
            for b, n in zip(lacking, answer[1:], strict=True):
                # One token pays for this request; the rest of the batch is this process's lease.
                self._local[b.key] = (until, int(n) - 1)
            for b in buckets:
                if b not in lacking:
                    end, left = self._local.get(b.key, (until, 1))
                    self._local[b.key] = (end, max(0, left - 1))
        return 0.0

    def _has(self, key: str, now: float) -> bool:
        held = self._local.get(key)
        return held is not None and held[0] > now and held[1] >= 1


def build_limiter(redis_url: str | None) -> Limiter:
    return RedisLimiter(redis_url) if redis_url else LocalLimiter()
