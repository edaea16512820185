"""The `moderation` command line (typer)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from moderation.queue import CPU_QUEUES, Q_GPU
from moderation.settings import Settings

app = typer.Typer(help="Image content-moderation pipeline.", no_args_is_help=True, add_completion=False)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit log.", no_args_is_help=True)
bank_app = typer.Typer(help="Hash banks: known-bad and known-good images.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(audit_app, name="audit")
app.add_typer(bank_app, name="bank")
err = Console(stderr=True)
out = Console()

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"}
ALL_QUEUES = ",".join(CPU_QUEUES)


def _settings() -> Settings:
    return Settings()


@app.command()
def migrate() -> None:
    """Apply database migrations (Alembic) up to head."""
    from moderation.db.migrate import upgrade

    s = _settings()
    upgrade(s)
    err.print(f"[green]migrated[/] {_redact(s.db_url)}")


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant id (created if new)")],
    role: Annotated[list[str], typer.Option(help="submitter | moderator | auditor | admin (repeatable)")],
    label: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Create an API key; prints only the key (shown once, stored hashed)."""
    from moderation.access.keys import create_key
    from moderation.db.engine import make_engine

    engine = make_engine(_settings())
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

    s = _settings()
    with make_engine(s).begin() as conn:
        ensure_tenant(conn, tenant)
        out = rotate_secret(conn, tenant, s, actor="cli")
    err.print(f"previous secret valid until {out['previous_valid_until']}")
    print(out["secret"])


@app.command()
def api(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    log_level: Annotated[str, typer.Option()] = "warning",
) -> None:
    """Serve the HTTP API (uvicorn)."""
    import uvicorn

    uvicorn.run(
        "moderation.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=False,
        proxy_headers=True,
    )


def _celery_worker_argv(queues: str, concurrency: int, pool: str, name: str | None, loglevel: str) -> list[str]:
    argv = [sys.executable, "-m", "celery", "-A", "workers.app", "worker", "-Q", queues, "-c", str(concurrency)]
    argv += ["-P", pool, "--loglevel", loglevel, "--without-gossip", "--without-mingle"]
    return argv + (["-n", name] if name else [])


def visible_gpus() -> list[str]:
    """Indices of the NVIDIA GPUs on this machine (nvidia-smi; no CUDA context is created here,
    so the parent of the GPU workers never holds one)."""
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip().isdigit()] if done.returncode == 0 else []


