"""Pipeline benchmark: N submissions through the real API, Redis, Celery workers and PostgreSQL.

    python bench/pipeline.py                      # defaults below; prints the figures
    python bench/pipeline.py --duration 60 --rate 100 --concurrency 32

    python bench/pipeline.py --policy default --duration 30 --concurrency 4 --rate 4 \
        --latency-duration 30 --worker-procs 2          # the lite cascade (OCR, text risk, nudity)
    python bench/pipeline.py --blobs s3                 # blobs in a local S3-protocol server (moto)

Phases (hash-only policy unless --policy, distinct 1080x1080 JPEGs of 150-250 KB):
  1. sustained: closed loop at `--concurrency` for `--duration` s: accepted/s and decided/s.
  2. latency:   open loop at `--rate` submissions/s for `--latency-duration` s: p50/p95/p99 of
                accept -> decision (the submission's created_at to its decision's decided_at, both
                stamped by the pipeline itself).
RSS of the API and worker process trees is sampled throughout. Images are generated once and
cached under var/bench-images. The load generator is a minimal keep-alive HTTP/1.1 client on
asyncio, so that it takes as little of the machine's 2 cores as possible.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent
POLICY = "hash-only"  # of phases 1-2 (--policy)
sys.path.insert(0, str(REPO))

from bench.common import fresh_database, pct  # noqa: E402

# ---------------------------------------------------------------- images


def make_jpeg(seed: int) -> bytes:
    """A distinct 1080x1080 photo-like JPEG of about 150-250 KB."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)
    im = Image.fromarray(low).resize((1080, 1080), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(6, 16))):
        x0, y0 = (int(v) for v in rng.integers(0, 1000, 2))
        x1, y1 = x0 + int(rng.integers(40, 500)), y0 + int(rng.integers(40, 500))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
    arr = np.asarray(im, dtype=np.int16) + rng.integers(-7, 8, (1080, 1080, 3), dtype=np.int16)
    im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    quality = 80
    for _ in range(6):
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
        size = buf.tell()
        if size < 150_000:
            quality += 5
        elif size > 250_000:
            quality -= 8
        else:
            break
    return buf.getvalue()


def image_set(n: int, cache: Path) -> list[Path]:
    cache.mkdir(parents=True, exist_ok=True)
    paths = [cache / f"{i:06d}.jpg" for i in range(n)]
    missing = [i for i, p in enumerate(paths) if not p.exists()]
    if missing:
        print(f"generating {len(missing)} distinct 1080x1080 JPEGs into {cache} (cached for next runs)...", flush=True)
        with ProcessPoolExecutor(os.cpu_count() or 2) as pool:
            for i, data in zip(missing, pool.map(make_jpeg, missing, chunksize=32), strict=True):
                paths[i].write_bytes(data)
    return paths


# ---------------------------------------------------------------- load generator


def multipart(data: bytes, fields: dict[str, str]) -> tuple[bytes, str]:
    boundary = f"bench{random.getrandbits(64):016x}"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode()
        + data
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), boundary


