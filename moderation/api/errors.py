"""One JSON shape for every error the API answers: `{"error": {"code", "message"[, "details"]}}`.

`install` registers the handlers: ModerationError (our own codes), request validation, HTTP
errors of the framework, database errors (unreachable -> 503, conflicts -> 409) and the rest
(500, logged: bad input never yields it).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from moderation import metrics
from moderation.errors import CATALOGUE, ModerationError

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


def error_response(code: str, message: str, status: int, details: Any = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status)


async def _moderation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ModerationError)
    response = error_response(exc.code, exc.message, exc.http_status, exc.data or None)
    if "retry_after_s" in exc.data:
        response.headers["Retry-After"] = str(exc.data["retry_after_s"])
    return response


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{"field": ".".join(str(p) for p in e.get("loc", ())[1:]), "problem": e.get("msg")} for e in exc.errors()]
    if any(e["field"] == "file" for e in errors):
        return error_response("MISSING_FILE", CATALOGUE["MISSING_FILE"][1], 422, errors)
    return error_response("INVALID_REQUEST", "Request fields are missing or malformed.", 422, errors)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _STATUS_CODES.get(exc.status_code, "INVALID_REQUEST" if exc.status_code < 500 else "INTERNAL")
    if code == "IMAGE_TOO_LARGE":
        metrics.SUBMISSIONS.labels("rejected", code).inc()
    return error_response(code, str(exc.detail), exc.status_code)


async def _db_error(_: Request, exc: Exception) -> JSONResponse:
    # Only a database that cannot be reached is worth a retry; the rest is about the request.
    if isinstance(exc, OperationalError | InterfaceError) or getattr(exc, "connection_invalidated", False):
        log.error("database unavailable: %s", exc)
        return error_response("SERVICE_UNAVAILABLE", "The database is unavailable; retry with backoff.", 503)
    if isinstance(exc, IntegrityError):
        log.info("integrity error answered 409: %s", exc.orig)
        return error_response("CONFLICT", "The resource exists already or was changed concurrently.", 409)
    if isinstance(exc, DataError):
        return error_response("INVALID_REQUEST", "A value does not fit its field.", 422)
    log.exception("database error")
    return error_response("INTERNAL", "Unexpected server error.", 500)


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error")
    return error_response("INTERNAL", "Unexpected server error.", 500)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every exception into the one error shape."""
    app.add_exception_handler(ModerationError, _moderation_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(DBAPIError, _db_error)
    app.add_exception_handler(Exception, _unexpected)
