"""`moderation callbacks …`: the operator's view of a tenant's webhook receivers."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from sqlalchemy import Connection, select

from moderation.cli.common import err, settings

callbacks_app = typer.Typer(help="Webhook callbacks to platforms.", no_args_is_help=True)


@callbacks_app.command("receivers")
def callbacks_receivers(
    tenant: Annotated[str, typer.Option(help="Tenant id (must exist)")],
    allow_http: Annotated[
        bool | None, typer.Option("--allow-http/--no-allow-http", help="Allow plain http:// receivers")
    ] = None,
    private_network: Annotated[
        list[str] | None,
        typer.Option(help="A CIDR network its receivers may resolve to (repeatable; replaces the list)"),
    ] = None,
    clear_private_networks: Annotated[
        bool, typer.Option("--clear-private-networks", help="Allow no private network")
    ] = False,
) -> None:
    """Show or change a tenant's receiver rules; prints them as JSON.

    Without options it only shows them. Options change what they name and keep the rest. Private
    and loopback receivers are refused unless their address lies in one of the tenant's networks;
    metadata and link-local addresses only when a network inside their range is listed.
    """
    from moderation import callbacks
    from moderation.db.engine import make_engine
    from moderation.errors import ModerationError

    if private_network and clear_private_networks:
        err.print("[red]--private-network and --clear-private-networks exclude each other[/]")
        raise typer.Exit(2)
    engine = make_engine(settings())
    try:
        with engine.begin() as conn:
            rules = callbacks.receiver_rules(conn, tenant)
            if allow_http is not None or private_network or clear_private_networks:
                networks = (
                    [] if clear_private_networks else private_network or list(rules.to_json()["private_networks"])
                )
                new = callbacks.ReceiverRules.parse(rules.allow_http if allow_http is None else allow_http, networks)
                rules = callbacks.set_receiver_rules(conn, tenant, new, actor="cli")
            elif not _exists(conn, tenant):
                raise ModerationError("NOT_FOUND", f"No tenant {tenant!r}.")
    except ValueError as exc:
        err.print(f"[red]--private-network: {exc}[/]")
        raise typer.Exit(2) from exc
    except ModerationError as exc:
        err.print(f"[red]{exc.message}[/]")
        raise typer.Exit(1) from exc
    finally:
        engine.dispose()
    print(json.dumps(rules.to_json()))


def _exists(conn: Connection, tenant: str) -> bool:
    from moderation.db.tables import tenants

    return conn.execute(select(tenants.c.id).where(tenants.c.id == tenant)).first() is not None
