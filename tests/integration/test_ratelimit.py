"""The shared (Redis) rate limiter with local token leases: two limiters, as two API replicas,
share one bucket; together they never admit more than the bucket allows plus one lease batch
each, a refused request takes nothing, slow buckets take one token at a time, and an unreachable
Redis lets requests through."""

from __future__ import annotations

import secrets
import time

import pytest

from moderation.access.ratelimit import Bucket, RedisLimiter
from tests.support.services import REDIS_URL

pytestmark = pytest.mark.services


def test_replicas_sharing_a_bucket_stay_within_it(redis_client) -> None:
    a, b = RedisLimiter(REDIS_URL), RedisLimiter(REDIS_URL)
    bucket = Bucket(f"test:{secrets.token_hex(4)}", rate=200.0, burst=400.0)
    batch = a._batch(bucket)
    assert batch == 10  # 5 % of the rate: most requests need no round trip
    admitted = 0
    started = time.monotonic()
    for i in range(3000):
        limiter = a if i % 2 else b
        if limiter.take([bucket]) == 0:
            admitted += 1
    elapsed = time.monotonic() - started
    allowed = bucket.burst + bucket.rate * elapsed + 2 * batch
    assert bucket.burst <= admitted <= allowed, (admitted, allowed)
    refused = a.take([bucket]) or b.take([bucket])
    assert refused > 0  # the bucket is empty for both replicas


def test_local_leases_spare_the_round_trips(redis_client) -> None:
    limiter = RedisLimiter(REDIS_URL)
    bucket = Bucket(f"test:{secrets.token_hex(4)}", rate=1000.0, burst=2000.0)
    assert limiter.try_take([bucket]) is None  # nothing leased yet: the caller goes to Redis
    assert limiter.take([bucket]) == 0
    local = [limiter.try_take([bucket]) for _ in range(limiter._batch(bucket) - 1)]
    assert local == [0.0] * (limiter._batch(bucket) - 1)  # spent locally, no Redis
    assert limiter.try_take([bucket]) is None  # the batch is spent


def test_a_refused_request_takes_nothing_and_slow_buckets_go_one_by_one(redis_client) -> None:
    limiter = RedisLimiter(REDIS_URL)
    fast = Bucket(f"test:{secrets.token_hex(4)}", rate=1000.0, burst=2000.0)
    slow = Bucket(f"test:{secrets.token_hex(4)}", rate=1.0, burst=3.0)
    assert limiter._batch(slow) == 1
    assert [limiter.take([fast, slow]) for _ in range(3)] == [0, 0, 0]
    assert limiter.take([fast, slow]) > 0  # slow is empty: refused, and fast gives nothing
    level = float(redis_client.hget("moderation:rl:" + fast.key, "v"))
    # fast gave one batch (its lease), not one per call: refills aside, it lost only that
    assert level == pytest.approx(fast.burst - limiter._batch(fast), abs=20)


def test_an_unreachable_redis_lets_requests_through() -> None:
    limiter = RedisLimiter("redis://127.0.0.1:1/0")
    assert limiter.take([Bucket("test:down", 1.0, 1.0)]) == 0.0
