"""Webhook administration (role `admin`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from moderation import callbacks
from moderation.api.deps import Auth, Ctx

router = APIRouter(tags=["callbacks"])


@router.post("/v1/callbacks/secret")
def callback_secret_rotate(ctx: Ctx, who: Auth) -> dict[str, Any]:
    """Rotate the tenant's webhook signing secret. The new secret is in this answer only; the old
    one (or the deployment's, the first time) keeps signing beside it until `previous_valid_until`."""
    who.require("admin")
    with ctx.engine.begin() as conn:
        return callbacks.rotate_secret(conn, who.tenant_id, ctx.settings, actor=who.key_id)
