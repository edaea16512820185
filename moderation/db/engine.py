"""Database engines. Nothing connects at import time: callers build an engine from Settings."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event, text

from moderation.settings import Settings


def make_engine(settings: Settings, **kw: Any) -> Engine:
    url = settings.db_url
    if url.startswith("sqlite"):
        settings.var_dir.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **kw)
        _sqlite_serialised_writes(engine)
        return engine
    kw.setdefault("pool_size", 10)
    kw.setdefault("max_overflow", 20)
    # No pre-ping (a round trip per checkout): a connection broken by a database restart raises
    # a disconnect error, SQLAlchemy then invalidates the pool, and the caller retries (API: 503,
    # worker: task retry with backoff).
    kw.setdefault("pool_recycle", 1800)
    # Short OLTP queries only: PostgreSQL's JIT would compile for 100+ ms a query that runs in
    # one (it prices a review `next` over 100,000 tasks high enough to trigger it).
    kw.setdefault("connect_args", {}).setdefault("options", "-c jit=off")
    return create_engine(url, **kw)


def ping(engine: Engine) -> None:
    """One round trip to the database (raises when it cannot be reached): the readiness probe."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def _sqlite_serialised_writes(engine: Engine) -> None:
    """WAL + BEGIN IMMEDIATE: API and worker processes share one file without deadlocking.

    pysqlite's own transaction handling starts transactions lazily, which lets two writers
    both read and then both fail to upgrade their lock; taking the write lock at BEGIN avoids it.
    """

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
