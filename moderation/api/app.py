"""The HTTP API (FastAPI): ingest, status, audit, health and metrics.

Errors of every kind leave through `_error_response` as `{"error": {"code", "message"}}`.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, File, Form, Header, Path, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import and_, func, select, text
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from moderation import __version__, audit, banks, callbacks, metrics
from moderation.auth import Principal
from moderation.errors import CATALOGUE, ModerationError
from moderation.models import as_utc, audit_events, callback_deliveries, dead_letters, review_tasks, submissions, utcnow
from moderation.pipeline import Context, SubmissionRequest, accept, view
from moderation.settings import Settings
from moderation.text import check_text

log = logging.getLogger(__name__)

_STATUS_CODES = {
    400: "INVALID_REQUEST",
    401: "UNAUTHENTICATED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "IMAGE_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    422: "INVALID_REQUEST",
    503: "SERVICE_UNAVAILABLE",
}


def _error_response(code: str, message: str, status: int, details: Any = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status)


class BodyLimit:
    """Refuse bodies over the upload cap while they stream in, before any multipart parsing or
    spooling (a missing or lying Content-Length does not get past it)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_large(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise StarletteHTTPException(413, f"Request body is over {self.limit} bytes.")
            return message

        await self.app(scope, counted, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics.SUBMISSIONS.labels("rejected", "IMAGE_TOO_LARGE").inc()
        response = _error_response("IMAGE_TOO_LARGE", f"Request body is over {self.limit} bytes.", 413)
        await response(scope, receive, send)


class BankIn(BaseModel):
    name: str
    kind: Literal["bad", "good"]
    category: str | None = None
    description: str | None = None


def _principal(request: Request, authorization: Annotated[str | None, Header()] = None) -> Principal:
    ctx: Context = request.app.state.ctx
    return ctx.keys.authenticate(authorization)


Auth = Annotated[Principal, Depends(_principal)]


def create_app(settings: Settings | None = None, ctx: Context | None = None) -> FastAPI:
    settings = settings or Settings()
    ctx = ctx or Context.build(settings)
    app = FastAPI(
        title="Moderation API",
        version=__version__,
        description="Image content moderation: submit images, read decisions, verify the audit log. "
        'Errors are `{"error": {"code", "message"}}`; codes: '
        + ", ".join(f"`{c}` ({s})" for c, (s, _) in CATALOGUE.items()),
    )
    app.state.ctx = ctx
    # Multipart framing adds a little to the file itself.
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes + 256 * 1024)

    @app.exception_handler(ModerationError)
    async def _moderation_error(_: Request, exc: ModerationError) -> JSONResponse:
        return _error_response(exc.code, exc.message, exc.http_status, exc.data or None)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": ".".join(str(p) for p in e.get("loc", ())[1:]), "problem": e.get("msg")} for e in exc.errors()
        ]
        if any(e["field"] == "file" for e in errors):
            return _error_response("MISSING_FILE", CATALOGUE["MISSING_FILE"][1], 422, errors)
        return _error_response("INVALID_REQUEST", "Request fields are missing or malformed.", 422, errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "INVALID_REQUEST" if exc.status_code < 500 else "INTERNAL")
        if code == "IMAGE_TOO_LARGE":
            metrics.SUBMISSIONS.labels("rejected", code).inc()
        return _error_response(code, str(exc.detail), exc.status_code)

    @app.exception_handler(DBAPIError)
    async def _db_error(_: Request, exc: Exception) -> JSONResponse:
        # Only a database that cannot be reached is worth a retry; the rest is about the request.
        if isinstance(exc, OperationalError | InterfaceError) or getattr(exc, "connection_invalidated", False):
            log.error("database unavailable: %s", exc)
            return _error_response("SERVICE_UNAVAILABLE", "The database is unavailable; retry with backoff.", 503)
        if isinstance(exc, IntegrityError):
            return _error_response("CONFLICT", "The resource exists already or was changed concurrently.", 409)
        if isinstance(exc, DataError):
            return _error_response("INVALID_REQUEST", "A value does not fit its field.", 422)
        log.exception("database error")
        return _error_response("INTERNAL", "Unexpected server error.", 500)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return _error_response("INTERNAL", "Unexpected server error.", 500)

    @app.post("/v1/submissions", status_code=202, tags=["submissions"])
    def submit(
        request: Request,
        who: Auth,
        file: Annotated[UploadFile, File(description="The image (JPEG, PNG, GIF, WebP, BMP, TIFF)")],
        external_id: Annotated[str | None, Form(description="The platform's content id (puid)")] = None,
        caption: Annotated[str | None, Form()] = None,
        uploader_id: Annotated[str | None, Form()] = None,
        callback_url: Annotated[str | None, Form()] = None,
        priority: Annotated[str, Form(description="high | normal | low")] = "normal",
        policy: Annotated[str | None, Form(description="Policy id; the tenant default otherwise")] = None,
        idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    ) -> JSONResponse:
        """Accept an image for moderation. 202 with `{id, status}`; the row is durable before it is queued."""
        started = time.perf_counter()
        try:
            who.require("submitter", "admin")
            data = file.file.read(settings.max_upload_bytes + 1)
            req = SubmissionRequest(
                tenant_id=who.tenant_id,
                actor=who.key_id,
                default_policy=who.default_policy,
                external_id=external_id or None,
                idempotency_key=idempotency_key or None,
                caption=caption,
                uploader_id=uploader_id,
                callback_url=callback_url or None,
                priority=priority,
                policy=policy or None,
                request_ip=request.client.host if request.client else None,
            )
            result, created = accept(ctx, req, data)
        except ModerationError as exc:
            metrics.SUBMISSIONS.labels("rejected", exc.code).inc()
            raise
        metrics.SUBMISSIONS.labels("accepted" if created else "replayed", "").inc()
        metrics.SUBMIT_SECONDS.observe(time.perf_counter() - started)
        headers = {} if created else {"Idempotent-Replayed": "true"}
        return JSONResponse(result, status_code=202, headers=headers)

    @app.get("/v1/submissions/{submission_id}", tags=["submissions"])
    def get_submission(submission_id: str, who: Auth) -> dict[str, Any]:
        """Status and decision (`decision` is null until decided; a human decision supersedes the automated one)."""
        who.require("submitter", "moderator", "auditor", "admin")
        if not re.fullmatch(r"[0-9a-f]{32}", submission_id):
            raise ModerationError("NOT_FOUND", f"No submission {submission_id[:64]!r}.")
        return view(ctx, who.tenant_id, submission_id)

    @app.get("/v1/audit/events", tags=["audit"])
    def audit_events_list(
        who: Auth,
        submission_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        action: str | None = None,
        category: str | None = None,
        automated: bool | None = None,
        after_seq: Annotated[int, Query(ge=0, le=2**62)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """Audit events of the caller's tenant in chain order; page with `after_seq`."""
        who.require("auditor")
        for name, value in (("submission_id", submission_id), ("action", action), ("category", category)):
            check_text(name, value, 64)
        t = audit_events.c
        conds = [t.tenant_id == who.tenant_id, t.seq > after_seq]
        if submission_id:
            conds.append(t.submission_id == submission_id)
        if since:
            conds.append(t.occurred_at >= since)
        if until:
            conds.append(t.occurred_at < until)
        if action:
            conds.append(t.action == action)
        if category:
            conds.append(t.category == category)
        if automated is not None:
            conds.append(t.automated == automated)
        with ctx.engine.connect() as conn:
            rows = conn.execute(select(audit_events).where(and_(*conds)).order_by(t.seq).limit(limit)).all()
        events = [audit.event_json(r) for r in rows]
        return {"events": events, "next_after_seq": rows[-1].seq if len(rows) == limit else None}

    @app.get("/v1/audit/verify", tags=["audit"])
    def audit_verify(who: Auth) -> dict[str, Any]:
        """Walk the tenant's hash chain; `first_break` names the first row that does not verify."""
        who.require("auditor")
        with ctx.engine.connect() as conn:
            return audit.verify(conn, who.tenant_id).to_json()

    # ------------------------------------------------------------ webhooks (admin)

    @app.post("/v1/callbacks/secret", tags=["callbacks"])
    def callback_secret_rotate(who: Auth) -> dict[str, Any]:
        """Rotate the tenant's webhook signing secret. The new secret is in this answer only; the old
        one (or the deployment's, the first time) keeps signing beside it until `previous_valid_until`."""
        who.require("admin")
        with ctx.engine.begin() as conn:
            return callbacks.rotate_secret(conn, who.tenant_id, settings, actor=who.key_id)

    # ------------------------------------------------------------ hash banks (admin)

    @app.post("/v1/banks", status_code=201, tags=["banks"])
    def bank_create(body: BankIn, who: Auth) -> dict[str, Any]:
        """Create a bank: `kind` bad (a match blocks) or good (a match allows), and the category a match implies."""
        who.require("admin")
        with ctx.engine.begin() as conn:
            return banks.create_bank(
                conn, who.tenant_id, body.name, body.kind, body.category, body.description, actor=who.key_id
            )

    @app.get("/v1/banks", tags=["banks"])
    def bank_list(who: Auth) -> dict[str, Any]:
        who.require("admin")
        with ctx.engine.connect() as conn:
            return {"banks": banks.list_banks(conn, who.tenant_id)}

    @app.post("/v1/banks/{name}/images", status_code=201, tags=["banks"])
    def bank_add_images(
        name: str,
        who: Auth,
        files: Annotated[list[UploadFile], File(description="Images to bank")],
        label: Annotated[str | None, Form()] = None,
    ) -> dict[str, Any]:
        """Hash images (same validation as submissions) and add them to the bank."""
        who.require("admin")
        datas = [(f.filename, f.file.read(settings.max_upload_bytes + 1)) for f in files]
        with ctx.engine.begin() as conn:
            ids = [
                banks.add_image(conn, ctx.limits, who.tenant_id, name, data, label or filename, who.key_id)
                for filename, data in datas
            ]
        return {"added": len(ids), "entry_ids": ids}

    @app.post("/v1/banks/{name}/hashes", status_code=201, tags=["banks"])
    def bank_import_hashes(
        name: str,
        who: Auth,
        file: Annotated[UploadFile, File(description="CSV/TSV: pdq[,label][,sha256]")],
    ) -> dict[str, Any]:
        """Import a hash list (CSV or TSV with a `pdq` column, or lines of `<pdq>[,<label>]`)."""
        who.require("admin")
        raw = file.file.read(settings.max_upload_bytes + 1)
        if len(raw) > settings.max_upload_bytes:
            raise ModerationError("IMAGE_TOO_LARGE", "The hash list is over the upload size cap.")
        try:
            text_body = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ModerationError("INVALID_REQUEST", "The hash list must be UTF-8 text.") from exc
        with ctx.engine.begin() as conn:
            return {"added": banks.import_hash_list(conn, who.tenant_id, name, text_body, who.key_id)}

    @app.get("/v1/banks/{name}/entries", tags=["banks"])
    def bank_entries_list(
        name: str,
        who: Auth,
        after_id: Annotated[int, Query(ge=0, le=2**62)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        who.require("admin")
        with ctx.engine.connect() as conn:
            return {"entries": banks.list_entries(conn, who.tenant_id, name, after_id, limit)}

    @app.delete("/v1/banks/{name}/entries/{entry_id}", status_code=204, tags=["banks"])
    def bank_remove_entry(name: str, entry_id: Annotated[int, Path(ge=0, le=2**62)], who: Auth) -> Response:
        who.require("admin")
        with ctx.engine.begin() as conn:
            banks.remove_entry(conn, who.tenant_id, name, entry_id, who.key_id)
        return Response(status_code=204)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    def readyz() -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            with ctx.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:
            checks["database"] = f"unavailable: {type(exc).__name__}"
        try:
            with ctx.publisher.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            checks["broker"] = "ok"
        except Exception as exc:
            checks["broker"] = f"unavailable: {type(exc).__name__}"
        checks["policies"] = ", ".join(sorted(ctx.policies))
        ok = checks["database"] == "ok" and checks["broker"] == "ok"
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["ops"])
    def prometheus_metrics() -> Response:
        try:
            _refresh_gauges(ctx)
        except Exception as exc:  # a scrape must not fail because the DB blinked
            log.warning("metrics gauges not refreshed: %s", exc)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


def _refresh_gauges(ctx: Context) -> None:
    active = ("queued", "analyzing", "in_review")
    with ctx.engine.connect() as conn:
        counts: dict[str, int] = dict(
            conn.execute(
                select(submissions.c.status, func.count())
                .where(submissions.c.status.in_(active))
                .group_by(submissions.c.status)
            ).all()
        )
        oldest = conn.execute(
            select(func.min(submissions.c.updated_at)).where(submissions.c.status.in_(("queued", "analyzing")))
        ).scalar()
        open_tasks = conn.execute(select(func.count()).where(review_tasks.c.status == "open")).scalar()
        dead = conn.execute(select(func.count()).select_from(dead_letters)).scalar()
        hooks: dict[str, int] = dict(
            conn.execute(
                select(callback_deliveries.c.status, func.count())
                .where(callback_deliveries.c.status.in_(("pending", "failed")))
                .group_by(callback_deliveries.c.status)
            ).all()
        )
        oldest_hook = conn.execute(
            select(func.min(callback_deliveries.c.created_at)).where(callback_deliveries.c.status == "pending")
        ).scalar()
    for status in active:
        metrics.BY_STATUS.labels(status).set(counts.get(status, 0))
    metrics.OLDEST_ACTIVE.set(_age_s(oldest))
    metrics.OPEN_REVIEW.set(open_tasks or 0)
    metrics.DEAD_LETTERS.set(dead or 0)
    for status in ("pending", "failed"):
        metrics.CALLBACKS.labels(status).set(hooks.get(status, 0))
    metrics.OLDEST_CALLBACK.set(_age_s(oldest_hook))


def _age_s(stamp: Any) -> float:
    """Seconds since `stamp` (0 when None); SQLite hands back naive UTC."""
    if stamp is None:
        return 0.0
    return max((utcnow() - as_utc(stamp)).total_seconds(), 0.0)
