"""The real PostgreSQL and Redis of this machine: where they are, skip-or-fail when they are not
there, scratch databases, and what sits in the broker.

Service tests skip when PostgreSQL or Redis is unreachable, unless MODERATION_REQUIRE_SERVICES=1
(set by .ci/run and `make test`), which turns every such skip into a failure.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

REQUIRE = os.environ.get("MODERATION_REQUIRE_SERVICES", "").lower() in ("1", "true", "yes")
PG_ADMIN = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
# The verdict cache's own database (a deployment gives it its own instance, memory-bounded).
CACHE_URL = os.environ.get("TEST_CACHE_URL", "redis://127.0.0.1:6379/10")


def unavailable(what: str, exc: BaseException) -> None:
    message = f"{what} unreachable: {exc}"
    if REQUIRE:
        pytest.fail(f"{message} (MODERATION_REQUIRE_SERVICES=1: service tests must run)", pytrace=False)
    pytest.skip(message)


@contextlib.contextmanager
def scratch_database(name: str) -> Iterator[str]:
    """A new empty PostgreSQL database (its URL), dropped afterwards."""
    import psycopg2

    try:
        admin = psycopg2.connect(PG_ADMIN, connect_timeout=5)
    except Exception as exc:
        unavailable("PostgreSQL", exc)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name}")
        cur.execute(f"CREATE DATABASE {name}")
    admin.close()
    try:
        yield f"{PG_ADMIN.rsplit('/', 1)[0]}/{name}"
    finally:
        admin = psycopg2.connect(PG_ADMIN, connect_timeout=30)  # a fresh one: a test may restart the server
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.close()


def restart_redis() -> None:
    """Stop the machine's Redis and start it again with DESIGN.md's command (it keeps nothing on
    disk: every key is gone, as after a crash), then wait until it answers."""
    import subprocess
    import time

    import redis

    host, port = "127.0.0.1", 6379
    subprocess.run(["redis-cli", "-h", host, "-p", str(port), "shutdown", "nosave"], capture_output=True, timeout=30)
    subprocess.run(
        ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            redis.Redis(host=host, port=port, socket_connect_timeout=1).ping()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
