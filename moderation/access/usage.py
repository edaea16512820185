"""When each API key was last used: `api_keys.last_used_at`, written behind the requests.

A request only notes the key in memory (at most once per key per `every_s` in this process); a
daemon thread writes the noted times in one transaction. No request waits on that write, and a
busy key costs one UPDATE a minute per process, not one per request. The time is as precise as
`every_s` (plus the flush delay): enough to tell a key in use from one that can be revoked.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, bindparam, or_, update

from moderation.db.tables import api_keys, utcnow

log = logging.getLogger(__name__)

_MAX_TRACKED = 100_000  # keys remembered for throttling; beyond, the map restarts (more writes, no harm)


class LastUsedWriter:
    def __init__(self, engine: Engine, every_s: float = 60.0) -> None:
        self.engine = engine
        self.every_s = every_s
        self._lock = threading.Lock()
        self._next_write: dict[str, float] = {}  # key id -> monotonic time it may be noted again
        self._pending: dict[str, datetime] = {}
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def touch(self, key_id: str) -> None:
        """Note that `key_id` was used now. Never blocks on the database."""
        now = time.monotonic()
        with self._lock:
            if self._next_write.get(key_id, 0.0) > now:
                return
            if len(self._next_write) >= _MAX_TRACKED:
                self._next_write.clear()
            self._next_write[key_id] = now + self.every_s
            self._pending[key_id] = utcnow()
            self._ensure_thread()
        self._wake.set()

    def _ensure_thread(self) -> None:
        # A forked child (Celery prefork) inherits the object but not the thread.
        if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
            self._pid = os.getpid()
            self._wake = threading.Event()
            self._thread = threading.Thread(target=self._run, name="api-key-last-used", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        wake = self._wake
        while True:
            wake.wait()
            wake.clear()
            self.flush()

    def flush(self) -> int:
        """Write the noted times now (the thread calls it; tests and shutdown may too). Returns
        how many keys were written; a database error drops this batch (logged), never raises."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return 0
        t: Any = bindparam("t")
        stmt = (
            update(api_keys)
            .where(
                api_keys.c.id == bindparam("kid"), or_(api_keys.c.last_used_at.is_(None), api_keys.c.last_used_at < t)
            )
            .values(last_used_at=t)
        )
        try:
            with self.engine.begin() as conn:
                conn.execute(stmt, [{"kid": k, "t": when} for k, when in pending.items()])
        except Exception:  # best effort: a lost last-used time must never fail or slow a request
            log.warning("could not record last use of %d API key(s)", len(pending), exc_info=True)
            return 0
        return len(pending)
