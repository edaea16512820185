"""A local S3-protocol server (moto's server mode) for tests and benchmarks: S3 is an outside
party, so a stand-in that speaks the protocol over HTTP is what they talk to. moto checks requests
like S3 does except one thing: it does not verify the `x-amz-checksum-sha256` of a PUT (AWS S3
and MinIO do); the blob store re-hashes every read, which holds on any server."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "moderation-test", "AWS_SECRET_ACCESS_KEY": "moderation-test-secret"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], deadline: float, failed: Callable[[], str]) -> None:
    """Until 127.0.0.1:`port` accepts a connection; RuntimeError(failed()) when `proc` has exited
    or `deadline` (time.monotonic()) has passed first."""
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(failed()) from None
            time.sleep(0.1)


@contextmanager
def s3_server(log: Path, procs: dict[str, subprocess.Popen[bytes]] | None = None) -> Iterator[str]:
    """moto's S3 server on a free port of 127.0.0.1 (its endpoint URL); stopped afterwards. Its
    request log (one line per call, e.g. `"GET /bucket/key HTTP/1.1" 200`) goes to `log`."""
    port = _free_port()
    moto = Path(sys.executable).parent / "moto_server"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(moto), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    if procs is not None:
        procs["s3"] = proc  # a benchmark counts its CPU and memory
    url = f"http://127.0.0.1:{port}"
    try:
        failed = lambda: f"moto_server did not start: {log.read_text()[-2000:]}"  # noqa: E731
        wait_listening(port, proc, time.monotonic() + 30, failed)
        yield url
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL when it has not exited 10 s later."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def s3_env(endpoint: str, bucket: str, prefix: str = "blobs") -> dict[str, str]:
    """The settings that put a process's blobs in `bucket` on the local server."""
    return {
        "MODERATION_BLOB_URL": f"s3://{bucket}/{prefix}",
        "MODERATION_S3_ENDPOINT_URL": endpoint,
        **CREDENTIALS,
    }
