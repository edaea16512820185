"""The access epoch: one counter row that every change to who may call bumps (a key revoked or
rotated, a tenant's policies changed), in the transaction of that change.

Every process caches keys and tenants in memory (authentication costs no database round trip),
and reads this one row at most every `key_revocation_poll_s` to learn whether its caches are
stale. It lives in the database, so it works across processes and hosts on PostgreSQL and on
the embedded SQLite alike, with no broker or Redis involved.
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.exc import DBAPIError, OperationalError

from moderation.db.sql import insert_ignore
from moderation.db.tables import access_epoch, utcnow

_ROW = 1


def bump(conn: Connection) -> None:
    """Move the epoch on, inside the caller's transaction (it becomes visible at commit).

    The row is created on first use, so a database built without the migration's data works too;
    concurrent bumps serialise on the row lock (PostgreSQL) or the write lock (SQLite)."""
    now = utcnow()
    conn.execute(insert_ignore(conn, access_epoch), {"id": _ROW, "epoch": 0, "changed_at": now})
    conn.execute(
        update(access_epoch).where(access_epoch.c.id == _ROW).values(epoch=access_epoch.c.epoch + 1, changed_at=now)
    )


def read(conn: Connection) -> int:
    """The current epoch (0 before the first change)."""
    value = conn.execute(select(access_epoch.c.epoch).where(access_epoch.c.id == _ROW)).scalar()
    return int(value or 0)


def poll(engine: Engine) -> int:
    """`read` for the per-process poll, as a bare autocommit read on a pooled DBAPI connection:
    on SQLite a SQLAlchemy connection would BEGIN IMMEDIATE (moderation.db.engine) and so wait
    for, and take, the database's write lock twice a second in every process; this read never
    waits for a writer (WAL). On PostgreSQL it is the same one-row read."""
    try:
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            try:
                cursor.execute(f"SELECT epoch FROM {access_epoch.name} WHERE id = {_ROW}")
                row = cursor.fetchone()
            finally:
                cursor.close()
        finally:
            raw.close()  # back to the pool, which rolls back what psycopg2 opened
    except DBAPIError:
        raise
    except Exception as exc:
        # The driver's own error (a bare DBAPI connection is not wrapped by SQLAlchemy): wrap it,
        # so that callers see the database unavailable (503), as for any other query.
        if isinstance(exc, engine.dialect.loaded_dbapi.Error):
            raise OperationalError(f"SELECT epoch FROM {access_epoch.name}", {}, exc) from exc
        raise
    return int(row[0]) if row and row[0] is not None else 0
