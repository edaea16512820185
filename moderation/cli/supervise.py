"""Process supervision for `moderation up` (API, worker, beat, Flower) and `moderation worker
--gpus` (one Celery worker per GPU): start children, watch them, stop them on a signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from moderation.cli.common import err


def celery_worker_argv(queues: str, concurrency: int, pool: str, name: str | None, loglevel: str) -> list[str]:
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


def supervise_gpu_workers(wanted: list[str], start: Callable[[str], subprocess.Popen[bytes]]) -> int:
    """Run `start(g)` for each GPU and keep them running until SIGTERM/SIGINT; returns the exit code.

    A GPU worker that exits is restarted alone, with backoff. Five exits in a row, none after
    ten minutes of work (a missing checkpoint, a broken GPU), end the group with its exit code,
    so that the supervisor above sees it instead of a silent crash loop.
    """
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
    return code


def run_until_stopped(commands: dict[str, list[str]], env: dict[str, str]) -> None:
    """Start each command in its own session and keep them running until Ctrl-C or SIGTERM; then
    stop them all (warm shutdown, SIGKILL after 15 s).

    A child that exits (killed for memory by a poison image, a crash) is restarted alone, with
    backoff (1 s doubling to 60 s; back to 1 s after ten minutes of work), and logged: one child's
    death never takes the others, and the API, down with it."""
    procs = {name: subprocess.Popen(cmd, env=env, start_new_session=True) for name, cmd in commands.items()}
    started = dict.fromkeys(commands, time.monotonic())
    failures = dict.fromkeys(commands, 0)
    due: dict[str, float] = {}  # restarts waiting out their backoff
    stopping = threading.Event()

    def stop(*_: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping.wait(0.5):
            now = time.monotonic()
            for name, p in procs.items():
                if name in due or p.poll() is None:
                    continue
                failures[name] = failures[name] + 1 if now - started[name] < 600 else 1
                delay = min(60.0, 2.0 ** (failures[name] - 1))
                err.print(f"[yellow]{name} exited with {p.returncode}; restarting in {delay:.0f} s[/]")
                due[name] = now + delay
            for name, at in list(due.items()):
                if at <= now:
                    del due[name]
                    procs[name], started[name] = subprocess.Popen(commands[name], env=env, start_new_session=True), now
                    err.print(f"restarted {name} (pid {procs[name].pid})")
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
