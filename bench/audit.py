"""Auditor benchmark: exports and decision search on PostgreSQL.

One command: `python bench/audit.py` (PostgreSQL and Redis on this machine). It makes a scratch
database and seeds, in bulk, `--decisions` decisions (1,000,000 by default) over as many
submissions in one tenant (a mix of actions and categories, a tenth human), plus `--export`
(100,000) in a second tenant. Then, against the API (uvicorn, one process, as `moderation up`):

1. **search**: `GET /v1/audit/decisions` with `--searches` random filter combinations (time
   range, action, category, automated, reviewer) over the 1M tenant: p50/p95/p99 ms;
2. **export**: `GET /v1/audit/export?format=csv|jsonl|dsa` of the 100,000-decision tenant: rows/s
   and the API process's peak RSS against its idle RSS (sampled every 20 ms).

Figures to stdout and, with `--json`, to a file; record them in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import fresh_database, pct, run_header, start_api  # noqa: E402

BIG, SMALL = "bench-audit", "bench-export"
CATS = ("violence_gore", "hate", "spam", "scam_fraud", "sexual", "harassment", "privacy", "self_harm")
ACTIONS = ("allow", "allow", "allow", "block", "restrict", "review")


def seed(url: str, tenant: str, n: int, batch: int = 10_000) -> list[str]:
    """`n` submissions, each with a decision (and a human one for a tenth); returns an auditor key
    and reviewer key ids."""
    from sqlalchemy import create_engine, insert

    from moderation.access.keys import create_key
    from moderation.db.tables import decisions, submissions

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg2://"))
    with engine.begin() as conn:
        auditor = create_key(conn, tenant, ["auditor"])
        reviewers = [create_key(conn, tenant, ["moderator"]).split("_")[1] for _ in range(8)]
    rng = random.Random(tenant)
    start = datetime.now(UTC) - timedelta(days=60)
    step = timedelta(days=59) / max(n, 1)
    for lo in range(0, n, batch):
        subs, decs = [], []
        for i in range(lo, min(n, lo + batch)):
            sid = secrets.token_hex(16)
            at = start + step * i
            cat, action = rng.choice(CATS), rng.choice(ACTIONS)
            score = round(0.5 + rng.random() * 0.5, 3)
            subs.append(
                {
                    "id": sid,
                    "tenant_id": tenant,
                    "source": "http",
                    "sha256": secrets.token_hex(32),
                    "format": "JPEG",
                    "width": 1080,
                    "height": 1080,
                    "frames": 1,
                    "byte_size": 180_000,
                    "external_id": f"post-{i}",
                    "priority": "normal",
                    "policy_id": "default",
                    "status": "decided",
                    "attempts": 1,
                    "created_at": at,
                    "updated_at": at,
                    "decided_at": at,
                }
            )
            decs.append(
                {
                    "submission_id": sid,
                    "dedupe_key": "automated",
                    "action": action,
                    "categories": {cat: score},
                    "reasons": [{"code": "threshold", "category": cat, "score": score}],
                    "policy_id": "default",
                    "policy_version": "bench",
                    "automated": True,
                    "attempt": 1,
                    "decided_at": at,
                }
            )
            if i % 10 == 0:
                decs.append(
                    {
                        "submission_id": sid,
                        "dedupe_key": f"task:{secrets.token_hex(16)}",
                        "action": "block",
                        "categories": {cat: 1.0},
                        "reasons": [{"code": "human_review", "reason": "bench"}],
                        "policy_id": "default",
                        "policy_version": "bench",
                        "automated": False,
                        "attempt": 1,
                        "reviewer_id": rng.choice(reviewers),
                        "decided_at": at + timedelta(minutes=5),
                    }
                )
        with engine.begin() as conn:
            conn.execute(insert(submissions), subs)
            conn.execute(insert(decisions), decs)
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    engine.dispose()
    return [auditor, *reviewers]


def rss_mb(pid: int) -> float:
    p = psutil.Process(pid)
    return sum(c.memory_info().rss for c in [p, *p.children(recursive=True)]) / 2**20


def searches(base: str, key: str, reviewers: list[str], n: int) -> dict[str, Any]:
    rng = random.Random(3)
    times: list[float] = []
    now = datetime.now(UTC)
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        for _ in range(n):
            params: dict[str, Any] = {"limit": 100}
            if rng.random() < 0.7:
                since = now - timedelta(days=rng.randint(2, 59))
                params.update(since=since.isoformat(), until=(since + timedelta(days=rng.randint(1, 7))).isoformat())
            if rng.random() < 0.5:
                params["action"] = rng.choice(("allow", "block", "restrict", "review"))
            if rng.random() < 0.4:
                params["category"] = rng.choice(CATS)
            if rng.random() < 0.2:
                params["automated"] = "false"
            if rng.random() < 0.2:
                params["reviewer"] = rng.choice(reviewers)
            t0 = time.perf_counter()
            r = c.get("/v1/audit/decisions", params=params)
            times.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200, r.text
    return {"searches": n, "ms": {p: round(pct(times, p), 1) for p in (50, 95, 99)}}


def export(base: str, key: str, pid: int, fmt: str) -> dict[str, Any]:
    idle = rss_mb(pid)
    peak = [idle]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb(pid))
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    lines = size = 0
    t0 = time.perf_counter()
    with (
        httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=600) as c,
        c.stream("GET", "/v1/audit/export", params={"format": fmt}) as r,
    ):
        assert r.status_code == 200
        for chunk in r.iter_bytes():
            size += len(chunk)
            lines += chunk.count(b"\n")
    seconds = time.perf_counter() - t0
    done.set()
    return {
        "format": fmt,
        "lines": lines,
        "mb": round(size / 2**20, 1),
        "seconds": round(seconds, 1),
        "lines_per_s": round(lines / seconds),
        "rss_idle_mb": round(idle, 1),
        "rss_peak_mb": round(peak[0], 1),
        "rss_growth_mb": round(peak[0] - idle, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--decisions", type=int, default=1_000_000)
    ap.add_argument("--export", type=int, default=100_000)
    ap.add_argument("--searches", type=int, default=300)
    ap.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/moderation_bench_audit")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    ap.add_argument("--port", type=int, default=8079)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    header = run_header(args)
    admin = fresh_database(args.database)
    env = {
        **os.environ,
        "DATABASE_URL": args.database,
        "REDIS_URL": args.redis,
        "MODERATION_VAR_DIR": str(REPO / "var" / "bench-audit"),
        "PYTHONPATH": str(REPO),
    }
    os.environ.update({k: env[k] for k in ("DATABASE_URL", "REDIS_URL", "MODERATION_VAR_DIR")})
    from moderation.db.migrate import upgrade
    from moderation.settings import Settings

    upgrade(Settings())
    t = time.monotonic()
    big = seed(args.database, BIG, args.decisions)
    small = seed(args.database, SMALL, args.export)
    print(f"seeded {args.decisions} + {args.export} submissions in {time.monotonic() - t:.0f} s", flush=True)
    api = start_api(REPO, env, args.port)
    base = f"http://127.0.0.1:{args.port}"
    try:
        found = searches(base, big[0], big[1:], args.searches)
        print("search:", json.dumps(found), flush=True)
        exported = [export(base, small[0], api.pid, fmt) for fmt in ("csv", "jsonl", "dsa")]
        for e in exported:
            print("export:", json.dumps(e), flush=True)
    finally:
        api.terminate()
        api.wait(10)
    if args.json:
        args.json.write_text(json.dumps({**header, "search": found, "export": exported}, indent=2))
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {args.database.rsplit('/', 1)[1]}")


if __name__ == "__main__":
    main()
