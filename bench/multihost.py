"""A multi-host deployment on one machine (issue 14, item 3): three "hosts" that share nothing but
the network services, one of them dies mid-load, nothing accepted is lost or decided twice, and
every image travels through S3.

    .venv/bin/python bench/multihost.py                          # 30 s of load on RabbitMQ
    .venv/bin/python bench/multihost.py --duration 60 --rate 10 --broker redis --json /tmp/mh.json

The shared services, each of the run's own: a PostgreSQL cluster (bench/_stack.PrivatePostgres),
the Celery broker (RabbitMQ: a vhost of its own on the machine's server, made with rabbitmqctl
and deleted afterwards; `--broker redis`: a private redis-server), a private Redis for the rate
limits (REDIS_URL; with `--broker redis` the same server), and an S3 server (moto's S3 app) with
the bucket made by `moderation blobs init`. The S3 server listens on one port per host (the same
in-memory store behind every port, like the addresses of one load balancer), so its request log
names the host of every call: `w2 - - [date] "GET /bucket/blobs/aa/bb/<sha256> HTTP/1.1" 200 -`.

The hosts, each a working directory of its own under the run's temporary root (cwd,
MODERATION_VAR_DIR, its own copy of the policies, its logs), no filesystem path in common (the
code is the "installed software" they all run), blobs only through S3 (MODERATION_BLOB_URL=s3://…):
  api  `moderation api`, `moderation beat` (the one beat of the deployment: the reconciler) and
       the callbacks worker (idle here: no callback_url)
  w1   `moderation worker` on the CPU queues (prefork x --concurrency)
  w2   the same
Each process is a session (process group) of its own, supervised like `moderation up` does
(bench/_stack.Stack: migrations as the owner, services as `moderation_service`).

The load (bench/_stack.LoadGen): open-loop, `--rate` unique images/s, each with a unique
external_id, retried with the same one on anything but a 202 (only a 202 counts as accepted).
A share of the submissions (`--read-share`) uses a policy with one cheap analyzer stage
(tests.support.analyzers.CaptionAnalyzer, asked to take `--analyze-s` per image, standing in for
a model): the worker reads the image from the blob store, re-hashes and decodes it before the
stage runs. The rest use `hash-only`, which never reads the blob after the API stored it (the
hashes are computed at intake): those are the control group, whose blobs nobody GETs.

At `--kill-at` seconds the whole process group of w1 is SIGKILLed (a host dying: the worker's main
process and its pool children at once), aimed at a moment when w1 holds work (`inspect active`,
the group frozen with SIGSTOP while the database confirms an item of it is started and undecided)
and not restarted. The load goes on to `--duration`, stops, and the run waits (at most `--drain`)
until every accepted submission is decided; RabbitMQ hands w1's unacknowledged messages to w2 when
its connection drops, and the reconciler (every `--reconcile-interval` s, stale after
`--stale-after` s) re-enqueues whatever the broker does not give back (on Redis: everything, the
visibility timeout being minutes).

Checks (exit status 1 when one fails): every accepted submission has exactly one automated
decision and exactly one `decided` audit event (lost 0, duplicates 0); the audit chain verifies;
every accepted image's blob was PUT to S3 by the api host and is in the bucket; every analysed
image was read with a GET by a worker host (w1 or w2) and its stage ran without error; no host's
working directory holds a blob file; the pipeline drained in time. Figures: throughput, latency
from submission to decision, what was in flight on w1 when it died, how long recovery took.
A Markdown table of them is printed at the end; --json (default bench/results/multihost.json)
writes them all; the hosts' logs and the S3 request log are kept in --keep-logs (var/multihost-logs).

The machine's RabbitMQ is shared with other runs: one that restarts it or raises a memory alarm
(publishers blocked) stalls this run too. The hosts' logs say so; the table's last row counts those
lines, and the figures of such a run are not the deployment's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stack import REPO, TENANT, LoadGen, Service, Stack, UniqueImages, free_port, until
from bench.chaos import Fault, active_count, fetch, in_flight, recovery, undecided, verify_chains
from bench.common import pct, run_header
from devtools.s3server import stop, wait_listening

RESULTS = REPO / "bench" / "results"
WINDOW_S = 5.0  # latency is also reported per window of this many seconds of submissions
# ...and without the first seconds: each worker child builds its context (engine, policies, S3
# client) on its first task (Stack starts them with MODERATION_WARMUP=false).
WARM_S = 10.0
# The hosts and the services each runs (bench/_stack.Stack's names). The callbacks worker (idle:
# this load has no callback_url) keeps the API host company, as in a deployment.
HOSTS: dict[str, tuple[str, ...]] = {"api": ("api", "beat", "callbacks"), "w1": ("worker1",), "w2": ("worker2",)}
HOST_OF = {svc: host for host, services in HOSTS.items() for svc in services}
WORKER_HOSTS = ("w1", "w2")
KILLED = "w1"
OPS = "ops"  # the operator's seat: `moderation blobs init`, the bucket listing of the checks
BUCKET = "moderation-multihost"
PREFIX = "blobs"
READ_POLICY = "bench-blob-read"
READ_STAGE = "caption"
READ_POLICY_YAML = f"""\
# bench/multihost.py: one cheap analyzer stage, so that the worker reads every image from the
# blob store (hash-only never does after intake).
id: {READ_POLICY}
extends: default
description: Banks, cache and a test analyzer that reads the blob; the multi-host benchmark's.
qa_sample_rate: 0.0
on_uncovered: review
cascade:
  - stage: banks
  - stage: cache
  - stage: {READ_STAGE}
    analyzer: tests.support.analyzers:CaptionAnalyzer
    queue: analyze.cpu
