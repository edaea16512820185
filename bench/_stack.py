"""The private stack that the proof suites (bench/chaos.py, bench/soak.py) run against, and the
load they put on it.

- `PrivatePostgres` / `PrivateRedis`: a PostgreSQL cluster and a Redis server of the benchmark's
  own (free ports, data under a temporary directory), so that restarting or flushing them never
  touches the machine's shared services or other runs.
- `Stack`: migrations (as the owner), the API, the CPU workers, the callbacks worker and beat
  (as the service role `moderation_service`, the way `make up-postgres` runs them), each in its
  own session with its own log, supervised like `moderation up`: a process that exits is
  restarted after a backoff and the restart is recorded.
- `LoadGen`: an open-loop load generator (asyncio, a minimal keep-alive HTTP/1.1 client, so it
  takes little of a 2-core machine) of hash-only submissions with unique bytes and a unique
  `external_id` each. A request that gets a 5xx, a 429, a timeout or a connection error is
  retried with the same `external_id` and the same bytes (the API is idempotent on
  `(tenant, external_id)`); only a 202 counts as accepted, and every attempt is recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import itertools
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.pipeline import image_set, multipart  # noqa: E402

TENANT = "bench"
SERVICE_ROLE = "moderation_service"  # the LOGIN role the migrations create (moderation.db.migrate)
CPU_QUEUES = ("maintenance", "decide", "ingest", "analyze.cpu")  # moderation.queue.CPU_QUEUES
ALL_QUEUES = (*CPU_QUEUES, "analyze.gpu", "callbacks")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_bin() -> Path:
    """The PostgreSQL server binaries: $PG_BIN, else the newest /usr/lib/postgresql/*/bin, else PATH."""
    if os.environ.get("PG_BIN"):
        return Path(os.environ["PG_BIN"])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    if found:
        return Path(found[-1])
    initdb = shutil.which("initdb")
    if initdb is None:
        raise SystemExit("PostgreSQL server binaries not found: set PG_BIN")
    return Path(initdb).parent


def _as_postgres(argv: list[str]) -> list[str]:
    """initdb refuses root: run the server's tools as the `postgres` OS user when we are root."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


class PrivatePostgres:
    """A PostgreSQL cluster of our own under `root` on `port` (trust auth, 127.0.0.1 only)."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port, self.bin = root, port, pg_bin()
        self.data, self.log = root / "data", root / "postgres.log"

    def _run(self, *args: str, timeout: float = 120) -> None:
        # Output to a file, never a pipe: a postmaster that pg_ctl starts inherits it and keeps
        # it open, and reading the pipe to its end would wait for the server to exit.
        out = self.root / "pg_ctl.out"
        with out.open("wb") as handle:
            done = subprocess.run(_as_postgres(list(args)), stdout=handle, stderr=subprocess.STDOUT, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {out.read_text(errors='replace')}")

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        if not self.data.exists():
            self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        opts = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c max_connections=300 "
            "-c shared_buffers=128MB"
        )
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "start")

    def restart(self) -> None:
        """`pg_ctl restart -m fast`: every session is cut, in-flight transactions roll back."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-m", "fast", "-w", "restart")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)

    def url(self, user: str = "postgres", db: str = "moderation") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{db}"

    def create_database(self, name: str = "moderation") -> None:
        import psycopg2

        conn = psycopg2.connect(self.url(db="postgres"))
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {name}")
        conn.close()

    def pids(self) -> list[int]:
        """The postmaster and its backends."""
        pidfile = self.data / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split()[0])
            root = psutil.Process(pid)
            return [pid, *(c.pid for c in root.children(recursive=True))]
        except (OSError, ValueError, IndexError, psutil.Error):
            return []


class PrivateRedis:
    """A redis-server of our own on `port`, AOF on (appendfsync everysec, as DESIGN recommends),
    so that a restart keeps the queues and a FLUSHALL loses them."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.root)]
        argv += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--protected-mode", "no"]
        argv += ["--logfile", str(self.root / "redis.log")]
        self.proc = subprocess.Popen(argv, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if self.client().ping():
                    return
            time.sleep(0.1)
        raise RuntimeError("private redis-server did not answer PING")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: Redis flushes its AOF and exits
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def restart(self, down_s: float = 1.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, db=0, socket_timeout=5)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc is not None and self.proc.poll() is None else []


def queue_depths(client: Any) -> dict[str, int]:
    """Messages waiting per Celery queue: kombu keeps one Redis list per priority step
    (`ingest`, `ingest\\x06\\x163`, ...), so each queue is the sum of its lists; plus `unacked`,
    the messages delivered to a worker and not acknowledged yet."""
    out = dict.fromkeys(ALL_QUEUES, 0)
    try:
        for raw in client.scan_iter(count=1000):
            name = raw.decode(errors="replace")
            base = name.split("\x06\x16", 1)[0]
            if base in out and client.type(raw) == b"list":
                out[base] += int(client.llen(raw))
        out["unacked"] = int(client.hlen("unacked"))
    except Exception:
        return {}
    return out


# ---------------------------------------------------------------- supervised processes


@dataclass
class Service:
    name: str
    argv: list[str]
    log: Path
    node: str | None = None  # a Celery worker's node name (remote control)
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    failures: int = 0


@dataclass
class Event:
    at: float  # time.time()
    what: str


class Stack:
    """The private services, the migrated database, a submitter key and the supervised processes."""

    def __init__(
        self,
        *,
        api_workers: int = 1,
        cpu_workers: int = 2,
        concurrency: int = 2,
        warm_analyzers: bool = False,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="moderation-bench-"))
        os.chmod(self.root, 0o755)  # the postgres OS user walks into its data directory
        self.pg = PrivatePostgres(self.root / "pg", free_port())
        self.redis = PrivateRedis(self.root / "redis", free_port())
        self.api_port = free_port()
        self.api_workers, self.cpu_workers, self.concurrency = api_workers, cpu_workers, concurrency
        # The CPU workers consume the default queues (analyze.cpu included), and each prefork
        # child would load and warm the lite analyzers at start: minutes of CPU and ~GBs on a
        # 2-core machine for a hash-only load that never runs them. Off unless asked for.
        self.extra_env = {"MODERATION_WARMUP": "true" if warm_analyzers else "false", **(extra_env or {})}
        self.logs = self.root / "logs"
        self.services: dict[str, Service] = {}
        self.events: list[Event] = []
        self.key = ""
        self._lock = threading.Lock()
        self._held: set[str] = set()  # services the benchmark stopped on purpose: not restarted
        self._stop = threading.Event()
        self._supervisor: threading.Thread | None = None
        self.engine: Any = None

    # ------------------------------------------------------------ environment

    def env(self) -> dict[str, str]:
        """The services' environment: none of the caller's MODERATION_* settings, our services only."""
        drop = ("DATABASE_URL", "REDIS_URL", "PYTHONPATH")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODERATION_") and k not in drop}
        env |= {
            "DATABASE_URL": self.pg.url(SERVICE_ROLE),
            "REDIS_URL": self.redis.url(0),
            "MODERATION_VAR_DIR": str(self.root / "var"),
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
        }
        return env | self.extra_env

    def log(self, what: str) -> None:
        now = time.time()
        with self._lock:
            self.events.append(Event(now, what))
        print(f"[{time.strftime('%H:%M:%S')}] {what}", flush=True)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.root / "var").mkdir(exist_ok=True)
        self.pg.start()
        self.pg.create_database()
        self.redis.start()
        env = self.env()
        migrate_env = env | {"MODERATION_MIGRATE_DATABASE_URL": self.pg.url("postgres")}
        done = subprocess.run(
            [sys.executable, "-m", "moderation.cli", "migrate"],
            env=migrate_env,
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"migrate failed:\n{done.stdout}\n{done.stderr}")
        # This process reads the database as its owner (verification), and the broker (ping, depths).
        os.environ.update({k: env[k] for k in ("REDIS_URL", "MODERATION_VAR_DIR")})
        os.environ["DATABASE_URL"] = self.pg.url("postgres")
        from sqlalchemy import create_engine

        from moderation.access.keys import create_key

        self.engine = create_engine(
            self.pg.url("postgres").replace("postgresql://", "postgresql+psycopg2://"), pool_pre_ping=True
        )
        with self.engine.begin() as conn:
            self.key = create_key(conn, TENANT, ["submitter"], "bench")
        py = sys.executable
        host = socket.gethostname()
        self._add(
            "api", [py, "-m", "moderation.cli", "api", "--port", str(self.api_port), "--workers", str(self.api_workers)]
        )
        for w in range(1, self.cpu_workers + 1):
            node = f"cpu{w}@{host}"
            argv = [
                py,
                "-m",
                "moderation.cli",
                "worker",
                "-n",
                node,
                "-c",
                str(self.concurrency),
                "--loglevel",
                "warning",
            ]
            self._add(f"worker{w}", argv, node)
        cb = [
            py,
            "-m",
            "moderation.cli",
            "worker",
            "-Q",
            "callbacks",
            "-n",
            f"callbacks@{host}",
            "--loglevel",
            "warning",
        ]
        self._add("callbacks", cb, f"callbacks@{host}")
        self._add("beat", [py, "-m", "moderation.cli", "beat", "--loglevel", "warning"])
        for svc in self.services.values():
            self._spawn(svc)
        self._supervisor = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self._supervisor.start()
        self.wait_api(90)
        self.wait_workers(90)

    def _add(self, name: str, argv: list[str], node: str | None = None) -> None:
        self.services[name] = Service(name, argv, self.logs / f"{name}.log", node)

    def _spawn(self, svc: Service) -> None:
        handle = svc.log.open("ab")
        svc.proc = subprocess.Popen(
            svc.argv, cwd=REPO, env=self.env(), stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
        handle.close()  # the child holds its own descriptor
        svc.started_at = time.monotonic()

    def _supervise(self) -> None:
        """`moderation up`'s policy: a child that exits is restarted alone, after 1 s doubling to
        60 s (back to 1 s after ten minutes of work)."""
        due: dict[str, float] = {}
        while not self._stop.wait(0.25):
            now = time.monotonic()
            with self._lock:
                for name, svc in self.services.items():
                    if name in self._held or name in due or svc.proc is None or svc.proc.poll() is None:
                        continue
                    svc.failures = svc.failures + 1 if now - svc.started_at < 600 else 1
                    delay = min(60.0, 2.0 ** (svc.failures - 1))
                    due[name] = now + delay
                    rc = svc.proc.returncode
                    self.events.append(Event(time.time(), f"{name} exited ({rc}); restarting in {delay:.0f} s"))
                    print(f"[{time.strftime('%H:%M:%S')}] supervisor: {name} exited ({rc}); restart in {delay:.0f} s")
                for name, at in list(due.items()):
                    if at <= now and not self._stop.is_set():
                        del due[name]
                        if name not in self._held:
                            self._spawn(self.services[name])
                            self.events.append(Event(time.time(), f"{name} restarted"))

    def kill9(self, name: str) -> int:
        """SIGKILL a service's whole process group (a Celery worker and its pool children, uvicorn
        and its workers); the supervisor restarts it. Returns the pid killed."""
        svc = self.services[name]
        assert svc.proc is not None
        pid = svc.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        return pid

    def signal_group(self, name: str, sig: int) -> None:
        """Send `sig` to a service's process group (SIGSTOP / SIGCONT: pause and resume it whole)."""
        svc = self.services[name]
        if svc.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(svc.proc.pid, sig)

    def stop(self) -> None:
        self._stop.set()
        if self._supervisor is not None:
            self._supervisor.join(5)
        for svc in self.services.values():
            if svc.proc is not None and svc.proc.poll() is None:
                svc.proc.terminate()
        deadline = time.monotonic() + 20
        for svc in self.services.values():
            if svc.proc is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                svc.proc.wait(max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError):
                os.killpg(svc.proc.pid, signal.SIGKILL)  # orphaned pool children too
        if self.engine is not None:
            self.engine.dispose()
        self.redis.stop()
        self.pg.stop()

    def cleanup(self, keep_logs: Path | None = None) -> None:
        """Remove the temporary directory (its logs copied to `keep_logs` first, when given)."""
        if keep_logs is not None:
            shutil.rmtree(keep_logs, ignore_errors=True)
            shutil.copytree(self.logs, keep_logs, dirs_exist_ok=True)
            with contextlib.suppress(OSError):
                shutil.copy(self.pg.log, keep_logs / "postgres.log")
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------ readiness and probes

    def api_url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.api_port}{path}"

    def wait_api(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.api_url("/readyz"), timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        raise RuntimeError(f"the API did not become ready; see {self.logs / 'api.log'}")

    def control(self) -> Any:
        """A Celery app on the private broker, for remote control (ping, inspect)."""
        if not hasattr(self, "_control"):
            from celery import Celery

            from moderation.queue import celery_config
            from moderation.settings import Settings

            app = Celery("moderation-bench", set_as_current=False)
            app.conf.update(celery_config(Settings()))  # REDIS_URL: the private broker (start())
            self._control = app
        return self._control

    def wait_workers(self, timeout: float) -> None:
        nodes = [s.node for s in self.services.values() if s.node]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                replies = self.control().control.ping(destination=nodes, timeout=1.0)
                if {n for r in replies for n in r} >= set(nodes):
                    return
            time.sleep(0.5)
        raise RuntimeError(f"workers {nodes} did not answer ping; see {self.logs}")

    def active_tasks(self, node: str, timeout: float = 1.0) -> list[dict[str, Any]]:
        """The tasks `node` is executing now (remote-control `inspect active`)."""
        with contextlib.suppress(Exception):
            reply = self.control().control.inspect(destination=[node], timeout=timeout).active() or {}
            return list(reply.get(node, []))
        return []

    def trees(self) -> dict[str, list[int]]:
        """The pids of each process tree: each service with its children, PostgreSQL and Redis."""
        out: dict[str, list[int]] = {}
        for name, svc in self.services.items():
            if svc.proc is None or svc.proc.poll() is not None:
                out[name] = []
                continue
            try:
                root = psutil.Process(svc.proc.pid)
                out[name] = [root.pid, *(c.pid for c in root.children(recursive=True))]
            except psutil.Error:
                out[name] = []
        out["postgres"] = self.pg.pids()
        out["redis"] = self.redis.pids()
        return out


def rss_mb(pids: Iterable[int], proportional: bool = False) -> float:
    """The RSS of `pids` together, in MiB. `proportional`: PSS instead, which counts shared pages
    once (PostgreSQL's backends all map its shared buffers; their RSS summed counts them N times)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            total += p.memory_full_info().pss if proportional else p.memory_info().rss
    return total / 2**20


def cpu_s(pids: Iterable[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


# ---------------------------------------------------------------- load


class UniqueImages:
    """Distinct bytes for every submission: a pool of photo-like 1080x1080 JPEGs (bench/pipeline.py's,
    150-250 KB, cached under var/bench-images), each sent with a JPEG comment segment (COM) that
    carries the submission's number. Every submission is a new SHA-256 and a new blob; the pixels
    (and so PDQ) repeat across the pool, which the hash-only policy without banks never looks at."""

    def __init__(self, pool: int = 600) -> None:
        self.pool = [p.read_bytes() for p in image_set(pool, REPO / "var" / "bench-images")]

    def get(self, n: int, run: str) -> bytes:
        base = self.pool[n % len(self.pool)]
        tag = f"moderation-bench {run} #{n}".encode()
        segment = b"\xff\xfe" + (len(tag) + 2).to_bytes(2, "big") + tag
        return base[:2] + segment + base[2:]  # right after SOI


class _Conn:
    """One keep-alive HTTP/1.1 connection; any failure closes it (the caller retries on a new one).

    A connection idle for longer than `IDLE_S` is closed and opened again before it is used:
    uvicorn closes keep-alive connections idle for 5 s, and a request written onto one it has
    just closed fails and would be counted as a retry the pipeline never caused.
    """

    IDLE_S = 4.0

    def __init__(self, port: int, key: str) -> None:
        self.port, self.key = port, key
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.last_used = 0.0

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def post(self, data: bytes, fields: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        if self.writer is not None and time.monotonic() - self.last_used > self.IDLE_S:
            self.close()
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        body, boundary = multipart(data, fields)
        head = (
            f"POST /v1/submissions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {self.key}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("connection closed before the response")
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        payload = await self.reader.readexactly(int(headers.get("content-length", "0")))
        self.last_used = time.monotonic()
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, payload


@dataclass
class Attempt:
    started: float  # time.time()
    ended: float
    outcome: str  # "202", "202-replay", "503", "429", "conn", "timeout", ...


@dataclass
class Item:
    n: int
    external_id: str
    first: float
    attempts: list[Attempt] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)  # every id a 202 named (one, unless idempotency broke)
    accepted_at: float | None = None
    gave_up: bool = False

    @property
    def id(self) -> str | None:
        return next(iter(self.ids)) if len(self.ids) == 1 else None


class LoadGen(threading.Thread):
    """Open-loop load at `rate` submissions/s (asyncio in its own thread) until stop().

    Each submission is retried, with the same external_id, bytes and fields, on anything but a 202
    or a final 4xx (backoff 0.25 s doubling to 4 s, Retry-After on 429) for up to `give_up_s`.
    Submissions use the `hash-only` policy unless `fields(n)` says otherwise for submission n.
    """

    def __init__(
        self,
        port: int,
        key: str,
        images: UniqueImages,
        rate: float,
        run: str,
        *,
        connections: int = 64,
        attempt_timeout_s: float = 20.0,
        give_up_s: float = 180.0,
        max_in_flight: int = 2000,
        fields: Callable[[int], dict[str, str]] | None = None,
    ) -> None:
        super().__init__(name="loadgen", daemon=True)
        self.fields = fields  # submission number -> form fields over the defaults (policy, caption…)
        self.port, self.key, self.images, self.rate, self.run_id = port, key, images, rate, run
        self.connections, self.attempt_timeout_s, self.give_up_s = connections, attempt_timeout_s, give_up_s
        self.max_in_flight = max_in_flight
        self.items: list[Item] = []
        self.started_at = 0.0
        self.stopped_at = 0.0
        self.behind = 0  # submissions the scheduler could not start on time (in-flight cap)
        self._stop = threading.Event()
        self.done = threading.Event()

    def stop_and_wait(self, timeout: float) -> None:
        """Stop starting new submissions; wait for those in flight (their retries included)."""
        self._stop.set()
        self.done.wait(timeout)

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        finally:
            self.done.set()

    async def _main(self) -> None:
        pool: asyncio.Queue[_Conn] = asyncio.LifoQueue()  # the warmest connection first
        for _ in range(self.connections):
            pool.put_nowait(_Conn(self.port, self.key))
        in_flight = asyncio.Semaphore(self.max_in_flight)
        tasks: set[asyncio.Task[None]] = set()
        self.started_at = time.time()
        t0 = time.monotonic()
        for n in itertools.count():
            if self._stop.is_set():
                break
            delay = t0 + n / self.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:
                self.behind += 1
            await in_flight.acquire()
            item = Item(n, f"{self.run_id}-{n}", time.time())
            self.items.append(item)
            task = asyncio.create_task(self._submit(item, pool, in_flight))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        self.stopped_at = time.time()
        if tasks:
            await asyncio.gather(*tasks)
        while not pool.empty():
            pool.get_nowait().close()

    async def _submit(self, item: Item, pool: asyncio.Queue[_Conn], in_flight: asyncio.Semaphore) -> None:
        data = self.images.get(item.n, self.run_id)
        chosen = self.fields(item.n) if self.fields else {}
        fields = {"policy": "hash-only", **chosen, "external_id": item.external_id}
        backoff = 0.25
        try:
            while True:
                conn = await pool.get()
                started = time.time()
                retry_after = 0.0
                try:
                    status, headers, payload = await asyncio.wait_for(conn.post(data, fields), self.attempt_timeout_s)
                    outcome = str(status)
                    if status == 202:
                        import json

                        item.ids.add(json.loads(payload)["id"])
                        item.accepted_at = item.accepted_at or time.time()
                        if headers.get("idempotent-replayed") == "true":
                            outcome = "202-replay"
                    elif status == 429:
                        retry_after = float(headers.get("retry-after", "1") or 1)
                except TimeoutError:
                    conn.close()
                    outcome = "timeout"
                except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError):
                    conn.close()
                    outcome = "conn"
                finally:
                    pool.put_nowait(conn)
                item.attempts.append(Attempt(started, time.time(), outcome))
                if outcome.startswith("202"):
                    return
                if outcome[0] == "4" and outcome != "429" and outcome != "408":
                    return  # a final refusal: not accepted, not retried
                if time.time() - item.first > self.give_up_s:
                    item.gave_up = True
                    return
                await asyncio.sleep(max(retry_after, backoff * (0.5 + random.random())))
                backoff = min(4.0, backoff * 2)
        finally:
            in_flight.release()

    def finish(self, log: Callable[[str], None]) -> tuple[float, dict[str, Any], dict[str, float]]:
        """Stop the load and wait for the retries in flight: (when it ended, summary(), the
        accepted submissions' id -> accepted_at)."""
        log("load stops; waiting for the retries in flight")
        self.stop_and_wait(self.give_up_s + 60)
        ended = time.time()
        summary = self.summary()
        log(f"load: {summary}")
        accepted = {i.id: i.accepted_at for i in self.accepted() if i.id is not None and i.accepted_at is not None}
        return ended, summary, accepted

    # ------------------------------------------------------------ figures

    def accepted(self) -> list[Item]:
        return [i for i in self.items if i.ids]

    def summary(self) -> dict[str, Any]:
        attempts = [a for i in self.items for a in i.attempts]
        outcomes: dict[str, int] = {}
        for a in attempts:
            outcomes[a.outcome] = outcomes.get(a.outcome, 0) + 1
        return {
            "sent": len(self.items),
            "accepted": sum(1 for i in self.items if i.ids),
            "attempts": len(attempts),
            "retries": len(attempts) - len(self.items),
            "retried_items": sum(1 for i in self.items if len(i.attempts) > 1),
            "outcomes": dict(sorted(outcomes.items())),
            "gave_up": sum(1 for i in self.items if i.gave_up),
            "refused": sum(1 for i in self.items if not i.ids and not i.gave_up),
            "conflicting_ids": sum(1 for i in self.items if len(i.ids) > 1),
            "behind_schedule": self.behind,
        }


def until(check: Callable[[], bool], timeout: float, every: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
