"""The `moderation` command line (typer): processes (`up`, `api`, `worker`, `beat`, `migrate`) here,
operator commands in `admin`, client commands in `client_cmds`, supervision in `supervise`."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Annotated

import typer

from moderation.cli import (
    admin,
    audit_cmds,
    blobs_cmds,
    callbacks_cmds,
    client_cmds,
    eval_cmd,
    ingest_cmds,
    tenants_cmds,
)
from moderation.cli.common import err, redact, settings
from moderation.cli.supervise import celery_worker_argv, run_until_stopped, supervise_gpu_workers, visible_gpus
from moderation.queue import CALLBACK_POOL, CPU_QUEUES, Q_CALLBACKS, Q_GPU

app = typer.Typer(help="Image content-moderation pipeline.", no_args_is_help=True, add_completion=False)
app.add_typer(admin.keys_app, name="keys")
app.add_typer(tenants_cmds.tenants_app, name="tenants")
app.add_typer(admin.audit_app, name="audit")
audit_cmds.register(admin.audit_app)
app.add_typer(admin.bank_app, name="bank")
app.add_typer(callbacks_cmds.callbacks_app, name="callbacks")
app.add_typer(ingest_cmds.ingest_app, name="ingest")
app.add_typer(blobs_cmds.blobs_app, name="blobs")
app.command()(client_cmds.submit)
app.command()(client_cmds.scan)
app.command(name="eval")(eval_cmd.evaluate_folder)

ALL_QUEUES = ",".join(CPU_QUEUES)


@app.command()
def migrate() -> None:
    """Apply database migrations (Alembic) up to head."""
    from moderation.db.migrate import upgrade

    s = settings()
    upgrade(s)
    err.print(f"[green]migrated[/] {redact(s.migrate_db_url)}")


@app.command()
def api(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    log_level: Annotated[str, typer.Option()] = "warning",
) -> None:
    """Serve the HTTP API (uvicorn)."""
    import uvicorn

    s = settings()
    uvicorn.run(
        "moderation.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=False,
        # X-Forwarded-For is believed only from the proxies named here (the load balancer): the
        # client address is what rate limits and the audit trail key on.
        proxy_headers=bool(s.forwarded_allow_ips),
        forwarded_allow_ips=s.forwarded_allow_ips or None,
    )


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
    `-Q callbacks`: the webhook deliveries, in a thread pool (MODERATION_CALLBACK_CONCURRENCY threads).

    --gpus starts one worker process per GPU (CUDA_VISIBLE_DEVICES=i, named gpu<i>@host) on the
    `analyze.gpu` queue, each with a thread pool feeding its micro-batcher. --device cpu runs one
    such worker on the CPU."""
    s = settings()
    if gpus is not None and device is not None:
        err.print("[red]--gpus and --device exclude each other[/]")
        raise typer.Exit(2)
    if gpus is None and device is None:
        if queues == Q_CALLBACKS:  # webhook deliveries wait on receivers: many threads, not processes
            threads = concurrency or s.callback_concurrency
            argv = celery_worker_argv(queues, threads, pool or CALLBACK_POOL, name, loglevel)
            os.execvp(argv[0], argv)
        argv = celery_worker_argv(queues or ALL_QUEUES, concurrency or 2, pool or "prefork", name, loglevel)
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
        argv = celery_worker_argv(vlm_queues, threads, pool or "threads", name or f"{device}-vlm@%h", loglevel)
        os.execvpe(argv[0], argv, env)
    assert gpus is not None
    present = visible_gpus()
    allotted = s.cuda_visible_devices
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
        argv = celery_worker_argv(vlm_queues, threads, pool or "threads", f"gpu{g}@%h", loglevel)
        # PCI_BUS_ID: CUDA numbers devices as nvidia-smi does (its default is fastest first).
        gpu_env = {**env, "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": g, "MODERATION_VLM_DEVICE": "cuda"}
        p = subprocess.Popen(argv, env=gpu_env)
        err.print(f"started gpu{g} (pid {p.pid})")
        return p

    raise typer.Exit(supervise_gpu_workers(wanted, start))


@app.command()
def beat(loglevel: str = "info") -> None:
    """Run Celery beat (the reconciler)."""
    s = settings()
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
    """Run the whole pipeline on this machine: migrations, API, workers (CPU, callbacks), beat and Flower.

    With no DATABASE_URL / REDIS_URL it runs embedded (SQLite and a filesystem broker under var/).
    A child that exits is restarted with backoff; Ctrl-C (or SIGTERM) stops everything.
    """
    from moderation.access.keys import create_key
    from moderation.db.engine import make_engine
    from moderation.db.migrate import upgrade

    s = settings()
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
    # The owner's credentials were for the migration above; the services log in as the service role.
    owner_only = ("MODERATION_MIGRATE_DATABASE_URL", "MODERATION_SERVICE_DB_PASSWORD")
    env = {k: v for k, v in os.environ.items() if k not in owner_only} | {"PYTHONUNBUFFERED": "1"}
    commands = {
        "api": [py, "-m", "moderation.cli", "api", "--host", host, "--port", str(port)],
        "worker": [py, "-m", "moderation.cli", "worker", "-c", str(concurrency), "--loglevel", "warning"],
        # Webhooks in their own pool: a receiver that answers slowly holds a callback thread only.
        "callbacks": [
            py,
            "-m",
            "moderation.cli",
            "worker",
            "-Q",
            Q_CALLBACKS,
            "-n",
            "callbacks@%h",
            "--loglevel",
            "warning",
        ],
        "beat": [py, "-m", "moderation.cli", "beat", "--loglevel", "warning"],
        "flower": [py, "-m", "celery", "-A", "workers.app", "flower", f"--address={host}", f"--port={flower_port}"],
    }
    if s.ingest_url:  # queue-side ingest for platforms (RabbitMQ or Redis accounts)
        commands["gateway"] = [py, "-m", "moderation.cli", "ingest", "serve", "--loglevel", "warning"]
    mode = "embedded (SQLite + filesystem broker under var/)" if s.embedded else "services"
    err.print(f"[bold green]moderation is up[/] — {mode}")
    err.print(f"  API      http://{host}:{port}   (docs: http://{host}:{port}/docs)")
    err.print(f"  Flower   http://{host}:{flower_port}")
    err.print(f"  DB       {redact(s.db_url)}")
    err.print(f"  admin key (all roles, tenant 'default'):\n    {key}", soft_wrap=True)
    err.print(
        f"  try:  curl -H 'Authorization: Bearer {key}' -F file=@image.jpg http://{host}:{port}/v1/submissions",
        soft_wrap=True,
    )
    run_until_stopped(commands, env)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
