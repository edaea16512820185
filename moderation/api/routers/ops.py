"""Liveness, readiness and Prometheus metrics.

Probes are unauthenticated (load balancers and orchestrators call them), so what they cost is
bounded: the database and broker are read at most once per `probe_cache_s` whatever the call
rate, and `/metrics` can require a token (`MODERATION_METRICS_TOKEN`)."""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from moderation import metrics
from moderation.api.deps import Ctx
from moderation.db.engine import ping
from moderation.db.tables import utcnow
from moderation.errors import ModerationError
from moderation.pipeline.progress import last_progress
from moderation.pipeline.stats import pipeline_stats, queue_ages, recent_activity
from moderation.queue import Q_CALLBACKS, Q_CPU, Q_DECIDE, Q_GPU, Q_INGEST, Q_MAINT
from moderation.review.listing import backlog as review_backlog

log = logging.getLogger(__name__)
router = APIRouter(tags=["ops"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


ALL_QUEUES = (Q_INGEST, Q_CPU, Q_GPU, Q_DECIDE, Q_CALLBACKS, Q_MAINT)
_cache: dict[str, tuple[float, Any]] = {}
_cache_lock = threading.Lock()


def _cached(name: str, ttl_s: float, compute: Callable[[], Any]) -> Any:
    """`compute()`, at most once per `ttl_s` in this process (concurrent callers share one run)."""
    with _cache_lock:
        hit = _cache.get(name)
        if hit is not None and time.monotonic() - hit[0] < ttl_s:
            return hit[1]
        value = compute()
        _cache[name] = (time.monotonic(), value)
        return value


@router.get("/readyz")
def readyz(ctx: Ctx) -> JSONResponse:
    checks, ok = _cached(f"readyz:{id(ctx)}", ctx.settings.probe_cache_s, lambda: _readiness(ctx))
    return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)


def _readiness(ctx: Ctx) -> tuple[dict[str, str], bool]:
    checks: dict[str, str] = {}
    try:
        ping(ctx.engine)
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
    try:
        ctx.publisher.ping()
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"unavailable: {type(exc).__name__}"
    try:
        ctx.blobs.ping()
        checks["blobs"] = "ok"
    except Exception as exc:
        checks["blobs"] = f"unavailable: {type(exc).__name__}"
    checks["policies"] = ", ".join(sorted(ctx.policies))
    ok = all(checks[k] == "ok" for k in ("database", "broker", "blobs"))
    if checks["database"] == "ok":
        checks["workers"] = _progress_check(ctx)
        ok = ok and not checks["workers"].startswith("stalled")
    return checks, ok


def _progress_check(ctx: Ctx) -> str:
    """ "stalled: …" when work has waited longer than `progress_stale_s` and no worker has
    finished a task in that time (a worker can be up and consume nothing)."""
    stale = ctx.settings.progress_stale_s
    try:
        waiting_s = pipeline_stats(ctx.engine).oldest_active_s
        idle = last_progress(ctx.engine)
    except Exception as exc:
        return f"unknown: {type(exc).__name__}"
    freshest = min(idle.values(), default=None)
    if waiting_s > stale and (freshest is None or freshest > stale):
        since = "ever" if freshest is None else f"{freshest:.0f} s"
        return f"stalled: work waiting {waiting_s:.0f} s, no task finished for {since}"
    return "ok" if freshest is not None else "ok (no worker has finished a task yet)"


@router.get("/metrics")
def prometheus_metrics(ctx: Ctx, authorization: Annotated[str | None, Header()] = None) -> Response:
    token = ctx.settings.metrics_token
    if token and not hmac.compare_digest((authorization or "").encode(), f"Bearer {token}".encode()):
        raise ModerationError("UNAUTHENTICATED", "/metrics needs 'Authorization: Bearer <metrics token>'.")
    _cached(f"gauges:{id(ctx)}", ctx.settings.probe_cache_s, lambda: _refresh_gauges(ctx))
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def _refresh_gauges(ctx: Ctx) -> None:
    try:
        stats = pipeline_stats(ctx.engine)
    except Exception as exc:  # a scrape must not fail because the DB blinked
        log.warning("metrics gauges not refreshed: %s", exc)
    else:
        for status, count in stats.by_status.items():
            metrics.BY_STATUS.labels(status).set(count)
        metrics.OLDEST_ACTIVE.set(stats.oldest_active_s)
        metrics.OPEN_REVIEW.set(stats.open_review_tasks)
        metrics.DEAD_LETTERS.set(stats.dead_letters)
        for status, count in stats.callbacks.items():
            metrics.CALLBACKS.labels(status).set(count)
        metrics.OLDEST_CALLBACK.set(stats.oldest_pending_callback_s)
    try:
        activity = recent_activity(ctx.engine)
        idle = last_progress(ctx.engine)
    except Exception as exc:
        log.warning("activity gauges not refreshed: %s", exc)
    else:
        for action in ("allow", "restrict", "block", "review", "escalate"):
            metrics.RECENT_DECISIONS.labels(action).set(activity.decisions.get(action, 0))
        for stage, (p50, p99) in activity.stage_latency_s.items():
            metrics.STAGE_LATENCY.labels(stage, "0.5").set(p50)
            metrics.STAGE_LATENCY.labels(stage, "0.99").set(p99)
        metrics.WORKER_IDLE.clear()  # workers that went away leave no stale series behind
        for worker, seconds in idle.items():
            metrics.WORKER_IDLE.labels(worker).set(seconds)
    try:
        with ctx.engine.connect() as conn:
            queues = review_backlog(conn, utcnow())
    except Exception as exc:
        log.warning("review gauges not refreshed: %s", exc)
    else:
        for gauge in (metrics.REVIEW_BACKLOG, metrics.REVIEW_OLDEST, metrics.REVIEW_BREACHES):
            gauge.clear()
        for q in queues:
            metrics.REVIEW_BACKLOG.labels(q["queue"]).set(q["open"])
            metrics.REVIEW_OLDEST.labels(q["queue"]).set(q["oldest_age_s"])
            metrics.REVIEW_BREACHES.labels(q["queue"]).set(q["breaches"])
    for queue in ALL_QUEUES:
        depth = ctx.publisher.queue_depth(queue)
        if depth is not None:
            metrics.QUEUE_DEPTH.labels(queue).set(depth)
    try:
        ages = queue_ages(ctx, ctx.engine, ctx.settings.reconcile_batch)
    except Exception as exc:
        log.warning("queue age gauges not refreshed: %s", exc)
    else:
        for queue in ALL_QUEUES:
            if queue != Q_CALLBACKS:  # deliveries have their own gauge (oldest pending callback)
                metrics.QUEUE_OLDEST.labels(queue).set(ages.get(queue, 0.0))
