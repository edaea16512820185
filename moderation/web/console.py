"""The console's pages and actions (under /console). Each handler loads the session (else: to
sign-in), checks its roles, verifies the CSRF token on every POST, and calls the same functions
as the review API. A page never carries a claim token: the session keeps them."""

from __future__ import annotations

import hmac
import secrets
import time
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Cookie, Form, Request
from fastapi.responses import HTMLResponse, Response

from moderation.access import sessions
from moderation.access.ratelimit import Bucket
from moderation.db.tables import utcnow
from moderation.errors import ModerationError
from moderation.pipeline.human import HumanDecision, decide
from moderation.review import leases, media
from moderation.review.case import build_case
from moderation.review.listing import TaskFilter, list_tasks, queue_counts
from moderation.review.reviewer import REVIEW_ROLES, Reviewer
from moderation.review.serve import serve_for
from moderation.web.common import (
    COOKIE,
    HEADERS,
    PRE_CSRF,
    SessionCookie,
    check_csrf,
    ctx_of,
    guarded,
    load,
    page,
    redirect,
)

router = APIRouter(prefix="/console", include_in_schema=False)
# Who may sign in: reviewers (queues), auditors (the workspace), platforms (the playground).
CONSOLE_ROLES = (*REVIEW_ROLES, "auditor", "submitter", "admin")


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _session(request: Request, token: str | None) -> tuple[sessions.WebSession, Reviewer]:
    """The live session and its reviewer. Raises SignInRequired, or ModerationError FORBIDDEN
    for a key without a reviewing role."""
    session = load(request, token)
    reviewer = Reviewer(session.key_id, session.tenant_id, session.roles)
    reviewer.require()
    return session, reviewer


def _reload(request: Request, token: str | None) -> sessions.WebSession:
    """The session as it is now (its claims changed). Raises SignInRequired if it just ended."""
    return load(request, token)


_BLOCKED: dict[str, float] = {}  # addresses over their budget of unknown keys, until when


@router.get("/sign-in", response_class=HTMLResponse)
def sign_in_page(request: Request, next: str = "/console", error: str | None = None) -> Response:
    pre = secrets.token_urlsafe(24)
    response = page(request, "sign_in.html", csrf=pre, next=_local(next), error=error)
    response.set_cookie(PRE_CSRF, pre, httponly=True, samesite="strict", secure=_secure(request), path="/console")
    return response


def _local(url: str) -> str:
    """Only a path of the console as a redirect target (never another site)."""
    return url if url.startswith("/console") and "//" not in url and "\\" not in url else "/console"


@router.post("/sign-in")
def sign_in(
    request: Request,
    key: Annotated[str, Form(max_length=200)] = "",
    csrf: Annotated[str, Form(max_length=100)] = "",
    next: Annotated[str, Form(max_length=300)] = "/console",
    pre: Annotated[str | None, Cookie(alias=PRE_CSRF)] = None,
) -> Response:
    """Exchange an API key with a reviewing role for a session cookie."""
    if not pre or not hmac.compare_digest(pre, csrf):
        return redirect("/console/sign-in?error=stale")
    ctx = ctx_of(request)
    s = ctx.settings
    address = request.client.host if request.client else "unknown"
    guessing = Bucket(f"fail:{address}", s.rate_limit_auth_failures_per_s, s.rate_limit_auth_failures_burst)
    blocked = _BLOCKED.get(address, 0.0) > time.monotonic()
    try:
        # An address over its budget of unknown keys gets no lookup: only keys this process knows.
        who = ctx.keys.authenticate(f"Bearer {key.strip()}", not blocked)
    except ModerationError:
        # The API's budget of unknown keys per address: the form is no way around it.
        wait = ctx.limiter.take([guessing]) if s.rate_limit and not blocked else 0.0
        if blocked or wait:
            if len(_BLOCKED) > 100_000:
                _BLOCKED.clear()
            _BLOCKED.setdefault(address, time.monotonic() + max(wait, 1.0))
            return page(request, "sign_in.html", status=429, csrf=csrf, next=_local(next), error="limited")
        return page(request, "sign_in.html", status=401, csrf=csrf, next=_local(next), error="unknown")
    if not set(CONSOLE_ROLES) & who.roles:
        return page(request, "sign_in.html", status=403, csrf=csrf, next=_local(next), error="role")
    with ctx.engine.begin() as conn:
        token = sessions.create_session(conn, who.tenant_id, who.key_id, ctx.settings.web_session_s, utcnow())
    response = redirect(_local(next))
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(ctx.settings.web_session_s),
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path="/console",
    )
    response.delete_cookie(PRE_CSRF, path="/console")
    return response


