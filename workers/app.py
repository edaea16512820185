"""The Celery application, built from the same Settings object as the API.

`celery -A workers.app worker -Q ingest,...` loads this module; nothing connects at import
time (Celery connects when the worker starts). The per-process Context (engine, policies,
analyzers) is built lazily after fork, in the child that uses it.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery
from celery.signals import worker_process_init

from moderation.pipeline import Context
from moderation.queue import celery_config
from moderation.settings import Settings

log = logging.getLogger("workers")

settings = Settings()
app = Celery("moderation")
app.conf.update(celery_config(settings))
app.conf.update(imports=("workers.tasks",))

_ctx: Context | None = None
_ctx_lock = threading.Lock()


def context() -> Context:
    """This process's Context (built once, after fork)."""
    global _ctx
    if _ctx is None:
        with _ctx_lock:
            if _ctx is None:
                _ctx = Context.build(settings)
    return _ctx


@worker_process_init.connect
def _reset_after_fork(**_: object) -> None:
    # A Context inherited from the parent would share its DB connections: start fresh.
    global _ctx
    _ctx = None
