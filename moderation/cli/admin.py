"""Operator commands on the database: API keys and webhook secrets, the audit chain, hash banks."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from moderation.cli.common import IMAGE_SUFFIXES, err, out, settings

keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit log.", no_args_is_help=True)
bank_app = typer.Typer(help="Hash banks: known-bad and known-good images.", no_args_is_help=True)


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant id (created if new, with every policy allowed)")],
    role: Annotated[list[str], typer.Option(help="submitter | moderator | auditor | admin (repeatable)")],
    label: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Create an API key; prints only the key (shown once, stored hashed)."""
    from moderation.access.keys import create_key
    from moderation.db.engine import make_engine
    from moderation.errors import ModerationError

    engine = make_engine(settings())
    try:
        with engine.begin() as conn:
            key = create_key(conn, tenant, role, label)
    except ModerationError as exc:
        err.print(f"[red]{exc.message}[/]")
        raise typer.Exit(2) from exc
    print(key)


@keys_app.command("list")
def keys_list(
    tenant: Annotated[str | None, typer.Option(help="One tenant; all by default")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False,
) -> None:
    """List keys: id, prefix, tenant, roles, label, created, last used, revoked (never a key or its hash)."""
    import json

    from moderation.access.keys import list_keys
    from moderation.db.engine import make_engine

    with make_engine(settings()).connect() as conn:
        rows = list_keys(conn, tenant)
    if as_json:
        for r in rows:
            print(json.dumps(r))
        return
    table = Table(title="API keys" + (f" of {tenant}" if tenant else ""))
    for col in ("id", "prefix", "tenant", "roles", "label", "created", "last used", "revoked"):
        table.add_column(col, no_wrap=col == "id", overflow="fold")
    for r in rows:
        revoked = {"active": "", "expiring": f"{r['revoked_at']} (grace)"}.get(r["state"], r["revoked_at"])
        table.add_row(
            r["id"],
            r["prefix"],
            r["tenant_id"],
            ",".join(r["roles"]),
            r["label"] or "",
            r["created_at"] or "",
            r["last_used_at"] or "never",
            revoked,
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (the hex after mk_)")]) -> None:
    """Revoke a key: every process refuses it within MODERATION_KEY_REVOCATION_POLL_S (0.5 s)."""
    from moderation.access.keys import revoke_key
    from moderation.db.engine import make_engine
    from moderation.errors import ModerationError

    try:
        with make_engine(settings()).begin() as conn:
            key = revoke_key(conn, key_id, actor="cli")
    except ModerationError as exc:
        err.print(f"[red]{exc.message}[/]")
        raise typer.Exit(2) from exc
    out.print(f"revoked {key['id']} (tenant {key['tenant_id']}) at {key['revoked_at']}")


@keys_app.command("rotate")
def keys_rotate(
    key_id: Annotated[str, typer.Argument(help="The key's id (the hex after mk_)")],
    grace_s: Annotated[float, typer.Option(help="Seconds the old key keeps working (0: revoked now)")] = 0.0,
) -> None:
    """Replace a key by a new one (same tenant, roles, label); prints only the new key (shown once)."""
    from moderation.access.keys import rotate_key
    from moderation.db.engine import make_engine
    from moderation.errors import ModerationError

    try:
        with make_engine(settings()).begin() as conn:
            key, new = rotate_key(conn, key_id, actor="cli", grace_s=grace_s)
    except ModerationError as exc:
        err.print(f"[red]{exc.message}[/]")
        raise typer.Exit(2) from exc
    until = "revoked now" if grace_s == 0 else f"still valid for {grace_s:g} s"
    err.print(f"new key {new['id']} replaces {key_id} ({until})")
    print(key)


@keys_app.command("callback-secret")
def keys_callback_secret(tenant: Annotated[str, typer.Option(help="Tenant id (created if new)")]) -> None:
    """Give the tenant a new webhook signing secret; prints only the secret (shown once).

    Until the grace period (MODERATION_CALLBACK_SECRET_GRACE_S, 24 h) ends, deliveries carry a
    second signature made with the secret it replaces, so the platform can switch without a gap.
    """
    from moderation.access.keys import ensure_tenant
    from moderation.callbacks import rotate_secret
    from moderation.db.engine import make_engine

    s = settings()
    with make_engine(s).begin() as conn:
        ensure_tenant(conn, tenant)
        out = rotate_secret(conn, tenant, s, actor="cli")
    err.print(f"previous secret valid until {out['previous_valid_until']}")
    print(out["secret"])


@audit_app.command("verify")
def audit_verify(
    tenant: Annotated[str | None, typer.Option(help="One tenant; all by default")] = None,
    checkpoint: Annotated[
        Path | None, typer.Option(help="A signed checkpoint file: also prove the log still extends it")
    ] = None,
    verify_key: Annotated[
        Path | None, typer.Option(help="Ed25519 public key (PEM); default MODERATION_AUDIT_VERIFY_KEY")
    ] = None,
) -> None:
    """Verify the audit hash chain of each tenant; exits 1 on the first break.

    With --checkpoint: the checkpoint's tenant (--tenant, if given, must be the same), and the
    checkpoint must be signed by the verify key, and the row at its seq unchanged; exits 1
    when the log does not extend it, 2 when the file or key cannot be used.
    """
    from moderation import audit
    from moderation.db.engine import make_engine

    if checkpoint is not None:
        _verify_against_checkpoint(tenant, checkpoint, verify_key)
    engine = make_engine(settings())
    broken = False
    with engine.connect() as conn:
        tenants = [tenant] if tenant else audit.tenants(conn)
        for t in tenants:
            result = audit.verify(conn, t)
            if result.ok:
                out.print(f"[green]ok[/]  {t}: {result.checked} events")
            else:
                broken = True
                out.print(f"[red]BROKEN[/] {t}: after {result.checked} good events: {result.first_break}")
    raise typer.Exit(1 if broken else 0)


def _verify_against_checkpoint(tenant: str | None, path: Path, verify_key: Path | None) -> None:
    """`audit verify --checkpoint`: always ends in typer.Exit (0 ok, 1 broken, 2 unusable input)."""
    from rich.markup import escape

    from moderation.audit import checkpoint as cps
    from moderation.db.engine import make_engine
    from moderation.errors import ModerationError

    s = settings()
    key_path = verify_key or s.audit_verify_key
    if key_path is None:
        err.print("[red]no verify key: pass --verify-key or set MODERATION_AUDIT_VERIFY_KEY[/]")
        raise typer.Exit(2)
    try:
        cp = cps.parse_file(path.read_bytes())
        key = cps.load_verify_key(key_path)
    except (OSError, ModerationError, cps.KeyFileError) as exc:
        raise _fail(exc) from exc
    t = tenant or cp.tenant_id
    with make_engine(s).connect() as conn:
        result = cps.verify_against(conn, t, cp, key)
    if result.ok:
        out.print(
            f"[green]ok[/]  {t}: {result.chain.checked} events, extending the checkpoint at seq {cp.seq} "
            f"signed {cp.signed_at.isoformat()} by key {cp.key_id[:16]}",
            soft_wrap=True,
        )
        raise typer.Exit(0)
    out.print(f"[red]BROKEN[/] {escape(t)}: {escape(str(result.to_json()['first_break']))}", soft_wrap=True)
    raise typer.Exit(1)


@audit_app.command("checkpoint")
def audit_checkpoint(
    tenant: Annotated[str, typer.Option(help="Tenant id")],
    out_file: Annotated[Path, typer.Option("--out", help="Where to write the checkpoint (JSON)")],
    key: Annotated[
        Path | None, typer.Option(help="Ed25519 private key (PEM); default MODERATION_AUDIT_SIGNING_KEY")
    ] = None,
) -> None:
    """Sign the tenant's chain head (tenant, seq, head hash, time), store it and write it to --out.

    Keep the file outside the database: it is what catches a rewrite by a database superuser.
    Refuses (exit 1) a chain that does not verify or no longer extends the last stored checkpoint.
    """
    from moderation.audit import checkpoint as cps
    from moderation.db.engine import make_engine

    s = settings()
    key_path = key or s.audit_signing_key
    if key_path is None:
        err.print("[red]no signing key: pass --key or set MODERATION_AUDIT_SIGNING_KEY[/]")
        raise typer.Exit(2)
    try:
        signing_key = cps.load_signing_key(key_path)
    except cps.KeyFileError as exc:
        raise _fail(exc) from exc
    try:
        with make_engine(s).begin() as conn:
            cp = cps.create(conn, tenant, signing_key)
    except cps.ChainNotVerified as exc:
        err.print(f"[red]not signed[/]: {exc}")
        raise typer.Exit(1) from exc
    cps.write_file(cp, out_file)
    err.print(f"checkpoint {cp.id}: {tenant} at seq {cp.seq}, key {cp.key_id[:16]} -> {out_file}")


@audit_app.command("keygen")
def audit_keygen(out_dir: Annotated[Path, typer.Option("--out", help="Folder for the key pair")]) -> None:
    """Write a new Ed25519 key pair for audit checkpoints (never overwrites).

    The private key signs (MODERATION_AUDIT_SIGNING_KEY, on the host that makes checkpoints,
    never on the database host); the public one verifies (MODERATION_AUDIT_VERIFY_KEY, and a
    copy for every auditor).
    """
    from moderation.audit import checkpoint as cps

    try:
        private, public, kid = cps.write_keypair(out_dir)
    except OSError as exc:
        raise _fail(exc) from exc
    out.print(f"key id {kid}")
    out.print(f"MODERATION_AUDIT_SIGNING_KEY={private}", soft_wrap=True)
    out.print(f"MODERATION_AUDIT_VERIFY_KEY={public}", soft_wrap=True)


def _bank_conn() -> Any:
    from moderation.db.engine import make_engine

    return make_engine(settings()).begin()


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[red]{exc}[/]")
    return typer.Exit(2)


@bank_app.command("create")
def bank_create(
    name: str,
    tenant: Annotated[str, typer.Option()],
    kind: Annotated[str, typer.Option(help="bad (a match blocks) | good (a match allows)")] = "bad",
    category: Annotated[str | None, typer.Option(help="Policy category a match implies")] = None,
    description: str | None = None,
) -> None:
    """Create a hash bank."""
    from moderation.banks import create_bank
    from moderation.errors import ModerationError

    try:
        with _bank_conn() as conn:
            create_bank(conn, tenant, name, kind, category, description, actor="cli")
    except ModerationError as exc:
        raise _fail(exc) from exc
    out.print(f"created bank {name} ({kind})")


@bank_app.command("add")
def bank_add(
    paths: list[Path],
    tenant: Annotated[str, typer.Option()],
    bank: Annotated[str, typer.Option()],
    label: str | None = None,
) -> None:
    """Add images (files or folders) to a bank."""
    from moderation.banks import add_image
    from moderation.errors import ModerationError
    from moderation.pipeline.context import Context

    ctx = Context.build(settings())
    files = [
        f
        for p in paths
        for f in (sorted(p.rglob("*")) if p.is_dir() else [p])
        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
    ]
    added = 0
    with ctx.engine.begin() as conn:
        for f in files:
            try:
                add_image(conn, ctx.limits, tenant, bank, f.read_bytes(), label or f.name, actor="cli")
                added += 1
            except ModerationError as exc:
                if exc.code == "NOT_FOUND":
                    raise _fail(exc) from exc
                err.print(f"[yellow]skipped {f}: {exc.code}[/]")
    out.print(f"added {added} of {len(files)} images to {bank}")


@bank_app.command("import")
def bank_import(file: Path, tenant: Annotated[str, typer.Option()], bank: Annotated[str, typer.Option()]) -> None:
    """Import a CSV/TSV hash list (column `pdq`, optional `label`, `sha256`)."""
    from moderation.banks import import_hash_list
    from moderation.errors import ModerationError

    try:
        with _bank_conn() as conn:
            n = import_hash_list(conn, tenant, bank, file.read_text(encoding="utf-8-sig"), actor="cli")
    except ModerationError as exc:
        raise _fail(exc) from exc
    out.print(f"imported {n} hashes into {bank}")


@bank_app.command("export")
def bank_export(tenant: Annotated[str, typer.Option()], bank: Annotated[str, typer.Option()]) -> None:
    """Print a bank as CSV (pdq,label,sha256,phash)."""
    from moderation.banks import export_hash_list

    with _bank_conn() as conn:
        sys.stdout.write(export_hash_list(conn, tenant, bank))


@bank_app.command("remove")
def bank_remove(entry_id: int, tenant: Annotated[str, typer.Option()], bank: Annotated[str, typer.Option()]) -> None:
    """Remove one entry from a bank."""
    from moderation.banks import remove_entry
    from moderation.errors import ModerationError

    try:
        with _bank_conn() as conn:
            remove_entry(conn, tenant, bank, entry_id, actor="cli")
    except ModerationError as exc:
        raise _fail(exc) from exc
    out.print(f"removed entry {entry_id}")


@bank_app.command("list")
def bank_list(tenant: Annotated[str, typer.Option()]) -> None:
    """List a tenant's banks."""
    from moderation.banks import list_banks

    with _bank_conn() as conn:
        rows = list_banks(conn, tenant)
    table = Table(title=f"banks of {tenant}")
    for col in ("name", "kind", "category", "entries"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["kind"], r["category"] or "", str(r["entries"]))
    out.print(table)
