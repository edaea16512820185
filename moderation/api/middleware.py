"""ASGI middleware that runs before any route reads the body: admission (the API key and the
rate limits) and the request body cap."""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
from http.cookies import CookieError, SimpleCookie
from typing import Any

import anyio.to_thread
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from moderation import metrics
from moderation.access import Principal
from moderation.access.ratelimit import Bucket
from moderation.access.sessions import load_session
from moderation.api.errors import error_response
from moderation.db.tables import utcnow
from moderation.errors import ModerationError
from moderation.pipeline.context import Context
from moderation.settings import Settings
from moderation.web.common import COOKIE

log = logging.getLogger(__name__)
_GUESSING = "Too many requests with unknown keys."


class Admission:
    """Every `/v1/` request is authenticated and rate limited from its headers alone, before a
    byte of its body is read: an unknown key costs the server nothing but this check, however
    large the upload it announces. Answers 401 (unknown key), 429 with `Retry-After` (over the
    key's or the address's rate, or too many unknown keys from one address)."""

    def __init__(self, app: ASGIApp, ctx: Context) -> None:
        self.app = app
        self.ctx = ctx
        self.settings: Settings = ctx.settings
        # Addresses refused for guessing keys, until when: refused again without a database lookup.
        self._blocked: dict[str, float] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == PLAYGROUND_UPLOAD:
            await self._playground(scope, receive, send)
            return
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        s = self.settings
        client = scope.get("client")
        address = client[0] if client else "unknown"
        authorization = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("latin-1")
                break
        # An address guessing keys gets no database lookup for a while: only keys this process
        # already knows (in use from there, say behind the same NAT) go on.
        blocked_for = self._blocked.get(address, 0.0) - time.monotonic()
        try:
            # A key this process knows is answered here; others are looked up in a worker thread.
            principal: Principal | None = self.ctx.keys.peek(authorization)
            if principal is None:
                principal = await anyio.to_thread.run_sync(self.ctx.keys.authenticate, authorization, blocked_for <= 0)
        except DBAPIError as exc:  # outside the app's exception handlers: answer as they would
            log.error("authentication: database unavailable: %s", exc)
            response = error_response("SERVICE_UNAVAILABLE", "The database is unavailable; retry with backoff.", 503)
            await response(scope, receive, send)
            return
        except ModerationError as exc:
            if blocked_for > 0:
                await self._limited(scope, receive, send, blocked_for, _GUESSING)
                return
            if exc.code == "UNAUTHENTICATED" and s.rate_limit:
                bucket = Bucket(f"fail:{address}", s.rate_limit_auth_failures_per_s, s.rate_limit_auth_failures_burst)
                wait = await anyio.to_thread.run_sync(self.ctx.limiter.take, [bucket])
                if wait:
                    if len(self._blocked) > 100_000:
                        self._blocked.clear()
                    self._blocked[address] = time.monotonic() + wait
                    await self._limited(scope, receive, send, wait, _GUESSING)
                    return
            response = error_response(exc.code, exc.message, exc.http_status, exc.data or None)
            await response(scope, receive, send)
            return
        if s.rate_limit:
            rate = s.rate_limit_tenants.get(principal.tenant_id, s.rate_limit_key_per_s)
            burst = max(s.rate_limit_key_burst * rate / s.rate_limit_key_per_s, 1.0)
            buckets = [
                Bucket(f"key:{principal.key_id}", rate, burst),
                Bucket(f"ip:{address}", s.rate_limit_ip_per_s, s.rate_limit_ip_burst),
            ]
            if principal.tenant_id in s.rate_limit_tenants:  # the tenant's rate, whatever keys it mints
                buckets.append(Bucket(f"tenant:{principal.tenant_id}", rate, burst))
            local = self.ctx.limiter.try_take(buckets)
            # The shared buckets when this process holds none of their tokens: a round trip, off the loop.
            over = local if local is not None else await anyio.to_thread.run_sync(self.ctx.limiter.take, buckets)
            if over:
                await self._limited(scope, receive, send, over, "Over the request rate of this key or address.")
                return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    async def _playground(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The console's upload takes API-sized bodies: only from a live session whose key is
        within its rate, checked from the cookie before a byte of the body is read."""
        cookies: SimpleCookie = SimpleCookie()
        for name, value in scope["headers"]:
            if name == b"cookie":
                with contextlib.suppress(CookieError):  # a malformed cookie header is no session
                    cookies.load(value.decode("latin-1"))
        morsel = cookies.get(COOKIE)
        token = morsel.value if morsel is not None else None
        session = await anyio.to_thread.run_sync(self._session, token)
        if session is None:  # as every console page answers without a session
            await RedirectResponse("/console/sign-in?next=/console/playground", 303)(scope, receive, send)
            return
        s = self.settings
        if s.rate_limit:
            bucket = Bucket(f"key:{session.key_id}", s.rate_limit_key_per_s, s.rate_limit_key_burst)
            over = await anyio.to_thread.run_sync(self.ctx.limiter.take, [bucket])
            if over:
                await self._limited(scope, receive, send, over, "Over the request rate of this key.")
                return
        await self.app(scope, receive, send)

    def _session(self, token: str | None) -> Any:
        with self.ctx.engine.connect() as conn:
            return load_session(conn, token, utcnow())

    async def _limited(self, scope: Scope, receive: Receive, send: Send, wait: float, message: str) -> None:
        retry = max(1, math.ceil(wait))
        response = error_response("RATE_LIMITED", message, 429, {"retry_after_s": retry})
        response.headers["Retry-After"] = str(retry)
        await response(scope, receive, send)


# Routes that take uploads; every other body (JSON) is small.
_UPLOADS = re.compile(r"^(?:/v1/(?:submissions|banks/[^/]+/(?:images|hashes))|/console/playground)/?$")
# The console's upload (its session is checked by Admission before the body is read).
PLAYGROUND_UPLOAD = "/console/playground"
JSON_BODY_LIMIT = 1024 * 1024


class BodyLimit:
    """Refuse bodies over their cap while they stream in, before any parsing or spooling (a
    missing or lying Content-Length does not get past it): the upload cap on upload routes,
    1 MiB on the rest, for every method that can carry a body."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.upload_limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.upload_limit if _UPLOADS.match(scope["path"]) else JSON_BODY_LIMIT
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._too_large(scope, receive, send, limit)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise StarletteHTTPException(413, f"Request body is over {limit} bytes.")
            return message

        await self.app(scope, counted, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        metrics.SUBMISSIONS.labels("rejected", "IMAGE_TOO_LARGE").inc()
        response = error_response("IMAGE_TOO_LARGE", f"Request body is over {limit} bytes.", 413)
        await response(scope, receive, send)
