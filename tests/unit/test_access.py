"""The access package on a scratch SQLite file: the allow-list rule, the key cache following the
access epoch, and last use written behind with a per-key throttle."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from moderation.access import KeyCache, TenantAccess, create_key, revoke_key
from moderation.access import epoch as access_epoch
from moderation.db.engine import make_engine
from moderation.db.tables import api_keys, metadata
from moderation.errors import ModerationError
from moderation.settings import Settings


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = make_engine(Settings(database_url=None, var_dir=tmp_path))
    metadata.create_all(e)
    yield e
    e.dispose()


def test_allow_list_rule() -> None:
    everything = TenantAccess("t", None, None)
    assert everything.allows("hash-only", "default")
    listed = TenantAccess("t", None, frozenset({"strict"}))
    assert listed.allows("strict", "default")
    assert listed.allows("default", "default")  # the effective default is always allowed
    assert not listed.allows("hash-only", "default")
    own_default = TenantAccess("t", "strict", frozenset({"strict"}))
    assert not own_default.allows("default", "default")


def test_the_cache_follows_the_epoch_not_its_ttl(engine: Engine) -> None:
    with engine.begin() as conn:
        assert access_epoch.read(conn) == 0
        key = create_key(conn, "t1", ["submitter"])
    cache = KeyCache(engine, ttl_s=3600, poll_s=0.1)
    assert cache.authenticate(f"Bearer {key}").tenant_id == "t1"
    other = make_engine(Settings(database_url=None, var_dir=Path(str(engine.url.database)).parent))
    with other.begin() as conn:
        revoke_key(conn, key.split("_")[1], actor="test")
        assert access_epoch.read(conn) == 1
    other.dispose()
    time.sleep(0.15)  # one poll_s: the cached entry (its TTL an hour) is dropped at the next read
    with pytest.raises(ModerationError) as exc:
        cache.authenticate(f"Bearer {key}")
    assert exc.value.code == "UNAUTHENTICATED"


def test_last_use_is_throttled_per_key(engine: Engine) -> None:
    with engine.begin() as conn:
        key = create_key(conn, "t2", ["submitter"])
    cache = KeyCache(engine, ttl_s=60, poll_s=10, last_used_every_s=3600)
    for _ in range(50):
        cache.authenticate(f"Bearer {key}")

    def stored() -> object:
        with engine.connect() as conn:
            return conn.execute(select(api_keys.c.last_used_at)).scalar()

    deadline = time.monotonic() + 5
    while stored() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert stored() is not None
    assert cache.last_used.flush() == 0  # the 49 other uses noted nothing


def test_the_epoch_poll_never_waits_for_a_sqlite_writer(engine: Engine) -> None:
    with engine.begin() as conn:
        access_epoch.bump(conn)
    with engine.begin() as writer:  # BEGIN IMMEDIATE: holds the write lock until the block ends
        writer.execute(select(api_keys.c.id))
        started = time.monotonic()
        assert access_epoch.poll(engine) == 1
        assert time.monotonic() - started < 1.0
