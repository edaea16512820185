"""The real PostgreSQL and Redis of this machine: where they are, skip-or-fail when they are not
there, scratch databases, and what sits in the broker.

Service tests skip when PostgreSQL or Redis is unreachable, unless MODERATION_REQUIRE_SERVICES=1
(set by .ci/run and `make test`), which turns every such skip into a failure.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

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


def ingest_messages(redis_client: Any) -> list[list[str]]:
    """The submission ids of each ingest message waiting in Redis (kombu keeps one list per priority step)."""
    out = []
    for key in redis_client.keys("ingest*"):
        if redis_client.type(key) != b"list":
            continue
        for raw in redis_client.lrange(key, 0, -1):
            envelope = json.loads(raw)
            args = json.loads(base64.b64decode(envelope["body"]))[0]
            out.append(list(args[0]))
    return out
