"""A multi-host deployment on one machine (bench/multihost.py, short): the API host and two worker
hosts share no disk, blobs go through S3 only, the broker is RabbitMQ, and a worker host killed
with SIGKILL mid-load loses nothing and duplicates nothing.

The bench runs its own PostgreSQL cluster, Redis and S3 server, and a vhost of its own on the
machine's RabbitMQ; this test needs the PostgreSQL server binaries, redis-server and RabbitMQ
(rabbitmqctl as root), and fails when they are missing under MODERATION_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.broker import RABBIT, rabbitmqctl
from tests.support.paths import REPO
from tests.support.services import unavailable

pytestmark = pytest.mark.services

RUN_TIMEOUT_S = 170


def require_services() -> None:
    """What the bench starts or uses; skip (fail under MODERATION_REQUIRE_SERVICES=1) without it."""
    from bench._stack import pg_bin

    try:
        initdb = pg_bin() / "initdb"
        if not initdb.exists():
            raise FileNotFoundError(initdb)
    except (SystemExit, OSError) as exc:
        unavailable("PostgreSQL (server binaries for a private cluster)", exc)
    if shutil.which("redis-server") is None:
        unavailable("Redis", FileNotFoundError("redis-server"))
    where = urlsplit(RABBIT)
    address = (where.hostname or "127.0.0.1", where.port or 5672)
    try:
        socket.create_connection(address, 5).close()
        rabbitmqctl("list_vhosts", timeout=60)
    except Exception as exc:
        unavailable(f"RabbitMQ ({address[0]}:{address[1]} and rabbitmqctl)", exc)
    try:
        import boto3  # noqa: F401
        import moto  # noqa: F401
    except ImportError as exc:
        unavailable("the local S3 server (moto)", exc)


def run_bench(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # Nothing of this session's settings (a test database, TEST_BLOBS' bucket) reaches the bench.
    drop = ("DATABASE_URL", "REDIS_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODERATION_") and k not in drop}
    out = tmp_path / "bench.out"
    with out.open("w") as handle:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "multihost.py"), *argv],
            cwd=REPO,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            rc = proc.wait(RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)  # the bench cleans up on SIGTERM
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            pytest.fail(f"bench/multihost.py ran past {RUN_TIMEOUT_S} s:\n{out.read_text()[-6000:]}")
    return subprocess.CompletedProcess(proc.args, rc, out.read_text(), "")


def test_worker_host_dies_nothing_lost_blobs_only_through_s3(tmp_path: Path) -> None:
    require_services()
    figures, logs = tmp_path / "multihost.json", tmp_path / "logs"
    done = run_bench(
        ["--duration", "10", "--rate", "5", "--pool", "60", "--json", str(figures), "--keep-logs", str(logs)],
        tmp_path,
    )
    out = done.stdout
    assert done.returncode == 0, out[-8000:]
    assert "PASS: lost 0, duplicates 0, chain ok" in out, out[-4000:]
    for line in ("| lost | 0 |", "| duplicates | 0 |", "| audit chain | verifies |", "| blob GETs by host api | 0 |"):
        assert line in out, out[-4000:]

    result = json.loads(figures.read_text())
    accepted = result["accepted"]
    assert accepted >= 30, result["load"]  # ~50 at 5/s for 10 s
    assert result["decided"] == result["exactly_one"] == accepted
    assert result["lost"] == result["duplicates"] == 0
    assert all(c["ok"] for c in result["chains"].values())
    blobs = result["blobs"]
    assert blobs["put_by_api"] == blobs["in_bucket"] == accepted
    # Half the load went through the analyzer stage: each of those images was read over S3 by a
    # worker host (w2 at least: it outlived w1), and none of the hash-only control group was.
    assert blobs["analysed"] >= 10
    assert blobs["analysed_read_over_s3"] == blobs["analysed"]
    assert blobs["read_by_host"].get("w2", 0) > 0
    assert blobs["gets_by_host"].get("api", 0) == 0
    assert blobs["control_read"] == 0
    assert not any(blobs["local_blob_files"].values())
    kill = result["kill"]
    assert kill["caught_holding_work"], kill  # w1 died with a started, undecided submission in hand
    assert kill["held_decided_after_s"] is not None
    assert all(c["ok"] for c in result["checks"].values()), result["checks"]

    # Everything the run started is gone: its temporary root and its RabbitMQ vhost.
    root = re.search(r"starting under (\S+)", out)
    assert root is not None and not Path(root.group(1)).exists()
    vhost = re.search(r"RabbitMQ vhost (\S+)", result["broker"])
    assert vhost is not None and vhost.group(1) not in rabbitmqctl("list_vhosts").split()
    # Every host logged to its own folder (kept by --keep-logs).
    kept = {"api": ("api.log", "beat.log", "callbacks.log"), "w1": ("worker1.log",), "w2": ("worker2.log",)}
    for host, names in kept.items():
        assert all((logs / host / name).exists() for name in names), host