@app.command()
def worker(
    queues: Annotated[str | None, typer.Option("--queues", "-Q", help="Comma-separated queues")] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", "-c")] = None,
    pool: str | None = None,
    name: Annotated[str | None, typer.Option("--name", "-n")] = None,
    loglevel: str = "info",
    gpus: Annotated[
        str | None, typer.Option(help="VLM workers: 'all' or GPU indices '0,1' (one process per GPU, analyze.gpu)")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="VLM worker on this device instead of GPUs: 'cpu' (development)")
    ] = None,
) -> None:
    """Run a Celery worker. Without options: the CPU queues (ingest, lite analyzers, decide, ...).

    --gpus starts one worker process per GPU (CUDA_VISIBLE_DEVICES=i, named gpu<i>@host) on the
    `analyze.gpu` queue, each with a thread pool feeding its micro-batcher. --device cpu runs one
    such worker on the CPU."""
    s = _settings()
    if gpus is not None and device is not None:
        err.print("[red]--gpus and --device exclude each other[/]")
        raise typer.Exit(2)
    if gpus is None and device is None:
        argv = _celery_worker_argv(queues or ALL_QUEUES, concurrency or 2, pool or "prefork", name, loglevel)
        os.execvp(argv[0], argv)
    # A VLM worker: threads keep several tasks in flight for the micro-batcher; the model is
    # loaded once in the worker process before it consumes (workers.app warm-up).
    threads = concurrency or 2 * s.vlm_batch_max
    vlm_queues = queues or Q_GPU
    env = {**os.environ, "MODERATION_VLM": "1"}
    if device is not None:
        if device != "cpu" and not device.startswith("cuda"):
            err.print(f"[red]--device {device!r}: use cpu (or cuda, cuda:N)[/]")
            raise typer.Exit(2)
        env["MODERATION_VLM_DEVICE"] = device
        argv = _celery_worker_argv(vlm_queues, threads, pool or "threads", name or f"{device}-vlm@%h", loglevel)
        os.execvpe(argv[0], argv, env)
    assert gpus is not None
    present = visible_gpus()
    allotted = os.environ.get("CUDA_VISIBLE_DEVICES")
    if allotted is not None and present:  # a scheduler (Slurm, Kubernetes) gave this job some GPUs only
        present = [g for g in (x.strip() for x in allotted.split(",")) if g in present]
    wanted = present if gpus == "all" else [g.strip() for g in gpus.split(",") if g.strip()]
    if not present:
        err.print(
            f"[red]--gpus {gpus}: no NVIDIA GPU is visible on this machine (nvidia-smi found none).[/] "
            "Run the VLM stage on the CPU for development with `moderation worker --device cpu`, "
            "or point it at a vLLM server (MODERATION_VLM_ENGINE=openai, MODERATION_VLM_BASE_URL).",
            soft_wrap=True,
        )
        raise typer.Exit(2)
    missing = [g for g in wanted if g not in present]
    if missing or not wanted:
        err.print(
            f"[red]--gpus {gpus}: GPU(s) {missing or gpus} not present; this machine has {', '.join(present)}[/]",
            soft_wrap=True,
        )
        raise typer.Exit(2)

    def start(g: str) -> subprocess.Popen[bytes]:
        argv = _celery_worker_argv(vlm_queues, threads, pool or "threads", f"gpu{g}@%h", loglevel)
        # PCI_BUS_ID: CUDA numbers devices as nvidia-smi does (its default is fastest first).
        gpu_env = {**env, "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": g, "MODERATION_VLM_DEVICE": "cuda"}
        p = subprocess.Popen(argv, env=gpu_env)
        err.print(f"started gpu{g} (pid {p.pid})")
        return p

    procs = {g: start(g) for g in wanted}
    started = dict.fromkeys(wanted, time.monotonic())
    failures = dict.fromkeys(wanted, 0)
    stopping = threading.Event()

    def stop(*_: Any) -> None:
        stopping.set()
        for p in procs.values():
            if p.poll() is None:
                p.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # A GPU worker that exits is restarted alone, with backoff. Five exits in a row, none after
    # ten minutes of work (a missing checkpoint, a broken GPU), end the group with its exit
    # code, so that the supervisor sees it instead of a silent crash loop.
    code = 0
    while not stopping.wait(1):
        for g, p in list(procs.items()):
            rc = p.poll()
            if rc is None or stopping.is_set():
                continue
            failures[g] = failures[g] + 1 if time.monotonic() - started[g] < 600 else 1
            if failures[g] >= 5:
                err.print(f"[red]gpu{g} exited ({rc}) five times in a row; stopping[/]")
                code = rc if rc > 0 else 128 - rc if rc < 0 else 1  # killed by signal N: 128 + N
                stop()
                break
            delay = min(60, 2 ** failures[g])
            err.print(f"[yellow]gpu{g} exited with {rc}; restarting in {delay} s[/]")
            if stopping.wait(delay):  # a stop during the backoff starts nothing new
                break
            procs[g], started[g] = start(g), time.monotonic()
    for p in procs.values():
        p.wait()
    raise typer.Exit(code)


@app.command()
def beat(loglevel: str = "info") -> None:
    """Run Celery beat (the reconciler)."""
    s = _settings()
    s.var_dir.mkdir(parents=True, exist_ok=True)
    os.execvp(
        sys.executable,
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.app",
            "beat",
            "--loglevel",
            loglevel,
            "-s",
            str(s.var_dir / "celerybeat-schedule"),
        ],
    )


