"""`moderation tenants create|list|update`: tenants and the policies their submissions may name
(the logic lives in moderation.access.tenants; policies are checked against those this
deployment loads from MODERATION_POLICIES_DIR)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from moderation.cli.common import err, out, settings

tenants_app = typer.Typer(help="Tenants and their allowed policies.", no_args_is_help=True)

AllowedOpt = Annotated[
    list[str] | None,
    typer.Option("--allowed-policy", help="A policy its submissions may name (repeatable); the default always is"),
]
AllOpt = Annotated[bool, typer.Option("--all-policies", help="Allow every policy the deployment ships (no allow-list)")]


def _known_policies() -> list[str]:
    from moderation.policy import load_policies

    s = settings()
    return sorted(load_policies(s.policies_dir, s.features))


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[red]{getattr(exc, 'message', exc)}[/]")
    return typer.Exit(2)


def _print(tenant: dict[str, Any]) -> None:
    allowed = tenant["allowed_policies"]
    out.print(
        f"{tenant['id']}: name={tenant['name']!r} default_policy={tenant['default_policy'] or '(deployment default)'} "
        f"allowed_policies={'all' if allowed is None else ','.join(allowed)}",
        soft_wrap=True,
    )


@tenants_app.command("create")
def tenants_create(
    tenant_id: Annotated[str, typer.Argument(metavar="ID")],
    name: Annotated[str | None, typer.Option()] = None,
    default_policy: Annotated[str | None, typer.Option(help="Policy of submissions that name none")] = None,
    allowed_policy: AllowedOpt = None,
    all_policies: AllOpt = False,
) -> None:
    """Create a tenant. Without --allowed-policy or --all-policies it may use its default policy only."""
    from moderation.access.tenants import UNSET, create_tenant
    from moderation.db.engine import make_engine
    from moderation.errors import ModerationError

    if all_policies and allowed_policy:
        raise _fail(ValueError("--all-policies and --allowed-policy exclude each other"))
    allowed: Any = None if all_policies else (allowed_policy or UNSET)
    s = settings()
    try:
        with make_engine(s).begin() as conn:
            tenant = create_tenant(
                conn,
                tenant_id,
                _known_policies(),
                s.default_policy,
                name=name,
                default_policy=default_policy,
                allowed_policies=allowed,
                actor="cli",
            )
    except ModerationError as exc:
        raise _fail(exc) from exc
    _print(tenant)


@tenants_app.command("list")
def tenants_list(
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table")] = False,
) -> None:
    """List tenants with their default and allowed policies."""
    from moderation.access.tenants import list_tenants
    from moderation.db.engine import make_engine

    with make_engine(settings()).connect() as conn:
        rows = list_tenants(conn)
    if as_json:
        for r in rows:
            print(json.dumps(r))
        return
    table = Table(title="tenants")
    for col in ("id", "name", "default policy", "allowed policies", "created"):
        table.add_column(col)
    for r in rows:
        allowed = r["allowed_policies"]
        table.add_row(
            r["id"],
            r["name"],
            r["default_policy"] or "(deployment default)",
            "all" if allowed is None else ", ".join(allowed),
            r["created_at"] or "",
        )
    out.print(table)


@tenants_app.command("update")
def tenants_update(
    tenant_id: Annotated[str, typer.Argument(metavar="ID")],
    name: Annotated[str | None, typer.Option()] = None,
    default_policy: Annotated[str | None, typer.Option(help="Policy of submissions that name none")] = None,
    deployment_default: Annotated[
        bool,
        typer.Option("--deployment-default", help="Use the deployment's default policy (MODERATION_DEFAULT_POLICY)"),
    ] = False,
    allowed_policy: AllowedOpt = None,
    all_policies: AllOpt = False,
) -> None:
    """Change a tenant's name, default policy or allowed policies (what is not given stays)."""
    from moderation.access.tenants import UNSET, update_tenant
    from moderation.db.engine import make_engine
    from moderation.errors import ModerationError

    if all_policies and allowed_policy:
        raise _fail(ValueError("--all-policies and --allowed-policy exclude each other"))
    if deployment_default and default_policy:
        raise _fail(ValueError("--default-policy and --deployment-default exclude each other"))
    changes: dict[str, Any] = {}
    if name is not None:
        changes["name"] = name
    if default_policy is not None or deployment_default:
        changes["default_policy"] = default_policy
    if allowed_policy or all_policies:
        changes["allowed_policies"] = None if all_policies else allowed_policy
    try:
        with make_engine(settings()).begin() as conn:
            tenant = update_tenant(
                conn,
                tenant_id,
                _known_policies(),
                name=changes.get("name", UNSET),
                default_policy=changes.get("default_policy", UNSET),
                allowed_policies=changes.get("allowed_policies", UNSET),
                actor="cli",
            )
    except ModerationError as exc:
        raise _fail(exc) from exc
    _print(tenant)
