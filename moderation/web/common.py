"""What every console page shares: templates, security headers, the session cookie, the
sign-in redirect, CSRF checks and the error page."""

from __future__ import annotations

import functools
import hmac
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Cookie, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from moderation.access import sessions
from moderation.db.tables import utcnow
from moderation.errors import ModerationError
from moderation.pipeline.context import Context
from moderation.policy.schema import TAXONOMY
from moderation.web.views import age, marked_segments, score_bars, short_time

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.globals.update(age=age, marked_segments=marked_segments, score_bars=score_bars, TAXONOMY=TAXONOMY)
templates.env.filters["when"] = short_time

COOKIE = "moderation_session"
PRE_CSRF = "moderation_signin"

# No script or style from elsewhere, no framing, nothing cached or referred.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}

SessionCookie = Annotated[str | None, Cookie(alias=COOKIE)]


class SignInRequired(Exception):
    """No live session: the handler answers with the sign-in page."""


def ctx_of(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


def page(request: Request, name: str, status: int = 200, **values: Any) -> HTMLResponse:
    response = templates.TemplateResponse(request, name, values, status_code=status)
    response.headers.update(HEADERS)
    return response


def redirect(url: str) -> RedirectResponse:
    response = RedirectResponse(url, status_code=303)
    response.headers.update(HEADERS)
    return response


def load(request: Request, token: str | None) -> sessions.WebSession:
    """The live session. Raises SignInRequired."""
    with ctx_of(request).engine.connect() as conn:
        session = sessions.load_session(conn, token, utcnow())
    if session is None:
        raise SignInRequired
    return session


def require(session: sessions.WebSession, *roles: str) -> None:
    """Raises ModerationError FORBIDDEN unless the session's key holds one of `roles`."""
    if not session.roles & set(roles):
        raise ModerationError("FORBIDDEN", f"This page needs one of the roles: {', '.join(roles)}.")


def check_csrf(session: sessions.WebSession, sent: str | None) -> None:
    if not sent or not hmac.compare_digest(sent, session.csrf):
        raise ModerationError("FORBIDDEN", "The form is stale or came from elsewhere (CSRF token). Reload the page.")


def guarded(handler: Any) -> Any:
    """Turn SignInRequired into the sign-in redirect and ModerationError into an error page."""

    @functools.wraps(handler)
    def wrapper(*args: Any, **kw: Any) -> Response:
        request: Request = kw["request"]
        try:
            return handler(*args, **kw)  # type: ignore[no-any-return]
        except SignInRequired:
            return redirect("/console/sign-in?next=" + quote(request.url.path))
        except ModerationError as exc:
            return page(request, "error.html", status=exc.http_status, error=exc)

    return wrapper