"""
UNDECIDED = ("received", "queued", "analyzing")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SHA = re.compile(r"^[0-9a-f]{64}$")


# ---------------------------------------------------------------- S3, one port per host


def serve_s3(log: str, bindings: list[str]) -> None:
    """The S3 server process: moto's S3 app behind one threaded werkzeug server per `label=port`
    binding, all on the same in-memory store; each request is logged with the label of the port it
    came in on where a server logs the client address. Runs until SIGTERM."""
    import logging
    import threading

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    class Labelled(MotoRequestHandler):
        def address_string(self) -> str:
            return str(getattr(self.server, "host_label", "?"))

    logging.basicConfig(filename=log, level=logging.INFO, format="%(message)s")
    app = DomainDispatcherApplication(create_backend_app)
    servers = []
    for binding in bindings:
        label, port = binding.split("=")
        server = make_server("127.0.0.1", int(port), app, threaded=True, request_handler=Labelled)
        server.host_label = label  # type: ignore[attr-defined]
        servers.append(server)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    stop.wait()
    for s in servers:
        s.shutdown()


@contextlib.contextmanager
def s3_server(log: Path, labels: list[str]) -> Iterator[dict[str, str]]:
    """The S3 server (serve_s3) on a free port per label: {label: endpoint URL}; stopped afterwards."""
    ports = {label: free_port() for label in labels}
    argv = [
        sys.executable,
        "-c",
        "import sys; from bench.multihost import serve_s3; serve_s3(sys.argv[1], sys.argv[2:])",
    ]
    argv += [str(log), *(f"{label}={port}" for label, port in ports.items())]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(argv, cwd=REPO, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        for port in ports.values():
            wait_listening(port, proc, deadline, lambda: f"the S3 server did not start (rc {proc.poll()}); see {log}")
        yield {label: f"http://127.0.0.1:{port}" for label, port in ports.items()}
    finally:
        stop(proc)


@dataclass
class S3Log:
    """The blob requests of the S3 server's log: per sha256, the hosts that PUT it and that GET it."""

    puts: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    gets: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    failed: Counter[str] = field(default_factory=Counter)  # "host METHOD status" of blob calls that did not answer 2xx

    @classmethod
    def read(cls, path: Path, bucket: str, prefix: str) -> S3Log:
        line_re = re.compile(
            rf'^(\S+) - - \[[^\]]*\] "(\w+) /{re.escape(bucket)}/{re.escape(prefix)}/'
            r'[0-9a-f]{2}/[0-9a-f]{2}/([0-9a-f]{64})(?:\?\S*)? HTTP/[\d.]+" (\d{3})'
        )
        out = cls()
        for raw in path.read_text(errors="replace").splitlines():
            m = line_re.match(_ANSI.sub("", raw))
            if m is None:
                continue
            host, method, sha, status = m.groups()
            if not status.startswith("2"):
                out.failed[f"{host} {method} {status}"] += 1
            elif method == "PUT":
                out.puts[sha][host] += 1
            elif method == "GET":
                out.gets[sha][host] += 1
        return out

    def get_hosts(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for per_host in self.gets.values():
            total.update(per_host)
        return total


def bucket_keys(endpoint: str, env: dict[str, str]) -> set[str]:
    """The sha256 names of the objects under the bucket's prefix (the operator's listing)."""
    import boto3

    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    out: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{PREFIX}/"):
        out.update(obj["Key"].rsplit("/", 1)[-1] for obj in page.get("Contents", []))
    return out


# ---------------------------------------------------------------- the hosts


class MultiHostStack(Stack):
    """bench/_stack.Stack with its processes placed on hosts: each service runs in its host's
    working directory with its host's environment (var dir, policies, S3 endpoint) and logs there.
    Migrations, the key, the supervision and the probes are Stack's."""

    def __init__(self, *, concurrency: int, extra_env: dict[str, str]) -> None:
        super().__init__(api_workers=1, cpu_workers=len(WORKER_HOSTS), concurrency=concurrency, extra_env=extra_env)
        self.hosts = {host: self.root / "hosts" / host for host in HOSTS}
        self.endpoints: dict[str, str] = {}

    def prepare(self, endpoints: dict[str, str]) -> None:
        """Each host's directory: var/, logs/ and its own copy of the policies (plus READ_POLICY)."""
        self.endpoints = endpoints
        self.extra_env["MODERATION_S3_ENDPOINT_URL"] = endpoints[OPS]  # migrate, blobs init: the operator's
        for d in self.hosts.values():
            (d / "var").mkdir(parents=True, exist_ok=True)
            (d / "logs").mkdir(exist_ok=True)
            policies = d / "policies"
            policies.mkdir(exist_ok=True)
            for f in (REPO / "policies").glob("*.yaml"):
                shutil.copy(f, policies / f.name)
            shutil.copytree(REPO / "policies" / "prompts", policies / "prompts", dirs_exist_ok=True)
            (policies / f"{READ_POLICY}.yaml").write_text(READ_POLICY_YAML)

    def host_env(self, host: str) -> dict[str, str]:
        d = self.hosts[host]
        return self.env() | {
            "MODERATION_VAR_DIR": str(d / "var"),
            "MODERATION_POLICIES_DIR": str(d / "policies"),
            "MODERATION_S3_ENDPOINT_URL": self.endpoints[host],
        }

    def init_blobs(self) -> str:
        """`moderation blobs init` from the operator's seat: creates the bucket and checks it."""
        self.logs.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [sys.executable, "-m", "moderation.cli", "blobs", "init"],
            env=self.env(),
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=120,
        )
        out = (done.stdout + done.stderr).strip()
        (self.logs / "blobs-init.log").write_text(out + "\n")
        if done.returncode != 0:
            raise RuntimeError(f"moderation blobs init failed ({done.returncode}):\n{out}")
        return out

    def _add(self, name: str, argv: list[str], node: str | None = None) -> None:
        host = HOST_OF[name]
        if node is not None and "-n" in argv:  # a Celery worker: named after its host (cpu@w1, callbacks@api)
            node = f"{node.split('@')[0].rstrip('0123456789')}@{host}"
            argv = [*argv]
            argv[argv.index("-n") + 1] = node
        self.services[name] = Service(name, argv, self.hosts[host] / "logs" / f"{name}.log", node)

    def _spawn(self, svc: Service) -> None:
        host = HOST_OF[svc.name]
        with svc.log.open("ab") as handle:
            svc.proc = subprocess.Popen(
                svc.argv,
                cwd=self.hosts[host],
                env=self.host_env(host),
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        svc.started_at = time.monotonic()

    def kill_host(self, host: str) -> list[int]:
        """SIGKILL every process group of `host`, never to be restarted."""
        with self._lock:
            self._held.update(HOSTS[host])
        return [self.kill9(name) for name in HOSTS[host]]

    def node(self, host: str) -> str:
        """The Celery node of a worker host."""
        node = self.services[HOSTS[host][0]].node
        assert node is not None
        return node

    def held_tasks(self, host: str, timeout: float = 0.5) -> list[dict[str, Any]]:
        """What the host's worker executes and holds prefetched (remote control)."""
        node = self.node(host)
        with contextlib.suppress(Exception):
            inspect = self.control().control.inspect(destination=[node], timeout=timeout)
            active = (inspect.active() or {}).get(node, [])
            reserved = (inspect.reserved() or {}).get(node, [])
            return [*active, *reserved]
        return []

    def local_blob_files(self) -> dict[str, list[str]]:
        """Per host, the files in its directory that are blobs: a sha256 name, or under a `blobs` folder."""
        out: dict[str, list[str]] = {}
        for host, d in self.hosts.items():
            found = [
                str(p.relative_to(d))
                for p in d.rglob("*")
                if p.is_file() and (_SHA.match(p.name) or "blobs" in p.relative_to(d).parts)
            ]
            out[host] = sorted(found)
        return out

    def host_files(self) -> dict[str, list[str]]:
        """Per host, what it keeps on its disk (outside its copy of the policies and its logs)."""
        out: dict[str, list[str]] = {}
        for host, d in self.hosts.items():
            out[host] = sorted(
                str(p.relative_to(d))
                for p in d.rglob("*")
                if p.is_file() and p.relative_to(d).parts[0] not in ("policies", "logs")
            )
        return out

    def broker_trouble(self) -> dict[str, list[str]]:
        """Per host, the log lines where a process lost the broker or could not publish to it: an
        outage nobody planned (the machine's RabbitMQ is shared; another run may restart it)."""
        marks = ("Connection to broker lost", "Cannot connect to amqp", "Cannot connect to redis", "failed (reconciler")
        out: dict[str, list[str]] = {}
        for host, d in self.hosts.items():
            lines = [
                line.strip()[:200]
                for log in sorted((d / "logs").glob("*.log"))
                for line in log.read_text(errors="replace").splitlines()
                if any(m in line for m in marks)
            ]
            if lines:
                out[host] = lines
        return out

    def cleanup(self, keep_logs: Path | None = None) -> None:
        for host, d in self.hosts.items():
            with contextlib.suppress(OSError):
                shutil.copytree(d / "logs", self.logs / host, dirs_exist_ok=True)
        super().cleanup(keep_logs)


def route_reads(share: float, analyze_s: float) -> Callable[[int], dict[str, str]]:
    """LoadGen's fields: `share` of the submissions under READ_POLICY (the rest stay `hash-only`),
    chosen by the submission's number, so a retry keeps its policy."""
    read = {"policy": READ_POLICY, "caption": f"sleep={analyze_s}" if analyze_s > 0 else ""}
    return lambda n: read if is_read(n, share) else {}


def is_read(n: int, share: float) -> bool:
    """Whether submission `n` goes through the analyzer: evenly spread, `share` of them."""
    return int((n + 1) * share) > int(n * share)


# ---------------------------------------------------------------- the kill


def submission_ids(tasks: list[dict[str, Any]]) -> list[str]:
    """Every string among the tasks' arguments (ingest: [[ids]], analyze: [id, stage], decide: [id]);
    the database says which are submissions."""
    out: list[str] = []
    for t in tasks:
        for arg in t.get("args") or []:
            if isinstance(arg, str):
                out.append(arg)
            elif isinstance(arg, list):
                out.extend(a for a in arg if isinstance(a, str))
    return out


def statuses(stack: Stack, ids: list[str]) -> dict[str, str]:
    from sqlalchemy import text

    if not ids:
        return {}
    with stack.engine.connect() as conn:
        rows = conn.execute(text("SELECT id, status FROM submissions WHERE id = ANY(:ids)"), {"ids": ids}).all()
    return {r.id: r.status for r in rows}


def kill_worker_host(stack: MultiHostStack, fault: Fault, timeout: float = 30.0) -> None:
    """SIGKILL w1 while it holds work: ask it what it runs and holds, freeze its group (SIGSTOP),
    and kill it when the database shows one of those submissions started (attempt counted) and
    undecided; else let it go on (SIGCONT) and try again. After `timeout`, kill it anyway."""
    held: list[str] = []
    started: list[str] = []
    held_status: dict[str, str] = {}
    tries = 0
    deadline = time.monotonic() + timeout
    services = HOSTS[KILLED]
    while time.monotonic() < deadline:
        ids = submission_ids(stack.held_tasks(KILLED))
        if not ids:
            time.sleep(0.05)
            continue
        for name in services:
            stack.signal_group(name, signal.SIGSTOP)
        tries += 1
        started = in_flight(stack, ids)  # status analyzing, no automated decision
        if started:
            held = ids
            held_status = statuses(stack, held)  # read while frozen: the moment of the kill
            break
        for name in services:
            stack.signal_group(name, signal.SIGCONT)
    fault.at = time.time()
    pids = stack.kill_host(KILLED)
    fault.notes = {
        "pids": pids,
        "caught_holding_work": bool(started),
        "tries": tries,
        "held": {sid: held_status[sid] for sid in held if sid in held_status},
        "started": started,
    }


def in_progress(stack: Stack) -> dict[str, int]:
    """The tenant's submissions per status queued/analyzing (the moment of the kill)."""
    from sqlalchemy import text

    with stack.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT status, count(*) AS n FROM submissions WHERE tenant_id = :t "
                "AND status IN ('queued', 'analyzing') GROUP BY status"
            ),
            {"t": TENANT},
        ).all()
    return {r.status: int(r.n) for r in rows}


