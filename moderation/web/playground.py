"""The playground (role `submitter` or `admin`, under /console/playground): drop an image, pick a
policy, and follow it through the real pipeline (hashes, bank matches, cache, each analyzer's
finding with its time, scores against the policy's bands, flags, the decision, the audit events).
Its submissions are marked (source `play`) and kept out of DSA exports and dashboard figures."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, Response

from moderation.db.tables import utcnow
from moderation.pipeline.accept import SubmissionRequest, accept
from moderation.submissions.trace import trace
from moderation.web.charts import bars
from moderation.web.common import SessionCookie, check_csrf, ctx_of, guarded, load, page, redirect, require

router = APIRouter(prefix="/console/playground", include_in_schema=False)
PLAY = "play"


def _policies(request: Request, tenant_id: str) -> list[str]:
    ctx = ctx_of(request)
    access = ctx.keys.tenant(tenant_id)
    default = (access.default_policy if access else None) or ctx.settings.default_policy
    return sorted(p for p in ctx.policies if access is None or access.allows(p, default))


@router.get("", response_class=HTMLResponse)
@guarded
def playground(request: Request, token: SessionCookie = None) -> Response:
    session = load(request, token)
    require(session, "submitter", "admin")
    return page(request, "playground.html", session=session, policies=_policies(request, session.tenant_id))


@router.post("")
@guarded
def upload(
    request: Request,
    token: SessionCookie = None,
    csrf: Annotated[str, Form()] = "",
    file: Annotated[UploadFile | None, File()] = None,
    caption: Annotated[str, Form(max_length=2000)] = "",
    policy: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    session = load(request, token)
    require(session, "submitter", "admin")
    check_csrf(session, csrf)
    ctx = ctx_of(request)
    data = file.file.read(ctx.settings.max_upload_bytes + 1) if file is not None else b""
    req = SubmissionRequest(
        tenant_id=session.tenant_id,
        actor=session.key_id,
        caption=caption or None,
        policy=policy or None,
        request_ip=request.client.host if request.client else None,
        source=PLAY,
    )
    result, _ = accept(ctx, req, data)
    return redirect(f"/console/playground/{result['id']}")


@router.get("/{submission_id}", response_class=HTMLResponse)
@guarded
def follow(request: Request, submission_id: str, token: SessionCookie = None) -> Response:
    session = load(request, token)
    require(session, "submitter", "admin")
    ctx = ctx_of(request)
    with ctx.engine.connect() as conn:
        t = trace(conn, session.tenant_id, submission_id[:64], ctx.policies)
    return page(request, "playground_trace.html", session=session, t=t, now=utcnow(), bars=bars)
