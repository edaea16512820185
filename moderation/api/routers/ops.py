"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from moderation import metrics
from moderation.api.deps import Ctx
from moderation.db.engine import ping
from moderation.pipeline.stats import pipeline_stats

log = logging.getLogger(__name__)
router = APIRouter(tags=["ops"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(ctx: Ctx) -> JSONResponse:
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
    checks["policies"] = ", ".join(sorted(ctx.policies))
    ok = checks["database"] == "ok" and checks["broker"] == "ok"
    return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)


@router.get("/metrics")
def prometheus_metrics(ctx: Ctx) -> Response:
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
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
