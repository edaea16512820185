"""`moderation ingest …`: platforms' queue-side ingest accounts, and the gateway that consumes them."""

from __future__ import annotations

import json
import signal
import sys
import threading
from typing import Annotated

import typer

from moderation.cli.common import err, out, redact, settings

ingest_app = typer.Typer(help="Queue-side ingest: platforms' broker accounts and the gateway.", no_args_is_help=True)


@ingest_app.command("add")
def ingest_add(
    tenant: Annotated[str, typer.Option(help="The tenant the account publishes for (must exist)")],
    account: Annotated[str, typer.Option(help="Broker user name of the platform (a-z, 0-9, _ . -)")],
    transport: Annotated[str, typer.Option(help="amqp (RabbitMQ) or redis (ACL user + signed messages)")] = "amqp",
    provision: Annotated[bool, typer.Option(help="Also create the broker user (rabbitmqctl / ACL SETUSER)")] = False,
) -> None:
    """Give a platform a broker account. Prints its password (and, for Redis, its signing secret) once."""
    from moderation.access.ingest import create_account
    from moderation.db.engine import make_engine
    from moderation.errors import ModerationError

    s = settings()
    try:
        with make_engine(s).begin() as conn:
            made = create_account(conn, tenant, account, transport)
    except ModerationError as exc:
        err.print(f"[red]{exc.message}[/]")
        raise typer.Exit(2) from exc
    if provision:
        _provision(s.ingest_url, account, str(made["password"]), transport)
    else:
        err.print(_how_to_provision(account, transport), soft_wrap=True)
    print(json.dumps(made))


def _provision(url: str | None, account: str, password: str, transport: str) -> None:
    from moderation.gateway import amqp, redis_lists

    if not url:
        err.print("[red]MODERATION_INGEST_URL is not set: nothing to provision on[/]")
        raise typer.Exit(2)
    if transport == "amqp":
        amqp.provision(account, password, amqp.vhost_of(url))
    else:
        redis_lists.provision(url, account, password)
    err.print(f"broker user {account!r} created on {redact(url)}")


def _how_to_provision(account: str, transport: str) -> str:
    from moderation.gateway import amqp, redis_lists

    if transport == "amqp":
        conf, write, read = amqp.publisher_permissions()
        return (
            f"create the broker user:  rabbitmqctl add_user {account} <password>; "
            f"rabbitmqctl set_permissions -p <ingest vhost> {account} '{conf}' '{write}' '{read}'"
        )
    return f"create the Redis user:  ACL SETUSER {account} {' '.join(redis_lists.acl_rules(account, '<password>'))}"


@ingest_app.command("list")
def ingest_list(tenant: Annotated[str | None, typer.Option()] = None) -> None:
    """Ingest accounts (never their secrets)."""
    from moderation.access.ingest import list_accounts
    from moderation.db.engine import make_engine

    with make_engine(settings()).connect() as conn:
        for row in list_accounts(conn, tenant):
            out.print(json.dumps(row, default=str))


@ingest_app.command("revoke")
def ingest_revoke(account: str) -> None:
    """Stop accepting an account's messages (within a second); remove its broker user too."""
    from moderation.access.ingest import revoke_account
    from moderation.db.engine import make_engine
    from moderation.errors import ModerationError

    try:
        with make_engine(settings()).begin() as conn:
            tenant = revoke_account(conn, account)
    except ModerationError as exc:
        err.print(f"[red]{exc.message}[/]")
        raise typer.Exit(2) from exc
    err.print(f"revoked {account} (tenant {tenant}); delete its broker user as well")


@ingest_app.command("serve")
def ingest_serve(loglevel: str = "info") -> None:
    """Run the gateway: consume MODERATION_INGEST_URL (amqp:// or redis://) until Ctrl-C/SIGTERM."""
    import logging

    from moderation.gateway import Gateway, amqp, redis_lists
    from moderation.pipeline.context import Context

    logging.basicConfig(level=loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    s = settings()
    if not s.ingest_url:
        err.print("[red]MODERATION_INGEST_URL is not set (amqp://… or redis://…)[/]")
        raise typer.Exit(2)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    ctx = Context.build(s)
    gateway = Gateway(ctx, stop)
    err.print(f"ingest gateway on {redact(s.ingest_url)}")
    if s.ingest_url.startswith(("redis://", "rediss://")):
        redis_lists.serve(gateway, s.ingest_url, max_deliveries=s.ingest_max_deliveries)
    else:
        amqp.serve(gateway, s.ingest_url, s.ingest_prefetch, s.ingest_max_deliveries)
    sys.exit(0)  # the ingest batcher publishes what it holds at exit
