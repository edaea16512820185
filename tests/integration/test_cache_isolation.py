"""The verdict cache keeps tenants apart and trusts no entry it did not seal (issue 10, finding 5).

Before: the key held no tenant (B's decisions said `cached: true` when A had submitted the image:
an existence oracle) and the value no MAC (whoever could write to the Redis could plant an
`allow` for any image, for every tenant).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from moderation.analyzers.base import Finding
from moderation.cache import LocalStore, RedisStore, VerdictCache
from moderation.settings import Settings
from tests.support.http import auth, submit, wait_final
from tests.support.images import picture
from tests.support.processes import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.services


def decided_facts(client: Any, key: str, sid: str) -> dict[str, Any]:
    r = client.get("/v1/audit/events", params={"submission_id": sid, "action": "decided"}, headers=auth(key))
    return dict(r.json()["events"][0]["facts"])


def test_another_tenants_upload_is_not_a_cache_hit(client, keys, worker) -> None:
    data = picture(5101)
    first = submit(client, keys["submitter"], data, policy="test-cascade", caption="hate=0.95")
    wait_final(client, keys["submitter"], first["id"])
    again = submit(client, keys["submitter"], data, policy="test-cascade", caption="hate=0.95")
    wait_final(client, keys["submitter"], again["id"])
    assert decided_facts(client, keys["auditor"], again["id"])["cached"] is True  # the cache works within acme

    theirs = submit(client, keys["other"], data, policy="test-cascade", caption="hate=0.95")
    final = wait_final(client, keys["other"], theirs["id"])
    assert final["decision"]["action"] == "block"
    assert decided_facts(client, keys["other"], theirs["id"])["cached"] is False  # nothing of acme shows


def _allow_finding() -> list[dict[str, Any]]:
    planted = Finding("caption", "test-1", "caption", scores={"hate": 0.0}, confidence=0.99, covered=["hate"])
    return [{**planted.to_json(), "cached": False}]


def test_planted_and_moved_entries_are_misses(client, keys, worker, ctx) -> None:
    """Whoever can write to the cache's Redis cannot decide an image: an entry without a valid MAC,
    or a valid one copied under another tenant's key, is ignored (and counted)."""
    store = redis.Redis.from_url(ctx.settings.cache_url)
    policy = ctx.policies["test-cascade"]
    data, caption = picture(5102), "hate=0.97"
    import hashlib

    sha = hashlib.sha256(data).hexdigest()
    # 1. an unsealed `allow` where acme's entry would be, and one sealed with a key the attacker made up
    acme_key = ctx.verdicts.key(policy, "acme", sha, caption)
    store.set(acme_key, json.dumps(_allow_finding()).encode(), ex=600)
    sub = submit(client, keys["submitter"], data, policy="test-cascade", caption=caption)
    final = wait_final(client, keys["submitter"], sub["id"])
    assert final["decision"]["action"] == "block"
    assert decided_facts(client, keys["auditor"], sub["id"])["cached"] is False

    forger = VerdictCache(LocalStore(), ctx.settings, b"a key the attacker chose")
    store.set(acme_key, forger.seal(acme_key, json.dumps(_allow_finding()).encode()), ex=600)
    sub = submit(client, keys["submitter"], data, policy="test-cascade", caption=caption)
    assert wait_final(client, keys["submitter"], sub["id"])["decision"]["action"] == "block"
    assert decided_facts(client, keys["auditor"], sub["id"])["cached"] is False

    # 2. acme's genuine entry (now written by the worker) copied under other's key
    wait_until(lambda: ctx.verdicts.get(policy, "acme", sha, caption), 20, what="acme's entry written")
    genuine = store.get(acme_key)
    assert genuine is not None and genuine.startswith(b"v1:")
    other_key = ctx.verdicts.key(policy, "other", sha, caption)
    assert other_key != acme_key
    store.set(other_key, genuine, ex=600)
    before = ctx.verdicts.rejected
    assert ctx.verdicts.get(policy, "other", sha, caption) is None
    assert ctx.verdicts.rejected == before + 1
    theirs = submit(client, keys["other"], data, policy="test-cascade", caption=caption)
    wait_final(client, keys["other"], theirs["id"])
    assert decided_facts(client, keys["other"], theirs["id"])["cached"] is False


def test_sharing_across_tenants_is_an_explicit_setting(ctx) -> None:
    policy = ctx.policies["test-cascade"]
    private = VerdictCache(LocalStore(), Settings(), b"k")
    shared = VerdictCache(LocalStore(), Settings(cache_shared_across_tenants=True), b"k")
    sha = "ab" * 32
    assert private.key(policy, "a", sha, None) != private.key(policy, "b", sha, None)
    assert shared.key(policy, "a", sha, None) == shared.key(policy, "b", sha, None)
    assert "acme" not in private.key(policy, "acme", sha, None)  # tenant ids are not spelled out to cache readers


def test_without_a_key_the_cache_stays_out_of_redis() -> None:
    from moderation.cache import build_store

    redis_url = "redis://127.0.0.1:6379/11"
    store, _ = build_store(Settings(redis_url=redis_url, cache_url="redis://127.0.0.1:6379/10", cache_key=None))
    assert isinstance(store, LocalStore)  # no MAC key: never a shared store anyone could write to
    store, _ = build_store(Settings(redis_url=redis_url, cache_url=None, cache_key="k"))
    assert isinstance(store, LocalStore)  # and never the broker's Redis by default


@pytest.fixture
def bounded_redis(tmp_path: Path) -> Iterator[str]:
    """A Redis instance of the cache's own, as compose runs it: 4 MB, allkeys-lru."""
    port = free_port()
    proc = subprocess.Popen(
        [
            *("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
            *("--maxmemory", "4mb", "--maxmemory-policy", "allkeys-lru", "--dir", str(tmp_path)),
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_until(lambda: _pings(url), 10, what="cache redis up")
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url).ping())
    except redis.RedisError:
        return False


def test_a_bounded_cache_evicts_instead_of_growing(ctx, bounded_redis: str) -> None:
    policy = ctx.policies["test-cascade"]
    store = RedisStore(bounded_redis)
    assert store.bounded() is True
    assert RedisStore(ctx.settings.cache_url).bounded() is False  # this machine's shared Redis: unbounded
    cache = VerdictCache(store, ctx.settings, b"k")
    finding = Finding("caption", "test-1", "caption", scores={"hate": 0.1}, rationale={"hate": "x" * 2000})
    started = time.monotonic()
    for i in range(4000):  # ~10 MB of entries into 4 MB
        assert cache.put(policy, "acme", f"{i:064x}", None, [finding])
    used = int(store.client.info("memory")["used_memory"])
    assert used < 6 * 1024 * 1024
    assert store.client.dbsize() < 4000  # the oldest were evicted
    # The newest are still there (Redis' LRU is approximate: it samples, so allow a miss or two).
    kept = sum(cache.get(policy, "acme", f"{i:064x}", None) is not None for i in range(3990, 4000))
    assert kept >= 8, kept
    assert time.monotonic() - started < 60
