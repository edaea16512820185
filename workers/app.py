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
from celery.signals import celeryd_after_setup, task_postrun, worker_process_init

from moderation.pipeline.context import Context
from moderation.pipeline.progress import ProgressRecorder
from moderation.queue import celery_config
from moderation.settings import Settings

log = logging.getLogger("workers")

settings = Settings()
app = Celery("moderation")
app.conf.update(celery_config(settings))
app.conf.update(imports=("workers.tasks",))

_ctx: Context | None = None
_ctx_lock = threading.Lock()
_progress_lock = threading.Lock()


def context() -> Context:
    """This process's Context (built once, after fork)."""
    global _ctx
    if _ctx is None:
        with _ctx_lock:
            if _ctx is None:
                _ctx = Context.build(settings)
    return _ctx


_queues: list[str] = []
_node = "worker"
_progress: ProgressRecorder | None = None


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
    global _queues, _node
    _queues = sorted(instance.app.amqp.queues.consume_from) if instance is not None else []
    _node = str(getattr(instance, "hostname", None) or "worker")
    pool = getattr(instance, "pool_cls", "")
    name = pool if isinstance(pool, str) else f"{pool.__module__}.{pool.__name__}"
    if "prefork" not in name:
        _warm(fatal=True)


@worker_process_init.connect
def _reset_after_fork(**_: object) -> None:
    # A Context inherited from the parent would share its DB connections: start fresh.
    global _ctx, _progress
    _ctx = None
    _progress = None  # the parent's writer thread did not survive the fork
    _warm(fatal=False)


@task_postrun.connect
def _finished(**_: object) -> None:
    # Progress, not liveness: /metrics and /readyz read when each process last finished a task.
    global _progress
    if _progress is None:
        engine = context().engine
        with _progress_lock:
            if _progress is None:
                _progress = ProgressRecorder(engine, f"{_node}/{os.getpid()}", ",".join(_queues))
    _progress.finished()
