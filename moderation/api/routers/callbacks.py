"""Webhook administration (role `admin`, the caller's own tenant): the signing secret and the
receiver rules (plain http, private networks)."""

from __future__ import annotations

import ipaddress
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from moderation import callbacks
from moderation.api.deps import Auth, Ctx
from moderation.errors import ModerationError

router = APIRouter(tags=["callbacks"])


class ReceiverRulesIn(BaseModel):
    """The whole rule set (PUT replaces it): omitted fields take their strict defaults."""

    model_config = ConfigDict(extra="forbid")

    allow_http: bool = Field(False, description="Allow plain http:// receivers (default: https only).")
    private_networks: list[str] = Field(
        default_factory=list,
        max_length=callbacks.netguard.MAX_NETWORKS,
        description="CIDR networks (e.g. 10.0.0.0/8, fd00::/8) a receiver may resolve to besides public addresses.",
    )


@router.post("/v1/callbacks/secret")
def callback_secret_rotate(ctx: Ctx, who: Auth) -> dict[str, Any]:
    """Rotate the tenant's webhook signing secret. The new secret is in this answer only; the old
    one keeps signing beside it until `previous_valid_until`."""
    who.require("admin")
    with ctx.engine.begin() as conn:
        return callbacks.rotate_secret(conn, who.tenant_id, ctx.settings, actor=who.key_id)


@router.get("/v1/callbacks/receivers")
def callback_receivers_get(ctx: Ctx, who: Auth) -> dict[str, Any]:
    """The tenant's receiver rules: `{"allow_http": bool, "private_networks": [CIDR, ...]}`."""
    who.require("admin")
    with ctx.engine.connect() as conn:
        return callbacks.receiver_rules(conn, who.tenant_id).to_json()


@router.put("/v1/callbacks/receivers")
def callback_receivers_put(body: ReceiverRulesIn, ctx: Ctx, who: Auth) -> dict[str, Any]:
    """Replace the tenant's receiver rules (audited as `callback_receivers_changed`). A value that
    is not an IP network is a 422. Metadata and link-local addresses stay refused unless a network
    inside their range is listed (169.254.169.254/32 itself, not 169.254.0.0/16 or 0.0.0.0/0)."""
    who.require("admin")
    try:
        rules = callbacks.ReceiverRules.parse(body.allow_http, body.private_networks)
    except ValueError as exc:
        raise ModerationError("INVALID_REQUEST", f"private_networks: {exc}.", field="private_networks") from None
    # A tenant's admin key is a tenant's credential: it opens only networks the operator lets
    # tenants open (MODERATION_CALLBACK_TENANT_NETWORKS); the operator's CLI sets any.
    ceiling = [ipaddress.ip_network(n, strict=False) for n in ctx.settings.callback_tenant_networks]
    outside = [
        str(net)
        for net in rules.private_networks
        if not any(net.version == top.version and net.subnet_of(top) for top in ceiling)  # type: ignore[arg-type]
    ]
    if outside:
        raise ModerationError(
            "FORBIDDEN",
            f"private_networks {', '.join(outside)} are outside what the operator lets tenants open "
            "(MODERATION_CALLBACK_TENANT_NETWORKS); ask the operator (`moderation callbacks receivers`).",
            field="private_networks",
        )
    with ctx.engine.begin() as conn:
        return callbacks.set_receiver_rules(conn, who.tenant_id, rules, actor=who.key_id).to_json()
