"""Human review benchmark: moderators working the queue through the HTTP API, on PostgreSQL.

One command: `python bench/review.py` (PostgreSQL and Redis on this machine). It makes a scratch
database, seeds `--tasks` review tasks in one tenant (100,000 by default: submissions with their
findings, automated decisions and tasks, written in bulk the way the pipeline writes them),
starts the API (uvicorn, `--api-workers` processes), then:

1. **workflow**: `--moderators` threads (8) each loop `POST /v1/review/next` → `GET
   /v1/review/tasks/{id}` (the case) → `POST …/decision` for `--duration` seconds; prints
   decisions/s and each step's p50/p95/p99 (ms, measured by the client on localhost);
2. **case page**: the server time of the console's case page (`GET /console/tasks/{id}`, signed
   in) and of the JSON case, p50/p95/p99 over `--case-samples` tasks picked at random from the
   whole table, measured by the client on localhost (the server's own time plus < 1 ms).

Figures go to stdout and, with `--json`, to a file; record them in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import secrets
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import fresh_database, pct, run_header, start_api  # noqa: E402

TENANT = "bench-review"
CATEGORIES = ("violence_gore", "hate", "harassment", "spam", "sexual", "self_harm", "scam_fraud")


def seed(url: str, tasks: int, batch: int = 5000) -> list[str]:
    """`tasks` submissions in review, each with a finding, an automated `review` decision, a
    `routed_to_review` task; returns the moderators' keys (8 + 1 spare)."""
    from sqlalchemy import create_engine, insert

    from moderation.access.keys import create_key
    from moderation.db.tables import decisions, findings, review_tasks, submissions

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg2://"))
    with engine.begin() as conn:
        keys = [create_key(conn, TENANT, ["moderator"], label=f"bench moderator {i}") for i in range(9)]
    rng = random.Random(7)
    start = datetime.now(UTC) - timedelta(days=2)
    for lo in range(0, tasks, batch):
        subs, finds, decs, tks = [], [], [], []
        for i in range(lo, min(tasks, lo + batch)):
            sid = secrets.token_hex(16)
            at = start + timedelta(seconds=i * 1.5)
            cat = CATEGORIES[i % len(CATEGORIES)]
            score = round(0.5 + rng.random() * 0.2, 3)
            subs.append(
                {
                    "id": sid,
                    "tenant_id": TENANT,
                    "source": "http",
                    "sha256": secrets.token_hex(32),
                    "phash": secrets.token_hex(8),
                    "pdq": secrets.token_hex(32),
                    "format": "JPEG",
                    "width": 1080,
                    "height": 1080,
                    "frames": 1,
                    "byte_size": 180_000,
                    "caption": f"caption {i}",
                    "uploader_id": f"user-{rng.randrange(tasks // 20 + 1)}",
                    "priority": "normal",
                    "policy_id": "default",
                    "status": "in_review",
                    "attempts": 1,
                    "created_at": at,
                    "updated_at": at,
                    "decided_at": at,
                }
            )
            body = {
                "analyzer": "lite",
                "version": "bench",
                "stage": "lite",
                "scores": {cat: score},
                "confidence": 0.9,
                "rationale": {cat: f"text says something {cat}"},
                "flags": {"text_in_image": True},
                "ocr_text": f"some text about {cat}",
            }
            finds.append(
                {
                    "submission_id": sid,
                    "stage": "lite",
                    "analyzer": "lite",
                    "analyzer_version": "bench",
                    "body": body,
                    "created_at": at,
                }
            )
            decs.append(
                {
                    "submission_id": sid,
                    "dedupe_key": "automated",
                    "action": "review",
                    "categories": {cat: score},
                    "reasons": [{"code": "threshold", "category": cat, "score": score, "threshold": 0.5}],
                    "policy_id": "default",
                    "policy_version": "bench",
                    "automated": True,
                    "attempt": 1,
                    "decided_at": at,
                }
            )
            tks.append(
                {
                    "id": secrets.token_hex(16),
                    "submission_id": sid,
                    "tenant_id": TENANT,
                    "dedupe_key": "automated",
                    "kind": "review",
                    "queue": "default",
                    "reason": "threshold",
                    "status": "open",
                    "priority": 20 + round((1 - score) * 9) + 5,
                    "restricted": False,
                    "graphic": cat in ("violence_gore", "sexual", "self_harm"),
                    "category": cat,
                    "policy_id": "default",
                    "golden": False,
                    "breached": False,
                    "created_at": at,
                    "due_at": at + timedelta(days=1),
                }
            )
        with engine.begin() as conn:
            conn.execute(insert(submissions), subs)
            conn.execute(insert(findings), finds)
            conn.execute(insert(decisions), decs)
            conn.execute(insert(review_tasks), tks)
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    engine.dispose()
    return keys