class HttpConn:
    def __init__(self, host: str, port: int, key: str) -> None:
        self.host, self.port, self.key = host, port, key
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, data: bytes, fields: dict[str, str]) -> tuple[int, bytes]:
        try:
            return await self._post(data, fields)
        except (ConnectionError, IndexError, asyncio.IncompleteReadError):
            # The server closed an idle keep-alive connection (at low rates): reconnect, once.
            if self.writer is not None:
                self.writer.close()
            self.reader = self.writer = None
            return await self._post(data, fields)

    async def _post(self, data: bytes, fields: dict[str, str]) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        body, boundary = multipart(data, fields)
        head = (
            f"POST /v1/submissions HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {self.key}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        await self.writer.drain()
        assert self.reader is not None
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode().partition(":")
            if name.lower() == "content-length":
                length = int(value)
        payload = await self.reader.readexactly(length)
        return status, payload


@dataclass
class Run:
    accepted: list[tuple[str, float]] = field(default_factory=list)  # (id, t_accept)
    errors: dict[int, int] = field(default_factory=dict)


async def closed_loop(
    host: str, port: int, key: str, images: list[Path], start: int, duration: float, concurrency: int
) -> tuple[Run, int]:
    run, nxt = Run(), start
    deadline = time.monotonic() + duration

    async def one_conn() -> None:
        nonlocal nxt
        conn = HttpConn(host, port, key)
        while time.monotonic() < deadline and nxt < len(images):
            i = nxt
            nxt += 1
            status, payload = await conn.post(images[i].read_bytes(), {"policy": POLICY, "external_id": f"b{i}"})
            if status == 202:
                run.accepted.append((json.loads(payload)["id"], time.time()))
            else:
                run.errors[status] = run.errors.get(status, 0) + 1

    await asyncio.gather(*(one_conn() for _ in range(concurrency)))
    return run, nxt


async def open_loop(
    host: str,
    port: int,
    key: str,
    images: list[Path],
    start: int,
    duration: float,
    rate: float,
    fields: dict[str, str] | None = None,
    same_image: Path | None = None,
) -> tuple[Run, int]:
    run = Run()
    pool: asyncio.Queue[HttpConn] = asyncio.Queue()
    for _ in range(64):
        pool.put_nowait(HttpConn(host, port, key))
    total = int(duration * rate)
    t0 = time.monotonic()

    async def fire(i: int) -> None:
        conn = await pool.get()
        try:
            data = (same_image or images[i]).read_bytes()
            form = fields if fields is not None else {"policy": POLICY, "external_id": f"b{i}"}
            status, payload = await conn.post(data, form)
        finally:
            pool.put_nowait(conn)
        if status == 202:
            run.accepted.append((json.loads(payload)["id"], time.time()))
        else:
            run.errors[status] = run.errors.get(status, 0) + 1

    tasks = []
    for n in range(total):
        delay = t0 + n / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire(start + n)))
    await asyncio.gather(*tasks)
    return run, start + total


# ---------------------------------------------------------------- measurement


class RssSampler(threading.Thread):
    def __init__(self, procs: dict[str, subprocess.Popen[bytes]]) -> None:
        super().__init__(daemon=True)
        self.procs = procs
        self.peak: dict[str, float] = dict.fromkeys(procs, 0.0)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            for name, p in self.procs.items():
                try:
                    root = psutil.Process(p.pid)
                    rss = sum(c.memory_info().rss for c in [root, *root.children(recursive=True)])
                except psutil.Error:
                    continue
                self.peak[name] = max(self.peak[name], rss / 2**20)


def policies_dir(var: Path) -> Path:
    """The shipped policies plus `cached`: banks, verdict cache, then a test analyzer whose scores
    come from the caption (tests/support/analyzers.py), so that a repeat is a cache hit."""
    import shutil

    d = var / "policies"
    d.mkdir(parents=True, exist_ok=True)
    for f in (REPO / "policies").glob("*.yaml"):
        shutil.copy(f, d / f.name)
    (d / "cached.yaml").write_text(
        "id: cached\nextends: default\nqa_sample_rate: 0.0\ncascade:\n  - stage: banks\n  - stage: cache\n"
        "  - stage: caption\n    analyzer: tests.support.analyzers:CaptionAnalyzer\n    queue: analyze.cpu\n"
    )
    return d


