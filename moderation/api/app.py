"""The HTTP API (FastAPI): the application factory. Routes live in `routers/`, the error shape in
`errors`, what handlers receive in `deps`."""

from __future__ import annotations

from fastapi import FastAPI

from moderation import __version__, web
from moderation.api import docs, errors
from moderation.api.middleware import Admission, BodyLimit
from moderation.api.routers import admin, appeals, audit, banks, callbacks, ops, review, submissions
from moderation.errors import CATALOGUE
from moderation.pipeline.context import Context
from moderation.settings import Settings


def create_app(settings: Settings | None = None, ctx: Context | None = None) -> FastAPI:
    settings = settings or Settings()
    ctx = ctx or Context.build(settings)
    app = FastAPI(
        docs_url=None,  # served by `docs` from local assets (no CDN)
        redoc_url=None,
        title="Moderation API",
        version=__version__,
        description="Image content moderation: submit images, read decisions, verify the audit log. "
        'Errors are `{"error": {"code", "message"}}`; codes: '
        + ", ".join(f"`{c}` ({s})" for c, (s, _) in CATALOGUE.items()),
    )
    app.state.ctx = ctx
    # Multipart framing adds a little to the file itself.
    app.add_middleware(BodyLimit, limit=settings.max_upload_bytes + 256 * 1024)
    app.add_middleware(Admission, ctx=ctx)  # added last, runs first: nothing reads a body before it
    errors.install(app)
    web.install(app)
    docs.install(app)
    for router in (
        submissions.router,
        appeals.router,
        review.router,
        audit.router,
        callbacks.router,
        banks.router,
        admin.router,
        ops.router,
    ):
        app.include_router(router)
    return app
