"""`moderation blobs …`: the operator's view of the blob store (`MODERATION_BLOB_URL`)."""

from __future__ import annotations

import typer

from moderation.cli.common import err, settings

blobs_app = typer.Typer(help="The image store (filesystem or S3).", no_args_is_help=True)


@blobs_app.command("init")
def blobs_init() -> None:
    """Make the store ready (create the folder, or the S3 bucket when it is missing) and check that
    this process can write, read back and delete an object there. Run it once per deployment, after
    `moderation migrate`, with the same MODERATION_BLOB_URL and credentials as the services."""
    from moderation.errors import ModerationError
    from moderation.intake.blobs import open_blob_store

    try:
        done = open_blob_store(settings()).init()
    except (ModerationError, ValueError, OSError, RuntimeError) as exc:
        err.print(f"[red]blob store not ready:[/] {exc}")
        raise typer.Exit(1) from exc
    except Exception as exc:  # an S3 client error: say what the server answered
        err.print(f"[red]blob store not ready:[/] {type(exc).__name__}: {exc}")
        raise typer.Exit(1) from exc
    for line in done:
        err.print(f"[green]ok[/] {line}")