def cpu_seconds(procs: dict[str, subprocess.Popen[bytes]]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each process tree, PostgreSQL, Redis and this process."""
    out: dict[str, float] = {}

    def tree(p: psutil.Process) -> float:
        total = 0.0
        for c in [p, *p.children(recursive=True)]:
            try:
                t = c.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total

    for name, p in procs.items():
        try:
            out[name] = tree(psutil.Process(p.pid))
        except psutil.Error:
            out[name] = 0.0
    for label, names in (("postgres", ("postgres", "postmaster")), ("redis", ("redis-server",))):
        total = 0.0
        for p in psutil.process_iter(["name"]):
            if p.info["name"] in names:
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    pass
        out[label] = total
    me = psutil.Process().cpu_times()
    out["loadgen"] = me.user + me.system
    return out


def decided_stats(engine: Any, ids: list[str]) -> list[tuple[float, float]]:
    """(created_at, decided_at) epoch seconds of the decided ones among `ids`."""
    from sqlalchemy import select

    from moderation.db.tables import decisions, submissions

    out: list[tuple[float, float]] = []
    with engine.connect() as conn:
        for k in range(0, len(ids), 5000):
            chunk = ids[k : k + 5000]
            rows = conn.execute(
                select(submissions.c.created_at, decisions.c.decided_at)
                .join(decisions, decisions.c.submission_id == submissions.c.id)
                .where(submissions.c.id.in_(chunk))
            ).all()
            out += [(r.created_at.timestamp(), r.decided_at.timestamp()) for r in rows]
    return out


def wait_decided(engine: Any, ids: list[str], timeout: float) -> list[tuple[float, float]]:
    deadline = time.monotonic() + timeout
    while True:
        got = decided_stats(engine, ids)
        if len(got) >= len(ids) or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


_LOGS: list[Any] = []


def log_file(path: Path) -> Any:
    """A log file for a child process, closed at exit."""
    handle = path.open("wb")
    _LOGS.append(handle)
    return handle


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=60, help="sustained phase seconds")
    ap.add_argument("--concurrency", type=int, default=24, help="sustained phase connections")
    ap.add_argument("--rate", type=float, default=100, help="latency phase submissions/s")
    ap.add_argument("--latency-duration", type=float, default=30)
    ap.add_argument("--api-workers", type=int, default=2)
    ap.add_argument("--worker-procs", type=int, default=1, help="Celery worker processes")
    ap.add_argument("--worker-concurrency", type=int, default=1, help="pool size per worker process")
    ap.add_argument("--pool", default="solo", help="Celery pool (solo, prefork, threads)")
    ap.add_argument("--images", type=int, default=0, help="distinct images (default: enough for the run)")
    ap.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/moderation_bench")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    ap.add_argument("--port", type=int, default=8077)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument(
        "--blobs",
        choices=("file", "s3"),
        default="file",
        help="blob store: the filesystem, or a local S3-protocol server (moto, its CPU counted as `s3`)",
    )
    ap.add_argument(
        "--policy", default="hash-only", help="policy of phases 1-2: hash-only (default) or default (the lite cascade)"
    )
    args = ap.parse_args()
    global POLICY
    POLICY = args.policy

    import redis

    var = REPO / "var" / "bench"
    import shutil

    shutil.rmtree(var, ignore_errors=True)
    var.mkdir(parents=True, exist_ok=True)
    n_images = args.images or int(args.duration * 320 + args.latency_duration * args.rate + 500)
    images = image_set(n_images, REPO / "var" / "bench-images")
    sizes = [p.stat().st_size for p in images[:200]]
    print(f"images: {len(images)} distinct 1080x1080 JPEGs, {min(sizes) // 1000}-{max(sizes) // 1000} KB")

    fresh_database(args.database).close()
    redis.Redis.from_url(args.redis).flushdb()
    logs = var / "logs"
    logs.mkdir(exist_ok=True)
    services = contextlib.ExitStack()
    service_procs: dict[str, subprocess.Popen[bytes]] = {}
    blob_env: dict[str, str] = {}
    if args.blobs == "s3":
        from devtools.s3server import s3_env, s3_server

        blob_env = s3_env(services.enter_context(s3_server(logs / "s3.log", service_procs)), "moderation-bench")

    env = {
        **os.environ,
        "DATABASE_URL": args.database,
        "REDIS_URL": args.redis,
        "MODERATION_VAR_DIR": str(var),
        "PYTHONPATH": str(REPO),
        "MODERATION_RECONCILE_INTERVAL_S": "30",
        "MODERATION_POLICIES_DIR": str(policies_dir(var)),
        **blob_env,
    }
    os.environ.update({k: env[k] for k in ("DATABASE_URL", "REDIS_URL", "MODERATION_VAR_DIR", *blob_env)})
    from moderation.access.keys import create_key
    from moderation.db.engine import make_engine
    from moderation.db.migrate import upgrade
    from moderation.settings import Settings

    settings = Settings()
    upgrade(settings)
    from moderation.intake.blobs import open_blob_store

    print("blobs:", "; ".join(open_blob_store(settings).init()))
    engine = make_engine(settings)
    with engine.begin() as conn:
        key = create_key(conn, "bench", ["submitter"])

    py = sys.executable
    procs: dict[str, subprocess.Popen[bytes]] = dict(service_procs)
    procs["api"] = subprocess.Popen(
        [py, "-m", "moderation.cli", "api", "--port", str(args.port), "--workers", str(args.api_workers)],
        env=env,
        stdout=log_file(logs / "api.log"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    for w in range(args.worker_procs):
        procs[f"worker{w}"] = subprocess.Popen(
            [
                py,
                "-m",
                "celery",
                "-A",
                "workers.app",
                "worker",
                "-Q",
                "ingest,decide,maintenance,analyze.cpu",
                "-P",
                args.pool,
                "-c",
                str(args.worker_concurrency),
                "-n",
                f"bench{w}@%h",
                "--loglevel",
                "warning",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            env=env,
            stdout=log_file(logs / f"worker{w}.log"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    sampler = RssSampler(procs)
    try:
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{args.port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("API did not become ready")
            time.sleep(0.3)
        time.sleep(3)  # workers connect
        sampler.start()

        # warm-up
        warm, nxt = asyncio.run(closed_loop("127.0.0.1", args.port, key, images, 0, 5, 8))
        wait_decided(engine, [i for i, _ in warm.accepted], 60)

        # 1. sustained throughput
        t0 = time.time()
        cpu0 = cpu_seconds(procs)
        run, nxt = asyncio.run(closed_loop("127.0.0.1", args.port, key, images, nxt, args.duration, args.concurrency))
        t1 = time.time()
        ids = [i for i, _ in run.accepted]
        decided_in_window = [d for c, d in decided_stats(engine, ids) if d <= t1]
        drained = wait_decided(engine, ids, 300)
        cpu1 = cpu_seconds(procs)
        cpu_ms = {k: round(1000 * (cpu1[k] - cpu0.get(k, 0.0)) / max(1, len(ids)), 2) for k in cpu1}
        t_drained = max((d for _, d in drained), default=t1)
        sustained = {
            "seconds": round(t1 - t0, 1),
            "accepted": len(ids),
            "accepted_per_s": round(len(ids) / (t1 - t0), 1),
            "decided_in_window": len(decided_in_window),
            "decided_per_s_in_window": round(len(decided_in_window) / (t1 - t0), 1),
            "decided_per_s_to_drain": round(len(drained) / (t_drained - t0), 1),
            "all_decided": len(drained) == len(ids),
            "backlog_drain_s": round(max(0.0, t_drained - t1), 1),
            "errors": run.errors,
            "latency_ms": {p: round(1000 * pct([d - c for c, d in drained], p), 1) for p in (50, 95, 99)},
            "cpu_ms_per_submission": cpu_ms,
        }
        print("sustained:", json.dumps(sustained))

        # 2. latency at a fixed rate
        time.sleep(2)
        run2, nxt = asyncio.run(open_loop("127.0.0.1", args.port, key, images, nxt, args.latency_duration, args.rate))
        ids2 = [i for i, _ in run2.accepted]
        got = wait_decided(engine, ids2, 300)
        lat = [d - c for c, d in got]
        latency = {
            "rate": args.rate,
            "seconds": args.latency_duration,
            "accepted": len(ids2),
            "decided": len(got),
            "errors": run2.errors,
            "p50_ms": round(1000 * pct(lat, 50), 1),
            "p95_ms": round(1000 * pct(lat, 95), 1),
            "p99_ms": round(1000 * pct(lat, 99), 1),
            "max_ms": round(1000 * max(lat), 1) if lat else None,
            "mean_ms": round(1000 * statistics.fmean(lat), 1) if lat else None,
        }
        print("latency:", json.dumps(latency))

        # 3. verdict-cache hits: the same image and caption again, at a low rate
        hit_fields = {"policy": "cached", "caption": "spam=0.2"}
        first, _ = asyncio.run(open_loop("127.0.0.1", args.port, key, images, nxt, 1, 1, hit_fields, images[nxt]))
        wait_decided(engine, [i for i, _ in first.accepted], 60)
        run3, _ = asyncio.run(open_loop("127.0.0.1", args.port, key, images, nxt, 15, 20, hit_fields, images[nxt]))
        got3 = wait_decided(engine, [i for i, _ in run3.accepted], 120)
        lat3 = [d - c for c, d in got3]
        cache_hits = {
            "rate": 20,
            "decided": len(got3),
            "p50_ms": round(1000 * pct(lat3, 50), 1),
            "p95_ms": round(1000 * pct(lat3, 95), 1),
            "p99_ms": round(1000 * pct(lat3, 99), 1),
        }
        print("cache hits:", json.dumps(cache_hits))
    finally:
        sampler.stop.set()
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        services.close()
    rss = {k: round(v, 1) for k, v in sampler.peak.items()}
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.node()} {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
        f"{platform.processor() or platform.machine()}",
        "config": {k: v for k, v in vars(args).items() if k not in ("json",)},
        "sustained": sustained,
        "latency": latency,
        "cache_hits": cache_hits,
        "peak_rss_mb": rss,
    }
    print("peak RSS (MB):", json.dumps(rss))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