@app.command()
def up(
    port: int = 8000,
    flower_port: int = 5555,
    concurrency: int = 2,
    host: str = "127.0.0.1",
) -> None:
    """Run the whole pipeline on this machine: migrations, API, worker, beat and Flower.

    With no DATABASE_URL / REDIS_URL it runs embedded (SQLite and a filesystem broker under var/).
    Ctrl-C stops everything.
    """
    from moderation.access.keys import create_key
    from moderation.db.engine import make_engine
    from moderation.db.migrate import upgrade

    s = _settings()
    s.var_dir.mkdir(parents=True, exist_ok=True)
    upgrade(s)
    key_file = s.var_dir / "admin.key"
    if s.embedded and key_file.exists():
        key = key_file.read_text().strip()
    else:
        with make_engine(s).begin() as conn:
            key = create_key(conn, "default", ["admin", "submitter", "moderator", "auditor"], "make up")
        if s.embedded:
            key_file.write_text(key + "\n")
            key_file.chmod(0o600)
    py = sys.executable
    procs: dict[str, subprocess.Popen[bytes]] = {}
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    commands = {
        "api": [py, "-m", "moderation.cli", "api", "--host", host, "--port", str(port)],
        "worker": [py, "-m", "moderation.cli", "worker", "-c", str(concurrency), "--loglevel", "warning"],
        "beat": [py, "-m", "moderation.cli", "beat", "--loglevel", "warning"],
        "flower": [py, "-m", "celery", "-A", "workers.app", "flower", f"--address={host}", f"--port={flower_port}"],
    }
    for name, cmd in commands.items():
        procs[name] = subprocess.Popen(cmd, env=env, start_new_session=True)
    mode = "embedded (SQLite + filesystem broker under var/)" if s.embedded else "services"
    err.print(f"[bold green]moderation is up[/] — {mode}")
    err.print(f"  API      http://{host}:{port}   (docs: http://{host}:{port}/docs)")
    err.print(f"  Flower   http://{host}:{flower_port}")
    err.print(f"  DB       {_redact(s.db_url)}")
    err.print(f"  admin key (all roles, tenant 'default'):\n    {key}", soft_wrap=True)
    err.print(
        f"  try:  curl -H 'Authorization: Bearer {key}' -F file=@image.jpg http://{host}:{port}/v1/submissions",
        soft_wrap=True,
    )
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping:
            for name, p in procs.items():
                if p.poll() is not None:
                    err.print(f"[red]{name} exited with {p.returncode}; stopping[/]")
                    stopping = True
            time.sleep(0.5)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()  # the leader shuts its children down (Celery: warm shutdown)
        deadline = time.monotonic() + 15
        for p in procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        err.print("stopped")


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}:***@{host}" if ":" in creds else url
    return url


def _client(url: str, key: str | None) -> Any:
    from moderation.client import Client

    key = key or os.environ.get("MODERATION_API_KEY")
    key_file = _settings().var_dir / "admin.key"
    if not key and key_file.exists():
        key = key_file.read_text().strip()
    if not key:
        err.print("[red]no API key: pass --key, set MODERATION_API_KEY, or run `moderation up` first[/]")
        raise typer.Exit(2)
    return Client(url, key)


UrlOpt = Annotated[str, typer.Option("--url", envvar="MODERATION_URL")]
KeyOpt = Annotated[str | None, typer.Option("--key")]


@app.command()
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


@app.command()
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


@audit_app.command("verify")
def audit_verify(tenant: Annotated[str | None, typer.Option(help="One tenant; all by default")] = None) -> None:
    """Verify the audit hash chain of each tenant; exits 1 on the first break."""
    from sqlalchemy import select

    from moderation import audit
    from moderation.db.engine import make_engine
    from moderation.db.tables import audit_heads

    engine = make_engine(_settings())
    broken = False
    with engine.connect() as conn:
        tenants = [tenant] if tenant else list(conn.execute(select(audit_heads.c.tenant_id)).scalars())
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

    return make_engine(_settings()).begin()


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

    ctx = Context.build(_settings())
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