@router.post("/sign-out")
@guarded
def sign_out(request: Request, token: SessionCookie = None, csrf: Annotated[str, Form()] = "") -> Response:
    session, _ = _session(request, token)
    check_csrf(session, csrf)
    ctx = ctx_of(request)
    with ctx.engine.begin() as conn:
        sessions.end_session(conn, token, utcnow())
    response = redirect("/console/sign-in")
    response.delete_cookie(COOKIE, path="/console")
    return response


@router.get("", response_class=HTMLResponse)
@guarded
def queues(request: Request, token: SessionCookie = None, empty: str | None = None) -> Response:
    """Counts per queue, the oldest age against the SLA, my claims, the exposure budget. Keys
    that do not review go to their own part of the console."""
    session = load(request, token)
    if not set(REVIEW_ROLES) & session.roles:
        return redirect("/console/audit" if "auditor" in session.roles else "/console/playground")
    session, reviewer = _session(request, token)
    ctx = ctx_of(request)
    now = utcnow()
    with ctx.engine.connect() as conn:
        counts = queue_counts(conn, reviewer, now)
        mine = list_tasks(conn, reviewer, TaskFilter(mine=True), now)["tasks"]
        spent = media.exposure(conn, reviewer, ctx.settings.exposure_budget_per_hour, now)
    return page(
        request,
        "queues.html",
        session=session,
        reviewer=reviewer,
        queues=counts,
        mine=mine,
        exposure=spent,
        empty=empty,
        now=now,
    )


@router.post("/next")
@guarded
def start(
    request: Request,
    token: SessionCookie = None,
    csrf: Annotated[str, Form()] = "",
    queue: Annotated[str, Form(max_length=32)] = "",
) -> Response:
    """Claim the next task and open it ("Start reviewing", and auto-next after a decision)."""
    session, reviewer = _session(request, token)
    check_csrf(session, csrf)
    return _next(request, session, reviewer, queue or None)


def _next(
    request: Request,
    session: sessions.WebSession,
    reviewer: Reviewer,
    queue: str | None,
    skipped: str | None = None,
) -> Response:
    """Claim the next task (never `skipped`, and no golden item right after a skip) and open it."""
    ctx = ctx_of(request)
    with ctx.engine.begin() as conn:
        task = serve_for(conn, reviewer, ctx.settings, ctx.policies, utcnow(), queue, exclude=skipped)
        if task is None:
            return redirect("/console?empty=" + quote(queue or "all"))
        sessions.remember_claim(conn, session, task["id"], task["claim"]["token"])
    suffix = f"?queue={quote(queue)}" if queue else ""
    return redirect(f"/console/tasks/{task['id']}{suffix}")


@router.get("/tasks/{task_id}", response_class=HTMLResponse)
@guarded
def case_page(request: Request, task_id: str, token: SessionCookie = None, queue: str = "") -> Response:
    session, reviewer = _session(request, token)
    return _case(request, session, reviewer, task_id, queue)


def _case(
    request: Request,
    session: sessions.WebSession,
    reviewer: Reviewer,
    task_id: str,
    queue: str,
    error: ModerationError | None = None,
    form: dict[str, Any] | None = None,
) -> HTMLResponse:
    ctx = ctx_of(request)
    now = utcnow()
    with ctx.engine.connect() as conn:
        task = leases.get_task(conn, reviewer, task_id[:32])
        case = build_case(
            conn, task, ctx.policies, now, tasks_url="/console/tasks", show_restricted=reviewer.restricted
        )
        spent = media.exposure(conn, reviewer, ctx.settings.exposure_budget_per_hour, now)
    held = leases.holds(task, reviewer, now) and task.id in session.claims
    return page(
        request,
        "case.html",
        status=error.http_status if error else 200,
        session=session,
        reviewer=reviewer,
        case=case,
        task=case["task"],
        held=held,
        exposure=spent,
        queue=queue[:32],
        error=error,
        form=form or {},
        lease_s=ctx.settings.review_lease_s,
    )


