"""Real processes for the tests (Celery workers and beat, the `moderation` CLI, fixture servers),
each with its own log file, started and then waited on until a real ready signal answers.

Readiness is never read from a log line: a Celery worker is ready when it answers a remote-control
`ping` addressed to its node name. A worker answers only once its consumer runs, and the VLM
workers (thread pool) load their model before their consumer starts (workers.app), so for them
"ready" also means "model loaded". Beat answers `ping` too, once its scheduler has loaded, on
Celery releases that have beat remote control.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import celery.beat
import httpx
from celery import Celery
from celery.utils.nodenames import default_nodename, host_format

from moderation.queue import CPU_QUEUES, celery_config
from moderation.settings import Settings
from tests.support.paths import REPO
from tests.support.waiting import wait_until

CELERY = [sys.executable, "-m", "celery", "-A", "workers.app"]
# Node names unique in this test run and beside other runs on the same broker, so that a ping is
# never answered by a worker of another test that is still shutting down.
_serial = itertools.count(1)
# Environment that decides which broker a process uses (moderation.settings / moderation.queue).
BROKER_ENV = ("REDIS_URL", "MODERATION_REDIS_URL", "MODERATION_BROKER_URL", "MODERATION_VAR_DIR")


def node_name(name: str) -> str:
    """A node name as Celery expands it for `celery worker -n` (`%h`: this host)."""
    return str(host_format(default_nodename(name)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_ok(url: str) -> Callable[[], bool]:
    """Ready signal of an HTTP server: `url` answers 200."""

    def ready() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    return ready


class Proc:
    """A subprocess with its own log file."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.handle = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.p = subprocess.Popen(
            argv,
            cwd=REPO,
            env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, ready: Callable[[], object], timeout: float, what: str) -> None:
        """Wait until `ready()` is true; fail at once, with the log, if the process exits first."""

        def check() -> object:
            if self.p.poll() is not None:
                raise RuntimeError(f"{self.log.name}: process exited {self.p.returncode}:\n{self.text()[-3000:]}")
            return ready()

        wait_until(check, timeout, what=f"{what} ({self.log.name})", detail=lambda: self.text()[-3000:])

    def kill9(self) -> None:
        """SIGKILL the whole process group (the worker and its pool children)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.p.pid, signal.SIGKILL)
        self.p.wait(10)

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                self.kill9()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.p.pid, signal.SIGKILL)  # any orphaned pool children
        self.handle.close()


class Procs:
    """The processes of one test (or module), all stopped by stop_all().

    `env` is the service environment that this test process has applied to os.environ too (the
    `service_env` fixture), so a Celery app configured here from Settings() talks to the broker
    that the processes use; `ping` relies on that.
    """

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env, self.tmp, self.all, self.n = env, tmp, [], 0
        self._control: Celery | None = None

    # ------------------------------------------------------------ ready signals

    def ping(self, node: str) -> Callable[[], bool]:
        """Ready signal of a Celery worker or beat: node `node` answers a remote-control ping."""
        name = node_name(node)

        def answers() -> bool:
            app = self.control()
            try:
                replies = app.control.ping(destination=[name], timeout=1.0)
            except broker_errors(app):
                # The broker restarted (a test restarts it) after kombu pooled this connection:
                # its producer pools are process-wide, keyed by the broker URL, so even a new app
                # gets the dead one. Start over with a new app and ask again on the next poll,
                # which connects anew. (Resetting kombu's pools at the restart instead breaks the
                # in-process API's publisher: the next test's submissions are never queued.)
                self.close_control()
                return False
            return any(name in reply for reply in replies)

        return answers

    def close_control(self) -> None:
        if self._control is not None:
            with contextlib.suppress(Exception):
                self._control.close()
            self._control = None

    def control(self) -> Celery:
        if self._control is None:
            app = Celery("moderation-tests", set_as_current=False)
            app.conf.update(celery_config(Settings()))
            self._control = app
        return self._control

    # ------------------------------------------------------------ starting

    def start(
        self,
        name: str,
        argv: list[str],
        ready: Callable[[], object],
        timeout: float = 120,
        what: str = "ready",
        **extra_env: str,
    ) -> Proc:
        """Start `argv` (any process: `[sys.executable, "-m", ...]`) and wait until `ready()`."""
        if changed := [k for k in BROKER_ENV if k in extra_env and extra_env[k] != self.env.get(k)]:
            raise ValueError(f"{changed}: processes started here must use the test broker (see Procs)")
        self.n += 1
        proc = Proc(argv, {**self.env, **extra_env}, self.tmp / f"{name}{self.n}.log")
        self.all.append(proc)
        proc.wait_ready(ready, timeout, f"{name} {what}")
        return proc

    def command(
        self, name: str, argv: list[str], ready: Callable[[], object], timeout: float = 120, **extra_env: str
    ) -> Proc:
        """Any other process of the project (the `moderation` CLI, a fixture server), run by this Python."""
        return self.start(name, [sys.executable, *argv], ready, timeout, **extra_env)

    def worker(
        self,
        queues: str = ",".join(CPU_QUEUES),
        concurrency: int = 2,
        **extra_env: str,
    ) -> Proc:
        """A real `celery worker`, returned once it answers ping."""
        node = f"test{os.getpid()}-{next(_serial)}@%h"
        args = [
            "worker",
            "-Q",
            queues,
            "-c",
            str(concurrency),
            "-n",
            node,
            "--loglevel",
            "info",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
        return self.start("worker", [*CELERY, *args], self.ping(node), 60, f"answering ping as {node}", **extra_env)

    def beat(self) -> Proc:
        """A real `celery beat` (the reconciler's schedule), returned once its scheduler has loaded."""
        serial = next(_serial)
        schedule = self.tmp / f"beat-{serial}-schedule"
        args = ["beat", "--loglevel", "info", "-s", str(schedule)]
        if hasattr(celery.beat, "BeatPidbox"):  # Celery >= 5.7: beat answers ping once its scheduler is set up
            node = f"testbeat{os.getpid()}-{serial}@%h"
            args += ["--enable-remote-control", "-n", node]
            return self.start("beat", [*CELERY, *args], self.ping(node), 60, f"answering ping as {node}")

        # Older Celery: beat has no remote control. Its scheduler writes the schedule store
        # (shelve: one or more files named after it) as it loads, just before the first tick.
        def store_written() -> bool:
            return any(schedule.parent.glob(f"{schedule.name}*"))

        return self.start("beat", [*CELERY, *args], store_written, 60, "schedule store written")

    def stop_all(self) -> None:
        for p in self.all:
            p.stop()
        self.close_control()


def broker_errors(app: Celery) -> tuple[type[BaseException], ...]:
    """What a lost broker connection raises through `app`'s transport (Redis or AMQP), and OSError."""
    conn = app.connection_for_write()
    try:
        return (OSError, *conn.connection_errors, *conn.channel_errors)
    finally:
        conn.release()


def embedded_env(var_dir: Path | None = None, pythonpath: Path | None = None) -> dict[str, str]:
    """This environment without the test session's settings (no DATABASE_URL, REDIS_URL,
    MODERATION_*, PYTHONPATH): a child started with it runs on the embedded default."""
    drop = ("DATABASE_URL", "REDIS_URL", "PYTHONPATH")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODERATION_") and k not in drop}
    env["PYTHONUNBUFFERED"] = "1"
    if var_dir is not None:
        env["MODERATION_VAR_DIR"] = str(var_dir)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return env


def stop_session(proc: subprocess.Popen[bytes], timeout: float = 40) -> int | None:
    """Ctrl-C to a child started with `start_new_session` (and its group); SIGKILL when it has not
    stopped within `timeout`. Returns its exit code, or None when it had to be killed."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        return None
