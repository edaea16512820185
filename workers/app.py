"""The Celery application, built from the same Settings object as the API.

`celery -A workers.app worker -Q ingest,...` loads this module; nothing connects at import
time (Celery connects when the worker starts). The per-process Context (engine, policies,
analyzers) is built lazily after fork, in the child that uses it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from celery import Celery
from celery.signals import celeryd_after_setup, worker_process_init

from moderation.pipeline.context import Context
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


_queues: list[str] = []


def _warm(fatal: bool) -> None:
    """Load the analyzers of this worker's queues before it takes a task: the first upload must
    not pay for a model load. Celery only logs what a signal handler raises, so a model that
    cannot load ends the process here (`fatal`: the GPU workers' main process), loudly, instead
    of leaving a worker that looks ready and fails every task. Prefork children only log it
    (their tasks then fail closed to review) rather than being re-forked in a loop."""
    if not (_queues and settings.warmup):
        return
    started = time.perf_counter()
    try:
        warmed = context().warm_up(_queues)
    except Exception:
        log.critical("warm-up failed: the analyzers of %s could not load", _queues, exc_info=True)
        if fatal:
            logging.shutdown()
            os._exit(3)
        return
    log.info("ready: warmed %s in %.1f s", warmed or "nothing", time.perf_counter() - started)


@celeryd_after_setup.connect
def _warm_main(instance: Any = None, **_: object) -> None:
    # Runs in the main process once logging is set up, before the pool and the consumer start.
    # Pools that run tasks in this process (threads: the GPU workers; solo) load their models
    # here, so a worker consumes, and answers `inspect ping` (readiness), only once its model is
    # loaded. Prefork children warm up after fork (below).
    global _queues
    _queues = sorted(instance.app.amqp.queues.consume_from) if instance is not None else []
    if "callbacks" in _queues and settings.callback_secret == "change-me" and not settings.embedded:
        log.error(
            "MODERATION_CALLBACK_SECRET is the placeholder: callbacks of tenants without their own secret "
            "(`moderation keys callback-secret`) carry signatures anyone can forge"
        )
    pool = getattr(instance, "pool_cls", "")
    name = pool if isinstance(pool, str) else f"{pool.__module__}.{pool.__name__}"
    if "prefork" not in name:
        _warm(fatal=True)


@worker_process_init.connect
def _reset_after_fork(**_: object) -> None:
    # A Context inherited from the parent would share its DB connections: start fresh.
    global _ctx
    _ctx = None
    _warm(fatal=False)
