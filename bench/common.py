"""Helpers the benchmarks share."""

from __future__ import annotations

from typing import Any


def fresh_database(url: str) -> Any:
    """Drop and recreate the PostgreSQL database named in `url`; returns an autocommit admin
    connection (to the `postgres` database) for the caller to drop it again afterwards."""
    import psycopg2

    dbname = url.rsplit("/", 1)[1]
    admin = psycopg2.connect(url.rsplit("/", 1)[0] + "/postgres")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {dbname}")
        cur.execute(f"CREATE DATABASE {dbname}")
    return admin


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank); NaN for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def run_header(args: Any) -> dict[str, Any]:
    """When, where and with what a run was made: the head of every results file."""
    import os
    import platform
    from datetime import UTC, datetime

    import psutil

    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.node()} {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "config": {k: str(v) for k, v in vars(args).items()},
    }


def start_api(repo: Any, env: dict[str, str], port: int, workers: int = 1) -> Any:
    """`moderation api` on `port` as a subprocess, returned once /healthz answers."""
    import subprocess
    import sys
    import time

    import httpx

    argv = [sys.executable, "-m", "moderation.cli", "api", "--port", str(port), "--workers", str(workers)]
    proc = subprocess.Popen(argv, env=env, cwd=repo)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("the API did not start")
