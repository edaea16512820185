"""Tenant administration (role `admin`, the caller's own tenant only): API keys (list, create,
revoke, rotate) and the tenant's policy settings. Another tenant's key id answers 404, exactly
like an id that does not exist. An admin may mint keys of any tenant role (submitter, moderator,
auditor, admin) for its own tenant; nothing here reaches another tenant or deployment settings.
A new key is in the response once and nowhere else."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from moderation.access import keys as key_store
from moderation.access import tenants as tenant_store
from moderation.api.deps import Auth, Ctx
from moderation.errors import ModerationError

router = APIRouter(tags=["admin"])

KeyId = Annotated[str, Path(max_length=32)]


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    roles: list[str] = Field(min_length=1, max_length=8, description="submitter | moderator | auditor | admin")
    label: str | None = Field(default=None, max_length=200)


class RotateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grace_s: float = Field(default=0.0, ge=0, le=key_store.MAX_GRACE_S, description="Seconds the old key keeps working")


class TenantPatch(BaseModel):
    """Fields left out stay as they are; `default_policy: null` selects the deployment's default,
    `allowed_policies: null` allows every policy the deployment ships."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=200)
    default_policy: str | None = Field(default=None, max_length=64)
    allowed_policies: list[str] | None = Field(default=None, max_length=100)


@router.get("/v1/admin/keys")
def keys_list(ctx: Ctx, who: Auth) -> dict[str, Any]:
    """The tenant's keys: id, prefix, roles, label, created, last used, revoked (never a key or its hash)."""
    who.require("admin")
    with ctx.engine.connect() as conn:
        return {"keys": key_store.list_keys(conn, who.tenant_id)}


@router.post("/v1/admin/keys", status_code=201)
def keys_create(body: KeyIn, ctx: Ctx, who: Auth) -> dict[str, Any]:
    """Create a key for this tenant → 201 `{"key", ...}`: the key is shown once, only its hash is stored."""
    who.require("admin")
    with ctx.engine.begin() as conn:
        key = key_store.create_key(conn, who.tenant_id, body.roles, body.label, actor=who.key_id)
        view = key_store.get_key(conn, key.split("_")[1], who.tenant_id)
    return {"key": key, **view}


@router.post("/v1/admin/keys/{key_id}/revoke")
def keys_revoke(key_id: KeyId, ctx: Ctx, who: Auth) -> dict[str, Any]:
    """Revoke a key of this tenant: refused by every process within a second."""
    who.require("admin")
    with ctx.engine.begin() as conn:
        return key_store.revoke_key(conn, key_id, who.key_id, tenant_id=who.tenant_id)


@router.post("/v1/admin/keys/{key_id}/rotate", status_code=201)
def keys_rotate(key_id: KeyId, ctx: Ctx, who: Auth, body: RotateIn | None = None) -> dict[str, Any]:
    """A new key with the same roles and label → 201 `{"key", ..., "replaces"}`; the old one is
    revoked now, or when `grace_s` has passed."""
    who.require("admin")
    grace_s = body.grace_s if body else 0.0
    with ctx.engine.begin() as conn:
        key, view = key_store.rotate_key(conn, key_id, who.key_id, tenant_id=who.tenant_id, grace_s=grace_s)
    return {"key": key, **view, "replaces": key_id}


@router.get("/v1/admin/tenant")
def tenant_get(ctx: Ctx, who: Auth) -> dict[str, Any]:
    """This tenant: id, name, default_policy, allowed_policies (null: all), created_at."""
    who.require("admin")
    with ctx.engine.connect() as conn:
        return tenant_store.get_tenant(conn, who.tenant_id)


@router.patch("/v1/admin/tenant")
def tenant_patch(body: TenantPatch, ctx: Ctx, who: Auth) -> dict[str, Any]:
    """Change the name, default policy or allowed policies (checked against the loaded policies:
    422 `UNKNOWN_POLICY` otherwise). Applies in every process within a second."""
    who.require("admin")
    given = body.model_fields_set
    if "name" in given and body.name is None:
        raise ModerationError("INVALID_REQUEST", "name cannot be null.", field="name")
    with ctx.engine.begin() as conn:
        return tenant_store.update_tenant(
            conn,
            who.tenant_id,
            list(ctx.policies),
            name=body.name if body.name is not None else tenant_store.UNSET,
            default_policy=body.default_policy if "default_policy" in given else tenant_store.UNSET,
            allowed_policies=body.allowed_policies if "allowed_policies" in given else tenant_store.UNSET,
            actor=who.key_id,
        )
