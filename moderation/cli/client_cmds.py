"""Client commands: push images through a running pipeline's API (`submit`, `scan`)."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from moderation.cli.common import IMAGE_SUFFIXES, err, out, settings

UrlOpt = Annotated[str, typer.Option("--url", envvar="MODERATION_URL")]
KeyOpt = Annotated[str | None, typer.Option("--key")]


def _client(url: str, key: str | None) -> Any:
    from moderation.client import Client

    s = settings()
    key = key or s.client_api_key
    key_file = s.var_dir / "admin.key"
    if not key and key_file.exists():
        key = key_file.read_text().strip()
    if not key:
        err.print("[red]no API key: pass --key, set MODERATION_API_KEY, or run `moderation up` first[/]")
        raise typer.Exit(2)
    return Client(url, key)


def submit(
    files: list[Path],
    wait: bool = False,
    url: UrlOpt = "http://127.0.0.1:8000",
    key: KeyOpt = None,
    policy: str | None = None,
    caption: str | None = None,
) -> None:
    """Submit images through the API; with --wait, print each decision."""
    import json

    from moderation.client import ClientError

    client = _client(url, key)
    failed = 0
    for f in files:
        try:
            sub = client.submit(f, policy=policy, caption=caption)
            if wait:
                sub = client.wait(sub["id"])
            print(json.dumps({"file": str(f), **sub}))
        except (ClientError, TimeoutError, OSError) as exc:
            failed += 1
            print(json.dumps({"file": str(f), "error": str(exc)}))
    raise typer.Exit(1 if failed else 0)


def scan(
    directory: Path,
    url: UrlOpt = "http://127.0.0.1:8000",
    key: KeyOpt = None,
    concurrency: int = 8,
    policy: str | None = None,
    timeout: float = 300.0,
) -> None:
    """Push every image under DIRECTORY through the running pipeline and summarise the decisions."""
    from moderation.client import ClientError

    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        err.print(f"no images under {directory}")
        raise typer.Exit(1)
    client = _client(url, key)
    outcomes: Counter[str] = Counter()
    flagged: list[tuple[str, str, str]] = []

    def one(path: Path) -> tuple[Path, str, str]:
        try:
            sub = client.wait(client.submit(path, policy=policy)["id"], timeout=timeout)
        except ClientError as exc:
            return path, f"rejected:{exc.code}", ""
        except TimeoutError:
            return path, "timeout", ""
        d = sub.get("decision") or {}
        cats = ", ".join(f"{c}={v:.2f}" for c, v in sorted(d.get("categories", {}).items(), key=lambda kv: -kv[1])[:3])
        return path, str(d.get("action", sub["status"])), cats

    with Progress(
        TextColumn("[bold]scanning"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err
    ) as progress:
        bar = progress.add_task("scan", total=len(files))
        with ThreadPoolExecutor(concurrency) as pool:
            for fut in as_completed([pool.submit(one, f) for f in files]):
                path, action, cats = fut.result()
                outcomes[action] += 1
                if action != "allow":
                    flagged.append((str(path.relative_to(directory)), action, cats))
                progress.advance(bar)
    table = Table(title=f"{len(files)} images")
    table.add_column("outcome")
    table.add_column("count", justify="right")
    for action, n in outcomes.most_common():
        table.add_row(action, str(n))
    out.print(table)
    if flagged:
        detail = Table(title="not allowed")
        for col in ("file", "outcome", "top scores"):
            detail.add_column(col)
        for row in sorted(flagged)[:50]:
            detail.add_row(*row)
        out.print(detail)
