"""Hash bank administration (role `admin`): banks, images and hash lists, entries."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Path, Query, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel

from moderation import banks
from moderation.api.deps import Auth, Ctx
from moderation.errors import ModerationError

router = APIRouter(tags=["banks"])


class BankIn(BaseModel):
    name: str
    kind: Literal["bad", "good"]
    category: str | None = None
    description: str | None = None


@router.post("/v1/banks", status_code=201)
def bank_create(body: BankIn, ctx: Ctx, who: Auth) -> dict[str, Any]:
    """Create a bank: `kind` bad (a match blocks) or good (a match allows), and the category a match implies."""
    who.require("admin")
    with ctx.engine.begin() as conn:
        return banks.create_bank(
            conn, who.tenant_id, body.name, body.kind, body.category, body.description, actor=who.key_id
        )


@router.get("/v1/banks")
def bank_list(ctx: Ctx, who: Auth) -> dict[str, Any]:
    who.require("admin")
    with ctx.engine.connect() as conn:
        return {"banks": banks.list_banks(conn, who.tenant_id)}


@router.post("/v1/banks/{name}/images", status_code=201)
def bank_add_images(
    name: str,
    ctx: Ctx,
    who: Auth,
    files: Annotated[list[UploadFile], File(description="Images to bank")],
    label: Annotated[str | None, Form()] = None,
) -> dict[str, Any]:
    """Hash images (same validation as submissions) and add them to the bank."""
    who.require("admin")
    # Decoded before the transaction: the audit append holds the tenant's chain lock until commit.
    entries = [
        banks.image_entry(ctx.limits, f.file.read(ctx.settings.max_upload_bytes + 1), label or f.filename)
        for f in files
    ]
    with ctx.engine.begin() as conn:
        ids = banks.add_entries(conn, who.tenant_id, name, entries, who.key_id)
    return {"added": len(ids), "entry_ids": ids}


@router.post("/v1/banks/{name}/hashes", status_code=201)
def bank_import_hashes(
    name: str,
    ctx: Ctx,
    who: Auth,
    file: Annotated[UploadFile, File(description="CSV/TSV: pdq[,label][,sha256]")],
) -> dict[str, Any]:
    """Import a hash list (CSV or TSV with a `pdq` column, or lines of `<pdq>[,<label>]`)."""
    who.require("admin")
    limit = ctx.settings.max_upload_bytes
    raw = file.file.read(limit + 1)
    if len(raw) > limit:
        raise ModerationError("IMAGE_TOO_LARGE", "The hash list is over the upload size cap.")
    try:
        text_body = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ModerationError("INVALID_REQUEST", "The hash list must be UTF-8 text.") from exc
    with ctx.engine.begin() as conn:
        return {"added": banks.import_hash_list(conn, who.tenant_id, name, text_body, who.key_id)}


@router.get("/v1/banks/{name}/entries")
def bank_entries_list(
    name: str,
    ctx: Ctx,
    who: Auth,
    after_id: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    who.require("admin")
    with ctx.engine.connect() as conn:
        return {"entries": banks.list_entries(conn, who.tenant_id, name, after_id, limit)}


@router.delete("/v1/banks/{name}/entries/{entry_id}", status_code=204)
def bank_remove_entry(name: str, entry_id: Annotated[int, Path(ge=0, le=2**62)], ctx: Ctx, who: Auth) -> Response:
    who.require("admin")
    with ctx.engine.begin() as conn:
        banks.remove_entry(conn, who.tenant_id, name, entry_id, who.key_id)
    return Response(status_code=204)