def submission_facts(stack: Stack) -> tuple[dict[str, Any], dict[str, str | None]]:
    """Per submission: (sha256, policy, created_at, attempts); per submission of READ_POLICY with a
    finding of its stage: that finding's error (None: the stage ran)."""
    from sqlalchemy import text

    with stack.engine.connect() as conn:
        subs = {
            r.id: r
            for r in conn.execute(
                text("SELECT id, sha256, policy_id, created_at, attempts FROM submissions WHERE tenant_id = :t"),
                {"t": TENANT},
            ).all()
        }
        rows = conn.execute(
            text(
                "SELECT f.submission_id, f.body FROM findings f JOIN submissions s ON s.id = f.submission_id "
                "WHERE s.tenant_id = :t AND f.stage = :stage"
            ),
            {"t": TENANT, "stage": READ_STAGE},
        ).all()
    stage_errors: dict[str, str | None] = {}
    for r in rows:
        body = r.body if isinstance(r.body, dict) else json.loads(r.body)
        stage_errors[r.submission_id] = body.get("error")
    return subs, stage_errors


def latency_of(ids: Iterable[str], subs: dict[str, Any], decided_at: dict[str, float]) -> dict[str, float]:
    """Seconds from each submission row's creation to its automated decision (the decided ones of `ids`)."""
    return {sid: decided_at[sid] - subs[sid].created_at.timestamp() for sid in ids if sid in decided_at and sid in subs}