def workflow(base: str, keys: list[str], duration: float) -> dict[str, Any]:
    steps: dict[str, list[float]] = {"next": [], "case": [], "decision": []}
    decided = [0]
    errors: list[str] = []
    lock = threading.Lock()
    end = time.monotonic() + duration

    def moderator(key: str) -> None:
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=base, headers=headers, timeout=30) as c:
            while time.monotonic() < end:
                t0 = time.perf_counter()
                r = c.post("/v1/review/next")
                t1 = time.perf_counter()
                if r.status_code != 200:
                    errors.append(f"next {r.status_code}")
                    return
                task = r.json()
                case = c.get(f"/v1/review/tasks/{task['id']}")
                t2 = time.perf_counter()
                body = {"claim_token": task["claim"]["token"], "action": "allow", "reason": "benign on review"}
                d = c.post(f"/v1/review/tasks/{task['id']}/decision", json=body)
                t3 = time.perf_counter()
                if case.status_code != 200 or d.status_code != 200:
                    errors.append(f"case {case.status_code} decision {d.status_code}")
                    continue
                with lock:
                    steps["next"].append((t1 - t0) * 1000)
                    steps["case"].append((t2 - t1) * 1000)
                    steps["decision"].append((t3 - t2) * 1000)
                    decided[0] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=moderator, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.monotonic() - started
    return {
        "moderators": len(keys),
        "seconds": round(seconds, 1),
        "decided": decided[0],
        "decisions_per_s": round(decided[0] / seconds, 1),
        "errors": errors[:5],
        "ms": {k: {p: round(pct(v, p), 1) for p in (50, 95, 99)} for k, v in steps.items()},
    }


def case_pages(base: str, key: str, url: str, samples: int) -> dict[str, Any]:
    """p50/p95/p99 of the console's case page and the JSON case, over tasks of the whole table."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg2://"))
    with engine.connect() as conn:
        ids = [
            r[0] for r in conn.execute(text("SELECT id FROM review_tasks ORDER BY random() LIMIT :n"), {"n": samples})
        ]
        total = conn.execute(text("SELECT count(*) FROM review_tasks")).scalar()
    engine.dispose()
    out: dict[str, Any] = {"tasks_in_table": total, "samples": len(ids)}
    with httpx.Client(base_url=base, timeout=30) as c:
        page = c.get("/console/sign-in")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert csrf, "no sign-in form"
        r = c.post("/console/sign-in", data={"key": key, "csrf": csrf.group(1), "next": "/console"})
        assert r.status_code in (200, 303), r.status_code
        html, api = [], []
        for task_id in ids:
            t0 = time.perf_counter()
            p = c.get(f"/console/tasks/{task_id}")
            t1 = time.perf_counter()
            j = c.get(f"/v1/review/tasks/{task_id}", headers={"Authorization": f"Bearer {key}"})
            t2 = time.perf_counter()
            assert p.status_code == 200 and j.status_code == 200, (p.status_code, j.status_code)
            html.append((t1 - t0) * 1000)
            api.append((t2 - t1) * 1000)
    out["console_case_page_ms"] = {p: round(pct(html, p), 1) for p in (50, 95, 99)}
    out["api_case_ms"] = {p: round(pct(api, p), 1) for p in (50, 95, 99)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--moderators", type=int, default=8)
    ap.add_argument("--duration", type=float, default=30)
    ap.add_argument("--case-samples", type=int, default=300)
    ap.add_argument("--api-workers", type=int, default=2)
    ap.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/moderation_bench_review")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    ap.add_argument("--port", type=int, default=8078)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    header = run_header(args)
    admin = fresh_database(args.database)
    env = {
        **os.environ,
        "DATABASE_URL": args.database,
        "REDIS_URL": args.redis,
        "MODERATION_VAR_DIR": str(REPO / "var" / "bench-review"),
        "MODERATION_GOLDEN_RATE": "0",
        "PYTHONPATH": str(REPO),
    }
    os.environ.update({k: env[k] for k in ("DATABASE_URL", "REDIS_URL", "MODERATION_VAR_DIR")})
    from moderation.db.migrate import upgrade
    from moderation.settings import Settings

    upgrade(Settings())
    t = time.monotonic()
    keys = seed(args.database, args.tasks)
    print(f"seeded {args.tasks} review tasks in {time.monotonic() - t:.0f} s", flush=True)
    api = start_api(REPO, env, args.port, args.api_workers)
    base = f"http://127.0.0.1:{args.port}"
    try:
        pages = case_pages(base, keys[-1], args.database, args.case_samples)
        print("case page:", json.dumps(pages), flush=True)
        flow = workflow(base, keys[: args.moderators], args.duration)
        print("workflow:", json.dumps(flow), flush=True)
    finally:
        api.terminate()
        api.wait(10)
    result = {**header, "case_page": pages, "workflow": flow}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {args.database.rsplit('/', 1)[1]}")


if __name__ == "__main__":
    main()
