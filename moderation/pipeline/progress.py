"""Liveness by progress: each worker process records when it last finished a task.

A Celery worker on Redis can stay up and stop consuming after a reconnect; `ps` and `inspect
ping` say it is alive. What matters is whether work moves, so each process notes every finished
task in memory and a background thread writes it behind (every `every_s`, only when it moved)
into `worker_progress`; `/metrics` shows the time since each worker's last task and `/readyz`
answers 503 when work waits and no worker has finished anything for `progress_stale_s`.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta

from sqlalchemy import Engine, select

from moderation.db.sql import upsert
from moderation.db.tables import as_utc, utcnow, worker_progress

log = logging.getLogger(__name__)


class ProgressRecorder:
    def __init__(self, engine: Engine, worker: str, queues: str, every_s: float = 5.0) -> None:
        self.engine = engine
        self.worker = worker[:200]
        self.queues = queues[:500]
        self.every_s = every_s
        self.tasks = 0
        self.last: datetime | None = None
        self._written = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._thread.start()

    def finished(self) -> None:
        """One task finished (whatever its outcome): cheap, on the task's thread."""
        with self._lock:
            self.tasks += 1
            self.last = utcnow()

    def flush(self) -> None:
        with self._lock:
            tasks, last = self.tasks, self.last
        if last is None or tasks == self._written:
            return
        with self.engine.begin() as conn:
            values = {"worker": self.worker, "queues": self.queues, "tasks": tasks, "last_finished_at": last}
            upsert(conn, worker_progress, ["worker"], values)
        self._written = tasks

    def _run(self) -> None:
        while True:
            time.sleep(self.every_s)
            try:
                self.flush()
            except Exception as exc:  # the database blinked: the next round writes it
                log.debug("worker progress not written: %s", exc)


def last_progress(engine: Engine, within_s: float = 86_400.0) -> dict[str, float]:
    """Seconds since each worker (seen in the last `within_s`) last finished a task."""
    now = utcnow()
    with engine.connect() as conn:
        rows = conn.execute(
            select(worker_progress.c.worker, worker_progress.c.last_finished_at).where(
                worker_progress.c.last_finished_at > now - timedelta(seconds=within_s)
            )
        ).all()
    return {str(r.worker): max((now - as_utc(r.last_finished_at)).total_seconds(), 0.0) for r in rows}
