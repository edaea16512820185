"""What handlers receive: the process's Context and the caller's Principal (from the key)."""

from __future__ import annotations

from typing import Annotated

import anyio.to_thread
from fastapi import Depends, Header, Request

from moderation.access import Principal
from moderation.pipeline.context import Context


async def get_context(request: Request) -> Context:
    """The process's Context. Async on purpose: it only reads app state, so it runs on the event
    loop instead of taking a worker thread for each request (sync dependencies do)."""
    ctx: Context = request.app.state.ctx
    return ctx


async def get_principal(request: Request, authorization: Annotated[str | None, Header()] = None) -> Principal:
    """The caller, from `Authorization: Bearer <key>` (401 UNAUTHENTICATED otherwise): normally
    already authenticated by the `Admission` middleware, before the body was read; else here,
    in a worker thread (a key not in the cache is read from the database)."""
    known = getattr(request.state, "principal", None)
    if isinstance(known, Principal):
        return known
    ctx: Context = request.app.state.ctx
    return await anyio.to_thread.run_sync(ctx.keys.authenticate, authorization)


Ctx = Annotated[Context, Depends(get_context)]
Auth = Annotated[Principal, Depends(get_principal)]
