"""ASGI middleware that runs before any route: the request body cap."""

from __future__ import annotations

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from moderation import metrics
from moderation.api.errors import error_response


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
        response = error_response("IMAGE_TOO_LARGE", f"Request body is over {self.limit} bytes.", 413)
        await response(scope, receive, send)
