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
    tenant: Annotated[str, typer.Option(help="Tenant id (created if new)")],
    role: Annotated[list[str], typer.Option(help="submitter | moderator | auditor | admin (repeatable)")],
    label: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Create an API key; prints only the key (shown once, stored hashed)."""
    from moderation.access.keys import create_key
    from moderation.db.engine import make_engine

    engine = make_engine(settings())
    try:
        with engine.begin() as conn:
            key = create_key(conn, tenant, role, label)
    except ValueError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
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
def audit_verify(tenant: Annotated[str | None, typer.Option(help="One tenant; all by default")] = None) -> None:
    """Verify the audit hash chain of each tenant; exits 1 on the first break."""
    from moderation import audit
    from moderation.db.engine import make_engine

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