def latency_windows(latency: dict[str, float], subs: dict[str, Any], t0: float, width: float) -> list[dict[str, Any]]:
    """The latencies grouped by when the submission was made (windows of `width` s from `t0`)."""
    groups: dict[int, list[float]] = defaultdict(list)
    for sid, value in latency.items():
        groups[int((subs[sid].created_at.timestamp() - t0) // width)].append(value)
    return [
        {
            "from_s": k * width,
            "n": len(v),
            "p50": round(pct(v, 50), 3),
            "p95": round(pct(v, 95), 3),
            "max": round(max(v), 3),
        }
        for k, v in sorted(groups.items())
    ]


# ---------------------------------------------------------------- main


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=30, help="seconds of load")
    ap.add_argument("--rate", type=float, default=10, help="submissions/s")
    ap.add_argument("--broker", choices=("rabbitmq", "redis"), default="rabbitmq")
    ap.add_argument("--kill-at", type=float, help="seconds into the load when w1 dies (default: 40 %% of it)")
    ap.add_argument("--read-share", type=float, default=0.5, help="share of submissions under the analyzer policy")
    ap.add_argument("--analyze-s", type=float, default=0.2, help="seconds the test analyzer takes per image")
    ap.add_argument("--concurrency", type=int, default=2, help="prefork children per worker host")
    ap.add_argument("--drain", type=float, default=180, help="seconds to wait for every accepted item's decision")
    ap.add_argument("--stale-after", type=float, default=5.0, help="MODERATION_STALE_AFTER_S")
    ap.add_argument("--reconcile-interval", type=float, default=2.0, help="MODERATION_RECONCILE_INTERVAL_S")
    ap.add_argument("--pool", type=int, default=600, help="distinct base images (bench/pipeline.py's, cached)")
    ap.add_argument("--json", type=Path, default=RESULTS / "multihost.json")
    ap.add_argument("--keep-logs", type=Path, default=REPO / "var" / "multihost-logs")
    args = ap.parse_args(argv)
    if not 0.0 <= args.read_share <= 1.0:
        ap.error("--read-share is a share: 0 to 1")
    kill_at = args.kill_at if args.kill_at is not None else 0.4 * args.duration
    if not 0 < kill_at < args.duration:
        ap.error("--kill-at must fall inside the load")

    from tests.support.broker import rabbitmq_vhost
    from tests.support.s3 import CREDENTIALS

    # This process reads the run's own services only (Stack.start() points it at them; the broker
    # below): none of the caller's settings may send its probes elsewhere.
    for name in [k for k in os.environ if k.startswith("MODERATION_")] + ["DATABASE_URL", "REDIS_URL"]:
        os.environ.pop(name, None)
    old_term = signal.signal(signal.SIGTERM, _interrupt)  # cleanup runs on SIGTERM as on Ctrl-C
    images = UniqueImages(args.pool)
    run_id = f"multihost{int(time.time())}"
    extra = {
        "MODERATION_BLOB_URL": f"s3://{BUCKET}/{PREFIX}",
        **CREDENTIALS,
        "MODERATION_STALE_AFTER_S": str(args.stale_after),
        "MODERATION_RECONCILE_INTERVAL_S": str(args.reconcile_interval),
    }
    stack = MultiHostStack(concurrency=args.concurrency, extra_env=extra)
    code = 1
    try:
        with contextlib.ExitStack() as resources:
            # Unwound in reverse: the hosts stop first, then the vhost and the S3 server go, and
            # last the temporary root is removed (every log copied to --keep-logs first).
            resources.callback(stack.cleanup, args.keep_logs)
            stack.log(f"starting under {stack.root}")
            stack.logs.mkdir(parents=True, exist_ok=True)
            endpoints = resources.enter_context(s3_server(stack.logs / "s3.log", [OPS, *HOSTS]))
            broker = "private Redis (also the rate limits')"
            if args.broker == "rabbitmq":
                vhost = f"moderation-multihost-{os.getpid()}"
                url = resources.enter_context(rabbitmq_vhost(vhost))
                stack.extra_env["MODERATION_BROKER_URL"] = url
                os.environ["MODERATION_BROKER_URL"] = url  # Stack.control() (ping, inspect) reads Settings()
                broker = f"RabbitMQ vhost {vhost} (rate limits: private Redis)"
            resources.callback(stack.stop)
            stack.prepare(endpoints)
            stack.log(f"blobs init: {stack.init_blobs()}")
            stack.start()
            stack.log(
                f"up: PostgreSQL :{stack.pg.port}, broker {broker}, S3 {endpoints}, API :{stack.api_port}; "
                f"load {args.rate}/s for {args.duration:.0f} s ({args.read_share:.0%} read by an analyzer), "
                f"{KILLED} dies at +{kill_at:.0f} s"
            )
            code = run(stack, args, images, run_id, kill_at, broker, endpoints)
    except KeyboardInterrupt:
        print("interrupted: cleaned up", file=sys.stderr)
        code = 130
    finally:
        signal.signal(signal.SIGTERM, old_term)
    print(f"logs: {args.keep_logs}")
    return code


def run(
    stack: MultiHostStack,
    args: argparse.Namespace,
    images: UniqueImages,
    run_id: str,
    kill_at: float,
    broker: str,
    endpoints: dict[str, str],
) -> int:
    # Two seconds of submissions' worth of keep-alive connections (LoadGen reopens one idle for
    # longer than uvicorn keeps it).
    load = LoadGen(
        stack.api_port,
        stack.key,
        images,
        args.rate,
        run_id,
        connections=max(4, math.ceil(2 * args.rate)),
        fields=route_reads(args.read_share, args.analyze_s),
    )
    load.start()
    while not load.started_at:
        time.sleep(0.01)
    t0 = load.started_at
    fault = Fault("host-kill9", f"SIGKILL every process of host {KILLED}")
    time.sleep(max(0.0, t0 + kill_at - time.time()))
    fault.began = time.time()
    kill_worker_host(stack, fault)
    snapshot = in_progress(stack)
    fault.notes["db_in_progress"] = snapshot
    stack.log(
        f"{KILLED} killed at +{fault.at - t0:.1f} s: held {len(fault.notes['held'])} submission(s), "
        f"{len(fault.notes['started'])} started; tenant in progress {snapshot}"
    )
    time.sleep(max(0.0, t0 + args.duration - time.time()))
    t_load_end, summary, accepted = load.finish(stack.log)
    drain_started = time.monotonic()
    drained = until(lambda: active_count(stack) == 0 and undecided(stack, set(accepted)) == 0, args.drain, 1.0)
    drain_s = round(time.monotonic() - drain_started, 1)
    stack.log(f"drained: {drained} after {drain_s} s")

    # ---- decisions, audit
    data = fetch(stack)
    subs, stage_errors = submission_facts(stack)
    per_sub: Counter[str] = Counter(r.submission_id for r in data["decisions"])
    decided_by_id = {r.submission_id: r.decided_at.timestamp() for r in data["decisions"]}
    lost = sorted(sid for sid in accepted if per_sub.get(sid, 0) == 0)
    duplicates = sorted(sid for sid, n in per_sub.items() if n > 1)
    exactly_one = sum(1 for sid in accepted if per_sub.get(sid, 0) == 1)
    decided = sum(1 for sid in accepted if per_sub.get(sid, 0) >= 1)
    events = {(r.submission_id, r.action): int(r.n) for r in data["events"]}
    decided_events_bad = sorted(sid for sid in accepted if events.get((sid, "decided"), 0) != 1)
    missing_rows = sorted(set(accepted) - set(subs))
    chains = verify_chains(stack)
    chain_ok = bool(chains) and all(c["ok"] for c in chains.values())

    # ---- blobs: PUT by the api host, read over S3 by a worker host, nothing on local disk
    s3 = S3Log.read(stack.logs / "s3.log", BUCKET, PREFIX)
    in_bucket = bucket_keys(endpoints[OPS], stack.env())
    sha_of = {sid: subs[sid].sha256 for sid in accepted if sid in subs}
    not_put = sorted(sid for sid, sha in sha_of.items() if s3.puts[sha]["api"] == 0)
    not_in_bucket = sorted(sid for sid, sha in sha_of.items() if sha not in in_bucket)
    read_ids = sorted(sid for sid in sha_of if subs[sid].policy_id == READ_POLICY)
    control_ids = sorted(sid for sid in sha_of if subs[sid].policy_id != READ_POLICY)
    read_by: Counter[str] = Counter()
    not_read: list[str] = []
    stage_failed: list[str] = []
    for sid in read_ids:
        hosts = {h for h, n in s3.gets[sha_of[sid]].items() if n and h in WORKER_HOSTS}
        read_by.update(hosts)
        if not hosts:
            not_read.append(sid)
        if sid not in stage_errors or stage_errors[sid] is not None:
            stage_failed.append(sid)
    control_read = sum(1 for sid in control_ids if sum(s3.gets[sha_of[sid]].values()) > 0)
    gets_by_host = s3.get_hosts()
    local = stack.local_blob_files()
    local_count = sum(len(v) for v in local.values())
    kept = stack.host_files()
    trouble = stack.broker_trouble()
    wanted_read = args.read_share > 0 and len(accepted) > 0

    # ---- the kill
    held = list(fault.notes.get("held", {}))
    held_undecided = [sid for sid, status in fault.notes.get("held", {}).items() if status in UNDECIDED]
    held_decided_once = all(per_sub.get(sid, 0) == 1 for sid in held)
    held_done = [decided_by_id[sid] for sid in held_undecided if sid in decided_by_id]
    held_recovery = round(max(held_done) - fault.at, 1) if held_done else None
    held_attempts = {sid: subs[sid].attempts for sid in held_undecided if sid in subs}
    rec = recovery(fault, t0 + args.duration, decided_by_id, accepted, load.items)

    # ---- figures
    latency = latency_of(accepted, subs, decided_by_id)
    latencies = list(latency.values())
    lat_read = [latency[sid] for sid in read_ids if sid in latency]
    before = [v for sid, v in latency.items() if subs[sid].created_at.timestamp() < fault.at]
    after = [v for sid, v in latency.items() if subs[sid].created_at.timestamp() >= fault.at]
    by_window = latency_windows(latency, subs, t0, WINDOW_S)
    warm = [v for sid, v in latency.items() if subs[sid].created_at.timestamp() >= t0 + WARM_S]
    first = min((subs[sid].created_at.timestamp() for sid in accepted if sid in subs), default=t0)
    last = max((decided_by_id[sid] for sid in accepted if sid in decided_by_id), default=first)
    throughput = decided / (last - first) if last > first else 0.0
    during = sum(1 for sid in accepted if sid in decided_by_id and decided_by_id[sid] <= t0 + args.duration)

    internal = summary["outcomes"].get("500", 0)
    not_202 = {k: v for k, v in summary["outcomes"].items() if not k.startswith("202")}
    checks: dict[str, tuple[Any, bool]] = {
        "lost (accepted, no automated decision)": (len(lost), not lost),
        "duplicate automated decisions": (len(duplicates), not duplicates),
        "exactly one automated decision": (f"{exactly_one} of {len(accepted)}", exactly_one == len(accepted)),
        "exactly one `decided` audit event": (
            f"{len(accepted) - len(decided_events_bad)} of {len(accepted)}",
            not decided_events_bad,
        ),
        "accepted ids missing from the database": (len(missing_rows), not missing_rows),
        "audit chain verifies": (
            ", ".join(f"{t}: {'ok' if c['ok'] else 'BROKEN'} ({c['checked']} events)" for t, c in chains.items()),
            chain_ok,
        ),
        "blobs PUT to S3 by host api": (f"{len(sha_of) - len(not_put)} of {len(sha_of)}", not not_put),
        "blobs in the bucket": (f"{len(sha_of) - len(not_in_bucket)} of {len(sha_of)}", not not_in_bucket),
        "analysed images read over S3 by w1/w2": (
            f"{len(read_ids) - len(not_read)} of {len(read_ids)}",
            not not_read and (bool(read_ids) or not wanted_read),
        ),
        f"analysed images whose `{READ_STAGE}` stage ran": (
            f"{len(read_ids) - len(stage_failed)} of {len(read_ids)}",
            not stage_failed,
        ),
        "blob files on the hosts' disks": (local_count, local_count == 0),
        f"{KILLED}'s held items decided exactly once": (f"{len(held)} held", held_decided_once),
        "pipeline drained in time": (f"{drain_s} s", drained),
        "requests answered 500": (internal, internal == 0),
    }
    ok = all(passed for _, passed in checks.values())

    print()
    print(
        f"multihost: {args.duration:.0f} s at {args.rate}/s; hosts api (API, beat, callbacks), w1 and w2 (CPU worker, "
        f"prefork x{args.concurrency}); broker {broker}; {KILLED} SIGKILLed at +{fault.at - t0:.1f} s"
    )
    print(
        f"  sent {summary['sent']}, accepted (202) {summary['accepted']}, retried items {summary['retried_items']}, "
        f"gave up {summary['gave_up']}, refused {summary['refused']}; attempt outcomes {summary['outcomes']}"
    )
    print(f"  S3 GETs of blobs by host {dict(gets_by_host)}; failed blob calls {dict(s3.failed) or 'none'}")
    print(f"  what each host keeps on disk: {kept}")
    print(
        f"  latency p95 by {WINDOW_S:.0f}-s window of submission (+s: p95): "
        + ", ".join(f"{w['from_s']:.0f}: {w['p95']:.2f}" for w in by_window)
    )
    if trouble:
        counts = {h: len(v) for h, v in trouble.items()}
        print(f"  UNPLANNED broker trouble (lines in the hosts' logs): {counts}")
        for host, lines in trouble.items():
            print(f"    {host}: {lines[0]}")
    restarts = [f"+{e.at - t0:.0f} s {e.what}" for e in stack.events if "exited" in e.what]
    print(f"  supervisor: {restarts or 'no restarts'} ({KILLED} held down: a dead host)")
    print()
    width = max(len(k) for k in checks) + 2
    for name, (value, passed) in checks.items():
        print(f"{name:<{width}}{value!s:<48}{'ok' if passed else 'FAIL'}")

    def s(v: float | None, unit: str = " s") -> str:
        return "n/a" if v is None else f"{v:.1f}{unit}"

    rows = [
        (
            "load",
            f"{args.duration:.0f} s at {args.rate}/s, {args.read_share:.0%} through a {args.analyze_s} s analyzer",
        ),
        ("broker", broker),
        ("accepted (202)", str(len(accepted))),
        (
            "API attempts not answered 202 (retried)",
            f"{summary['attempts'] - summary['accepted']} of {summary['attempts']} {not_202 or ''}".strip(),
        ),
        ("decided", str(decided)),
        ("exactly one automated decision", f"{exactly_one} of {len(accepted)}"),
        ("duplicates", str(len(duplicates))),
        ("lost", str(len(lost))),
        ("audit chain", "verifies" if chain_ok else "BROKEN"),
        (
            "blobs PUT to S3 (host api) / in the bucket",
            f"{len(sha_of) - len(not_put)} / {len(sha_of) - len(not_in_bucket)}",
        ),
        (
            "analysed images read over S3 (GET by w1 / w2)",
            f"{len(read_ids) - len(not_read)} of {len(read_ids)} ({read_by['w1']} / {read_by['w2']})",
        ),
        ("hash-only images read by anyone (control)", f"{control_read} of {len(control_ids)}"),
        ("blob GETs by host api", str(gets_by_host.get("api", 0))),
        ("blob files on the hosts' disks", str(local_count)),
        (f"{KILLED} SIGKILLed at", f"+{fault.at - t0:.1f} s of the load (planned +{kill_at:.0f} s)"),
        (
            f"in flight on {KILLED} when it died",
            f"{len(held_undecided)} undecided of {len(held)} held ({len(fault.notes.get('started', []))} started); "
            f"tenant-wide queued/analyzing {sum(fault.notes['db_in_progress'].values())}",
        ),
        (
            f"{KILLED}'s items decided after the kill",
            f"{s(held_recovery)} (their attempts counted: {sorted(held_attempts.values())})",
        ),
        ("backlog recovery (all accepted before the kill decided)", s(rec["backlog_recovery_s"])),
        ("rate recovery (decided/s back to >= 50 %)", s(rec["rate_recovery_s"])),
        ("throughput (first submission to last decision)", f"{throughput:.1f} decided/s"),
        ("decided during the load", f"{during / args.duration:.1f}/s"),
        ("latency submission -> decision p50 / p95", f"{pct(latencies, 50):.2f} / {pct(latencies, 95):.2f} s"),
        ("  of analysed images p50 / p95", f"{pct(lat_read, 50):.2f} / {pct(lat_read, 95):.2f} s"),
        (f"  submitted after the first {WARM_S:.0f} s p50 / p95", f"{pct(warm, 50):.2f} / {pct(warm, 95):.2f} s"),
        (f"  submitted before / after {KILLED} died, p95", f"{pct(before, 95):.2f} / {pct(after, 95):.2f} s"),
        ("drain after the load", f"{drain_s} s"),
        (
            "unplanned broker trouble (log lines)",
            ", ".join(f"{h}: {len(v)}" for h, v in trouble.items()) or "none",
        ),
    ]
    print()
    print("| figure | value |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print()
    print(
        f"{'PASS' if ok else 'FAIL'}: lost {len(lost)}, duplicates {len(duplicates)}, chain "
        f"{'ok' if chain_ok else 'BROKEN'}, blobs read over S3 {len(read_ids) - len(not_read)}/{len(read_ids)}"
    )
    for label, ids in (
        ("lost", lost),
        ("duplicated", duplicates),
        ("not PUT", not_put),
        ("not read", not_read),
        ("stage failed", stage_failed),
    ):
        if ids:
            print(f"{label} (first 20): {ids[:20]}")
    if local_count:
        print(f"blob files on disk: {local}")

    result = {
        **run_header(args),
        "broker": broker,
        "hosts": {h: list(svcs) for h, svcs in HOSTS.items()},
        "load": summary,
        "load_seconds": round(t_load_end - t0, 1),
        "accepted": len(accepted),
        "decided": decided,
        "exactly_one": exactly_one,
        "duplicates": len(duplicates),
        "lost": len(lost),
        "chains": chains,
        "blobs": {
            "accepted_images": len(sha_of),
            "put_by_api": len(sha_of) - len(not_put),
            "in_bucket": len(sha_of) - len(not_in_bucket),
            "analysed": len(read_ids),
            "analysed_read_over_s3": len(read_ids) - len(not_read),
            "read_by_host": dict(read_by),
            "gets_by_host": dict(gets_by_host),
            "control_images": len(control_ids),
            "control_read": control_read,
            "failed_calls": dict(s3.failed),
            "local_blob_files": local,
            "host_files": kept,
        },
        "kill": {
            "host": KILLED,
            "at_s": round(fault.at - t0, 1),
            **fault.notes,
            "held_undecided": held_undecided,
            "held_attempts": held_attempts,
            "held_decided_after_s": held_recovery,
            **rec,
        },
        "throughput_per_s": round(throughput, 2),
        "decided_during_load_per_s": round(during / args.duration, 2),
        "latency_s": {
            "p50": round(pct(latencies, 50), 3),
            "p95": round(pct(latencies, 95), 3),
            "analysed_p50": round(pct(lat_read, 50), 3),
            "analysed_p95": round(pct(lat_read, 95), 3),
            "before_kill_p50": round(pct(before, 50), 3),
            "before_kill_p95": round(pct(before, 95), 3),
            "after_kill_p50": round(pct(after, 50), 3),
            "after_kill_p95": round(pct(after, 95), 3),
            "warm_p50": round(pct(warm, 50), 3),
            "warm_p95": round(pct(warm, 95), 3),
            "by_window": by_window,
        },
        "drain_s": drain_s,
        "broker_trouble": trouble,
        "checks": {k: {"value": str(v), "ok": p} for k, (v, p) in checks.items()},
        "events": [{"at_s": round(e.at - t0, 1), "what": e.what} for e in stack.events if e.at >= t0],
        "lost_ids": lost[:100],
        "duplicate_ids": duplicates[:100],
        "pass": ok,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"figures: {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
