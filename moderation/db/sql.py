"""Dialect helpers shared by every package that writes: one place for what differs between
PostgreSQL (deployments) and SQLite (the embedded default)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Table, text
from sqlalchemy.dialects import postgresql, sqlite


def insert_ignore(conn: Connection, table: Table) -> Any:
    """An INSERT into `table` that skips rows whose unique key exists already (ON CONFLICT DO
    NOTHING on both dialects): the idempotent write of a redelivered message."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing()


def upsert(conn: Connection, table: Table, keys: list[str], values: dict[str, Any]) -> None:
    """Insert `values`, or update the row whose `keys` match (ON CONFLICT DO UPDATE on both dialects)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(table).values(**values)
    conn.execute(stmt.on_conflict_do_update(index_elements=keys, set_={k: stmt.excluded[k] for k in values}))


def relaxed_commit(conn: Connection) -> None:
    """Let this transaction's commit return before its WAL record is flushed (PostgreSQL).

    For writes whose loss in a crash costs one counter step only (attempt counts): the
    transaction stays atomic and durable on the next flush, it just does not wait for fsync."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SET LOCAL synchronous_commit = off"))
