"""The moderator console: server-rendered pages of the FastAPI app (Jinja2, a little hand-written
JavaScript, every asset served by the app). Sign-in exchanges an API key with a reviewing role for
a session cookie; every page and action checks the session's roles on the server."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from moderation.web import audit_pages, playground
from moderation.web.common import STATIC
from moderation.web.console import router


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.include_router(audit_pages.router)
    app.include_router(playground.router)
    app.mount("/console/static", StaticFiles(directory=STATIC), name="console-static")