@router.post("/tasks/{task_id}/claim")
@guarded
def claim(request: Request, task_id: str, token: SessionCookie = None, csrf: Annotated[str, Form()] = "") -> Response:
    session, reviewer = _session(request, token)
    check_csrf(session, csrf)
    ctx = ctx_of(request)
    with ctx.engine.begin() as conn:
        claimed = leases.claim(conn, reviewer, task_id[:32], utcnow(), ctx.settings.review_lease_s)
        sessions.remember_claim(conn, session, claimed["id"], claimed["claim"]["token"])
    return redirect(f"/console/tasks/{claimed['id']}")


@router.post("/tasks/{task_id}/heartbeat")
@guarded
def heartbeat(request: Request, task_id: str, token: SessionCookie = None) -> Response:
    """The case page's keep-alive (fetch with the CSRF token in X-CSRF-Token)."""
    session, reviewer = _session(request, token)
    check_csrf(session, request.headers.get("x-csrf-token"))
    ctx = ctx_of(request)
    with ctx.engine.begin() as conn:
        leases.heartbeat(
            conn, reviewer, task_id[:32], session.claims.get(task_id[:32]), utcnow(), ctx.settings.review_lease_s
        )
    return Response(status_code=204, headers=HEADERS)


@router.post("/tasks/{task_id}/release")
@guarded
def skip(
    request: Request,
    task_id: str,
    token: SessionCookie = None,
    csrf: Annotated[str, Form()] = "",
    queue: Annotated[str, Form(max_length=32)] = "",
) -> Response:
    """Skip: give the task back to its queue and go on to the next one."""
    session, reviewer = _session(request, token)
    check_csrf(session, csrf)
    ctx = ctx_of(request)
    with ctx.engine.begin() as conn:
        leases.release(conn, reviewer, task_id[:32], session.claims.get(task_id[:32]), utcnow())
        sessions.remember_claim(conn, session, task_id[:32], None)
    # The skipped task is open again and would come straight back: serve the others.
    return _next(request, _reload(request, token), reviewer, queue or None, skipped=task_id[:32])


@router.get("/tasks/{task_id}/image")
@guarded
def image(request: Request, task_id: str, token: SessionCookie = None, variant: str = "safe") -> Response:
    _, reviewer = _session(request, token)
    if variant not in ("safe", "original"):
        raise ModerationError("INVALID_REQUEST", "variant is safe or original.", field="variant")
    ctx = ctx_of(request)
    data, media_type = media.task_image(
        ctx.engine, ctx.blobs, ctx.limits, ctx.settings.review_safe_side, reviewer, task_id[:32], variant, utcnow()
    )
    return Response(data, media_type=media_type, headers=HEADERS)


@router.post("/tasks/{task_id}/decision")
@guarded
def decision(
    request: Request,
    task_id: str,
    token: SessionCookie = None,
    csrf: Annotated[str, Form()] = "",
    action: Annotated[str, Form(max_length=16)] = "",
    categories: Annotated[list[str] | None, Form()] = None,
    reason: Annotated[str, Form(max_length=2000)] = "",
    outcome: Annotated[str, Form(max_length=16)] = "",
    add_to_bank: Annotated[str, Form(max_length=64)] = "",
    then: Annotated[str, Form(max_length=8)] = "next",
    queue: Annotated[str, Form(max_length=32)] = "",
) -> Response:
    """Decide the held task; then the next one (auto-next), or the queues page."""
    session, reviewer = _session(request, token)
    check_csrf(session, csrf)
    ctx = ctx_of(request)
    form = {"action": action, "categories": categories or [], "reason": reason, "outcome": outcome}
    body = {
        "claim_token": session.claims.get(task_id[:32]) or "",
        "action": action or None,
        "categories": [c for c in categories or [] if c],
        "reason": reason or None,
        "outcome": outcome or None,
        "add_to_bank": add_to_bank or None,
    }
    try:
        decide(ctx, reviewer, task_id[:32], HumanDecision.parse(body))
    except ModerationError as exc:
        if exc.code in ("REASON_REQUIRED", "INVALID_REQUEST"):
            return _case(request, session, reviewer, task_id, queue, error=exc, form=form)
        raise
    with ctx.engine.begin() as conn:
        sessions.remember_claim(conn, session, task_id[:32], None)
    if then != "next":
        return redirect("/console")
    return _next(request, _reload(request, token), reviewer, queue or None)
