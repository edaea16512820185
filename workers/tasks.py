"""Celery tasks: each a few lines over one function of `moderation.pipeline` (or `callbacks`).

Transient faults (database or broker unreachable, a model server down) retry with
exponential backoff; bad input never raises here (it is decided, fail-closed, in the pipeline).
Attempts are also counted in the database, which bounds redeliveries that Celery cannot see
(a worker killed mid-task).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from celery import Task
from kombu.exceptions import KombuError
from sqlalchemy.exc import InterfaceError, OperationalError

from moderation import callbacks, review
from moderation.audit.checkpoint import checkpoint_all
from moderation.db.tables import utcnow
from moderation.errors import FatalAnalyzerError, TransientAnalyzerError
from moderation.pipeline.advance import advance
from moderation.pipeline.analyze import analyze as analyze_stage
from moderation.pipeline.context import Context
from moderation.pipeline.reconcile import reconcile as reconcile_all
from moderation.queue import (
    T_ANALYZE,
    T_AUDIT_CHECKPOINT,
    T_CALLBACK,
    T_DECIDE,
    T_INGEST,
    T_RECONCILE,
    T_REVIEW_UPKEEP,
)
from workers.app import app, context, settings

log = logging.getLogger("workers.tasks")
# Only faults outside the data retry: a DataError or IntegrityError would fail the same way again
# (the attempt budget and the reconciler then bound it, ending in review).
TRANSIENT = (OperationalError, InterfaceError, KombuError, OSError, TransientAnalyzerError)
RETRY = {"autoretry_for": TRANSIENT, "retry_backoff": 1, "retry_backoff_max": 60, "max_retries": 8}


def _deliver(ctx: Context, submission_id: str) -> str:
    return callbacks.deliver(ctx.engine, ctx.settings, submission_id)


def _timed(name: str, fn: Any, *args: Any) -> Any:
    started = time.perf_counter()
    outcome = fn(*args)
    log.info("task=%s args=%s outcome=%s ms=%.1f", name, args[1:], outcome, (time.perf_counter() - started) * 1000)
    return outcome


def limits(kind: str) -> dict[str, float]:
    """Celery's time limits of a task kind: soft first (the task can still record the fault)."""
    hard = settings.task_time_limits[kind]
    return {"time_limit": hard, "soft_time_limit": hard * 0.9}


@app.task(name=T_INGEST, bind=True, **limits("ingest"), **RETRY)
def ingest(self: Task, submission_ids: list[str] | str) -> str:
    return str(_timed("ingest", advance, context(), submission_ids))


@app.task(name=T_ANALYZE, bind=True, **limits("analyze"), **RETRY)
def analyze(self: Task, submission_id: str, stage: str) -> str:
    try:
        # A redelivered or retried message may carry the item that broke a batch or a worker:
        # it runs on its own, so it cannot take other items down with it again.
        isolate = bool(self.request.retries) or bool((self.request.delivery_info or {}).get("redelivered"))
        return str(_timed("analyze", analyze_stage, context(), submission_id, stage, isolate))
    except FatalAnalyzerError:
        # The model can never work again in this process (poisoned CUDA context, hung call).
        # Exit without acknowledging: the broker redelivers this task (acks_late,
        # reject_on_worker_lost) to a healthy worker, and the supervisor restarts this one.
        log.critical("analyzer unusable in this process; exiting", exc_info=True)
        logging.shutdown()
        os._exit(70)


@app.task(name=T_DECIDE, bind=True, **limits("decide"), **RETRY)
def decide(self: Task, submission_id: str) -> str:
    return str(_timed("decide", advance, context(), submission_id, False))


@app.task(name=T_RECONCILE, bind=True, **RETRY)
def reconcile(self: Task) -> dict[str, int]:
    return reconcile_all(context())


@app.task(name=T_CALLBACK, bind=True, soft_time_limit=callbacks.attempt_limit_s(settings), **RETRY)
def callback(self: Task, submission_id: str) -> str:
    # The outbox row counts attempts and gives up; this only schedules the next one when it is
    # due soon (later ones, and lost messages, are published by the reconciler).
    try:
        return str(_timed("callback", _deliver, context(), submission_id))
    except callbacks.CallbackFailed as exc:
        raise self.retry(exc=exc, countdown=exc.retry_in, max_retries=None) from exc


@app.task(name=T_AUDIT_CHECKPOINT, bind=True, **RETRY)
def audit_checkpoint(self: Task) -> dict[str, Any]:
    ctx = context()
    return dict(checkpoint_all(ctx.engine, ctx.settings))


@app.task(name=T_REVIEW_UPKEEP, bind=True, **RETRY)
def review_upkeep(self: Task) -> dict[str, int]:
    return review.upkeep(context().engine, utcnow())
