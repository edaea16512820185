"""`moderation up` supervises its children (issue 10, finding 11): a worker killed (by the kernel
for memory, by a poison image) is restarted with backoff and logged; the API stays up meanwhile;
only Ctrl-C or SIGTERM stops the whole."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil

from moderation.queue import Q_CALLBACKS
from tests.support.images import picture
from tests.support.paths import REPO
from tests.support.processes import embedded_env, free_port, http_ok, stop_session
from tests.support.waiting import wait_until


def _celery_worker(up: subprocess.Popen[bytes]) -> psutil.Process | None:
    """The Celery worker's main process among `up`'s children (its own session leader)."""
    for child in psutil.Process(up.pid).children():
        try:
            cmd = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        # The CPU worker, not the callbacks worker beside it (which would otherwise be found while
        # the killed one, a zombie, is skipped: a "restart" that is only the other worker).
        if "celery" in " ".join(cmd) and "worker" in cmd and Q_CALLBACKS not in cmd:
            return child
    return None


def test_a_killed_worker_is_restarted_and_the_api_stays_up(tmp_path: Path) -> None:
    env = embedded_env(tmp_path / "var", REPO)
    port, flower = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "up.log"
    log = open(log_path, "wb")  # noqa: SIM115
    up = subprocess.Popen(
        [sys.executable, "-m", "moderation.cli", "up", "--port", str(port), "--flower-port", str(flower)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(http_ok(f"{base}/readyz"), 90, what="API ready", detail=log_path.read_text)
        key = re.search(r"(mk_[0-9a-f]{12}_\S+)", log_path.read_text())
        assert key, log_path.read_text()
        headers = {"Authorization": f"Bearer {key.group(1)}"}
        first = wait_until(lambda: _celery_worker(up), 60, what="the worker started")

        os.killpg(first.pid, signal.SIGKILL)  # the worker and its pool, as the OOM killer would
        wait_until(lambda: not first.is_running() or first.status() == psutil.STATUS_ZOMBIE, 10, what="worker dead")
        # The API keeps answering while the worker is down, and accepts work.
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
        r = httpx.post(f"{base}/v1/submissions", headers=headers, files={"file": ("a.png", picture(31, fmt="PNG"))})
        assert r.status_code == 202, r.text
        sid = r.json()["id"]
        assert up.poll() is None, log_path.read_text()

        second = wait_until(
            lambda: (w := _celery_worker(up)) is not None and w.pid != first.pid and w, 30, what="worker restarted"
        )
        assert second.pid != first.pid
        wait_until(lambda: "worker exited with -9; restarting" in log_path.read_text(), 10, what="the restart logged")

        def decided() -> bool:
            body = httpx.get(f"{base}/v1/submissions/{sid}", headers=headers, timeout=5).json()
            return body["status"] in ("decided", "in_review")

        wait_until(decided, 120, what="decided by the restarted worker", detail=log_path.read_text)
    finally:
        rc = stop_session(up)
        log.close()
    assert rc == 0, log_path.read_text()
    assert "stopped" in log_path.read_text()
