"""`moderation audit export`: a tenant's decisions as CSV, JSON Lines or DSA statements of
reasons, streamed to a file or stdout with a progress bar (on stderr)."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from moderation.cli.common import err, settings


def register(audit_app: typer.Typer) -> None:
    """Add these commands to `moderation audit`."""
    audit_app.command("export")(audit_export)
    audit_app.command("submit-dsa")(audit_submit_dsa)


def audit_export(
    tenant: Annotated[str, typer.Option(help="The tenant whose decisions to export")],
    format: Annotated[str, typer.Option(help="csv | jsonl | dsa (statements of reasons, JSON Lines)")] = "jsonl",
    out_path: Annotated[Path | None, typer.Option("--out", help="File to write; stdout by default")] = None,
    since: Annotated[datetime | None, typer.Option(help="Decided at or after (ISO time)")] = None,
    until: Annotated[datetime | None, typer.Option(help="Decided before (ISO time)")] = None,
    action: Annotated[str | None, typer.Option()] = None,
    category: Annotated[str | None, typer.Option()] = None,
    policy: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Stream the tenant's decisions (no row cap, flat memory); the export is audited (`exported`)."""
    from sqlalchemy import func, select

    from moderation.audit import exports
    from moderation.audit.decisions import DecisionFilter
    from moderation.db.engine import make_engine
    from moderation.db.tables import decisions, submissions
    from moderation.errors import ModerationError
    from moderation.policy import load_policies

    if format not in exports.FORMATS:
        err.print(f"--format is one of {', '.join(exports.FORMATS)}")
        raise typer.Exit(2)
    s = settings()
    engine = make_engine(s)
    f = DecisionFilter(since=since, until=until, action=action, category=category, policy=policy)
    try:
        f.check()
    except ModerationError as exc:
        err.print(exc.message)
        raise typer.Exit(2) from exc
    with engine.connect() as conn:
        total = conn.execute(
            select(func.count())
            .select_from(decisions.join(submissions, submissions.c.id == decisions.c.submission_id))
            .where(submissions.c.tenant_id == tenant)
        ).scalar_one()
    policies = load_policies(s.policies_dir, s.features)
    sink = out_path.open("wb") if out_path else sys.stdout.buffer
    columns = (TextColumn("exporting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    try:
        with Progress(*columns, console=err, transient=out_path is None) as bar:
            job = bar.add_task("decisions", total=total)
            for chunk in exports.export(
                engine, tenant, f, format, policies, actor="cli", progress=lambda n: bar.advance(job, n)
            ):
                sink.write(chunk)
    finally:
        if out_path:
            sink.close()


def audit_submit_dsa(
    tenant: Annotated[str, typer.Option(help="The tenant whose statements to send")],
    endpoint: Annotated[
        str, typer.Option(help="The Transparency Database, e.g. https://transparency.dsa.ec.europa.eu")
    ],
    token_file: Annotated[Path, typer.Option(help="A file holding the API token (never on the command line)")],
) -> None:
    """Send the tenant's statements of reasons not yet sent (batches of 100; each PUID once).

    Exit 0: done (statements the database refused are dead-lettered in the ledger and counted);
    1: the database kept failing (what was recorded stays recorded: run it again)."""
    from moderation.audit import dsa_submit
    from moderation.db.engine import make_engine
    from moderation.policy import load_policies

    s = settings()
    token = token_file.read_text().strip()
    if not token:
        err.print(f"{token_file} is empty")
        raise typer.Exit(2)
    engine = make_engine(s)
    policies = load_policies(s.policies_dir, s.features)
    try:
        outcome = dsa_submit.submit(engine, tenant, dsa_submit.pending(engine, tenant, policies), endpoint, token)
    except dsa_submit.SubmitFailed as exc:
        err.print(f"[red]stopped[/]: {exc}")
        raise typer.Exit(1) from exc
    err.print(
        f"sent {outcome.sent}, refused and dead-lettered {outcome.rejected}, already there {outcome.already_there}, "
        f"{outcome.requests} requests"
    )
