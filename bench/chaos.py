"""Chaos suite (issue 10): faults under steady load; nothing accepted is lost or decided twice.

    .venv/bin/python bench/chaos.py                     # ~5 minutes of load, then drain and verify
    .venv/bin/python bench/chaos.py --duration 150 --rate 20

Runs on a private stack (bench/_stack.py: its own PostgreSQL cluster and Redis on free ports,
data under a temporary directory; the machine's shared services are never touched): migrations,
the API, two CPU workers (prefork, 2 children each), the callbacks worker and beat (the
reconciler), supervised the way `moderation up` does it (a child that exits is restarted after
1 s). A load generator sends hash-only submissions at `--rate`/s, each with unique bytes and a
unique external_id; a request that gets a 5xx, a 429, a timeout or a connection error is retried
with the same external_id (the API is idempotent on it), and only a 202 counts as accepted.

After a warm-up the faults come one after another, evenly spaced:
  a. worker-kill9      SIGKILL a CPU worker's process group inside an ingest batch (attempt counted,
                       no decision yet: found with `inspect active`, SIGSTOP and a look at the rows)
  b. broker-flushall   FLUSHALL on the broker Redis while ~2 s of submissions wait in `ingest` (the
                       workers paused meanwhile, as in a backlog): every queued message is lost
  c. redis-restart     SIGTERM redis-server, 1 s down, start it again (AOF: queues survive)
  d. postgres-restart  pg_ctl restart -m fast: every session cut, open transactions rolled back
  e. api-kill9         SIGKILL the API; the supervisor restarts it
Then the load stops, the pipeline drains (bounded by --drain), and the checks run on the database:
every accepted submission has exactly one automated decision (0 lost, 0 duplicates), every
submission row is decided, one row per external_id, exactly one `received` and one `decided`
audit event per submission, the audit chain of every tenant verifies, and no request was answered
500 (while a service is down the API must say 503).

Recovery, per fault (t = the moment the fault was injected; 1-s buckets of decisions.decided_at):
  rate recovery     time until the decided rate is back to >= 50 % of its pre-fault rate (mean of
                    the 20 s before) and stays there for 5 consecutive seconds; 0: no dip.
  backlog recovery  time until every submission accepted (202) before the fault is decided: what
                    the fault took from the queues comes back through redelivery or the reconciler.
  first decision    time to the first decision after the fault.
  API errors        attempts that got no 202 (5xx, connection error, timeout) among those started
                    between this fault and the next, and how long after the fault the last one ended.

Exit status 0 when every check passes, 1 otherwise. Figures: bench/results/chaos.json; the
processes' logs: var/chaos-logs/.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stack import REPO, TENANT, LoadGen, Stack, UniqueImages, queue_depths, until
from bench.common import run_header

RESULTS = REPO / "bench" / "results"
PRE_WINDOW_S = 20
STAY_S = 5


@dataclass
class Fault:
    name: str
    description: str
    at: float = 0.0  # time.time() when injected
    began: float = 0.0  # time.time() when its preparation began (the next fault's horizon ends here)
    took_s: float = 0.0  # how long the injection itself ran (a restart's downtime)
    notes: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- the faults


def in_flight(stack: Stack, ids: list[str]) -> list[str]:
    """Those of `ids` whose delivery has started (attempt counted: `analyzing`) and not decided."""
    from sqlalchemy import text

    if not ids:
        return []
    with stack.engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT s.id FROM submissions s WHERE s.id = ANY(:ids) AND s.status = 'analyzing' "
                    "AND NOT EXISTS (SELECT 1 FROM decisions d WHERE d.submission_id = s.id AND d.automated)"
                ),
                {"ids": ids},
            ).scalars()
        )


def kill_worker(stack: Stack, fault: Fault) -> None:
    """SIGKILL worker1's whole group in the middle of an ingest batch.

    A hash-only batch takes milliseconds, so a kill aimed from outside usually lands between
    batches. To land inside one: ask the worker what it executes (`inspect active`), freeze its
    group (SIGSTOP), and read the database: when a submission of that batch has its attempt
    counted and no decision yet, the batch is in progress and SIGKILL ends it exactly there (a
    frozen process runs no further instruction); otherwise resume it (SIGCONT) and try again.
    """
    node = stack.services["worker1"].node
    assert node is not None
    batch: list[str] = []
    interrupted: list[str] = []
    tries = 0
    deadline = time.monotonic() + 60
    while not interrupted and time.monotonic() < deadline:
        active = stack.active_tasks(node, timeout=0.5)
        batch = [sid for t in active if t.get("name") == "moderation.ingest" for sid in (t.get("args") or [[]])[0]]
        if not batch:
            continue
        stack.signal_group("worker1", signal.SIGSTOP)
        tries += 1
        interrupted = in_flight(stack, batch)
        if not interrupted:
            stack.signal_group("worker1", signal.SIGCONT)
    fault.at = time.time()
    pid = stack.kill9("worker1")
    fault.notes = {
        "pid": pid,
        "mid_batch": bool(interrupted),
        "tries": tries,
        "batch_submissions": batch if interrupted else [],
        "interrupted": interrupted,
    }


def queued(client: Any) -> int:
    """Messages waiting in `ingest` (every priority list)."""
    from moderation.vocab import Priority

    keys = ["ingest" if p.broker == 0 else f"ingest\x06\x16{p.broker}" for p in Priority]
    try:
        return sum(int(client.llen(k)) for k in keys)
    except Exception:
        return 0


def flush_broker(stack: Stack, fault: Fault) -> None:
    """FLUSHALL while messages wait in `ingest`. At a steady rate the workers keep that queue
    empty, so they are paused (SIGSTOP) until a few seconds of submissions are queued, as in a
    backlog; then the broker loses everything (queues, unacked messages, kombu's bindings) and
    the workers resume. Those submissions come back only through the reconciler."""
    client = stack.redis.client()
    workers = [n for n in stack.services if n.startswith("worker")]
    for name in workers:
        stack.signal_group(name, signal.SIGSTOP)
    deadline = time.monotonic() + 5
    while queued(client) < 60 and time.monotonic() < deadline:
        time.sleep(0.05)
    fault.notes["queued_before"] = queue_depths(client)
    fault.at = time.time()
    client.flushall()
    for name in workers:
        stack.signal_group(name, signal.SIGCONT)


def restart_redis(stack: Stack, fault: Fault) -> None:
    fault.notes["queued_before"] = queue_depths(stack.redis.client())
    fault.at = time.time()
    stack.redis.restart(down_s=1.0)
    fault.notes["queued_after"] = queue_depths(stack.redis.client())


def restart_postgres(stack: Stack, fault: Fault) -> None:
    fault.at = time.time()
    stack.pg.restart()


def kill_api(stack: Stack, fault: Fault) -> None:
    fault.at = time.time()
    fault.notes["pid"] = stack.kill9("api")
    time.sleep(0.5)
    try:
        stack.wait_api(60)
        fault.notes["api_ready_after_s"] = round(time.time() - fault.at, 2)
    except RuntimeError as exc:
        fault.notes["api_ready_after_s"] = None
        fault.notes["error"] = str(exc)


FAULTS: list[tuple[str, str, Callable[[Stack, Fault], None]]] = [
    ("worker-kill9", "kill -9 a CPU worker mid-batch", kill_worker),
    ("broker-flushall", "FLUSHALL the broker Redis", flush_broker),
    ("redis-restart", "restart Redis", restart_redis),
    ("postgres-restart", "pg_ctl restart -m fast", restart_postgres),
    ("api-kill9", "kill -9 the API, supervisor restarts it", kill_api),
]


# ---------------------------------------------------------------- checks


def fetch(stack: Stack) -> dict[str, Any]:
    """Everything the checks need, read from the database as its owner."""
    from sqlalchemy import text

    with stack.engine.connect() as conn:
        subs = conn.execute(
            text("SELECT id, external_id, status, attempts FROM submissions WHERE tenant_id = :t"), {"t": TENANT}
        ).all()
        decisions = conn.execute(
            text(
                "SELECT d.submission_id, d.action, d.decided_at, d.dedupe_key FROM decisions d "
                "JOIN submissions s ON s.id = d.submission_id WHERE s.tenant_id = :t AND d.automated"
            ),
            {"t": TENANT},
        ).all()
        events = conn.execute(
            text(
                "SELECT submission_id, action, count(*) AS n FROM audit_events WHERE tenant_id = :t "
                "AND action IN ('received', 'decided') GROUP BY submission_id, action"
            ),
            {"t": TENANT},
        ).all()
        dead = conn.execute(text("SELECT task, error FROM dead_letters")).all()
    return {"subs": subs, "decisions": decisions, "events": events, "dead": dead}


def active_count(stack: Stack) -> int:
    from sqlalchemy import text

    with stack.engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM submissions WHERE tenant_id = :t AND status IN ('queued', 'analyzing')"),
                {"t": TENANT},
            ).scalar()
            or 0
        )


def undecided(stack: Stack, ids: set[str]) -> int:
    from sqlalchemy import text

    with stack.engine.connect() as conn:
        have = set(
            conn.execute(
                text(
                    "SELECT DISTINCT d.submission_id FROM decisions d JOIN submissions s ON s.id = d.submission_id "
                    "WHERE s.tenant_id = :t AND d.automated"
                ),
                {"t": TENANT},
            ).scalars()
        )
    return len(ids - have)


def verify_chains(stack: Stack) -> dict[str, dict[str, Any]]:
    from moderation import audit

    out: dict[str, dict[str, Any]] = {}
    with stack.engine.connect() as conn:
        for tenant in audit.tenants(conn):
            result = audit.verify(conn, tenant)
            out[tenant] = {"ok": result.ok, "checked": result.checked, "first_break": result.first_break}
    return out


def recovery(
    fault: Fault,
    next_at: float,
    decided_by_id: dict[str, float],
    accepted_at: dict[str, float],
    items: list[Any],
) -> dict[str, Any]:
    """The recovery figures of one fault (see the module docstring for the definitions)."""
    t = fault.at
    decided_at = [decided_by_id[sid] for sid in accepted_at if sid in decided_by_id]
    began = fault.began or t  # the pre-fault window ends where the injection's preparation began
    pre = sum(1 for d in decided_at if began - PRE_WINDOW_S <= d < began) / PRE_WINDOW_S
    horizon = max(STAY_S, int(next_at - t))  # whole seconds before the next fault's preparation
    buckets = [0] * horizon
    for d in decided_at:
        k = int(d - t) if d >= t else -1
        if 0 <= k < horizon:
            buckets[k] += 1
    threshold = 0.5 * pre
    rate_recovery: float | None = None  # None: not back within the horizon
    for k in range(horizon - STAY_S + 1):
        if all(b >= threshold for b in buckets[k : k + STAY_S]):
            rate_recovery = float(k)
            break
    dip = min(buckets)
    after = [d for d in decided_at if d > t]
    before_ids = [sid for sid, a in accepted_at.items() if a < t]
    backlog = None
    delayed = 0
    if before_ids:
        last = max((decided_by_id.get(sid, float("inf")) for sid in before_ids), default=t)
        backlog = max(0.0, last - t)
        delayed = sum(1 for sid in before_ids if decided_by_id.get(sid, float("inf")) > t + 5)
    errors = [
        a for i in items for a in i.attempts if t <= a.started and a.ended < next_at and not a.outcome.startswith("202")
    ]
    return {
        "pre_rate_per_s": round(pre, 1),
        "lowest_rate_per_s": dip,
        "rate_recovery_s": rate_recovery,
        "backlog_recovery_s": None if backlog is None else round(backlog, 1),
        "delayed_over_5s": delayed,
        "first_decision_s": round(min(after) - t, 2) if after else None,
        "api_errors": len(errors),
        "api_error_kinds": dict(Counter(a.outcome for a in errors)),
        "api_errors_until_s": round(max(a.ended for a in errors) - t, 1) if errors else 0.0,
    }


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=300, help="seconds of load (faults inside it); >= 120")
    ap.add_argument("--rate", type=float, default=30, help="submissions/s")
    ap.add_argument("--warmup", type=float, default=30, help="seconds of load before the first fault")
    ap.add_argument("--tail", type=float, default=45, help="seconds of load after the last fault")
    ap.add_argument("--drain", type=float, default=180, help="seconds to wait for the pipeline to drain")
    ap.add_argument("--api-workers", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=2, help="prefork children per CPU worker")
    ap.add_argument("--reconcile-interval", type=float, help="MODERATION_RECONCILE_INTERVAL_S (default: the setting's)")
    ap.add_argument("--stale-after", type=float, help="MODERATION_STALE_AFTER_S (default: the setting's)")
    ap.add_argument(
        "--warm-analyzers", action="store_true", help="workers load the lite analyzers at start (MODERATION_WARMUP)"
    )
    ap.add_argument("--json", type=Path, default=RESULTS / "chaos.json")
    args = ap.parse_args()
    if args.duration < 120:
        ap.error("--duration must be at least 120 s (five faults with room between them)")

    extra: dict[str, str] = {}
    if args.reconcile_interval is not None:
        extra["MODERATION_RECONCILE_INTERVAL_S"] = str(args.reconcile_interval)
    if args.stale_after is not None:
        extra["MODERATION_STALE_AFTER_S"] = str(args.stale_after)
    from moderation.settings import Settings

    defaults = Settings()
    reconcile_s = args.reconcile_interval or defaults.reconcile_interval_s
    stale_s = args.stale_after or defaults.stale_after_s

    images = UniqueImages()
    run_id = f"chaos{int(time.time())}"
    stack = Stack(
        api_workers=args.api_workers,
        cpu_workers=2,
        concurrency=args.concurrency,
        warm_analyzers=args.warm_analyzers,
        extra_env=extra,
    )
    faults = [Fault(name, desc) for name, desc, _ in FAULTS]
    spacing = (args.duration - args.warmup - args.tail) / (len(FAULTS) - 1)
    code = 1
    try:
        stack.log(f"starting the private stack under {stack.root}")
        stack.start()
        stack.log(
            f"stack up: PostgreSQL :{stack.pg.port}, Redis :{stack.redis.port}, API :{stack.api_port}; "
            f"load {args.rate}/s for {args.duration:.0f} s, a fault every {spacing:.0f} s after {args.warmup:.0f} s"
        )
        load = LoadGen(stack.api_port, stack.key, images, args.rate, run_id)
        load.start()
        t0 = time.time()
        for i, ((_, _, inject), fault) in enumerate(zip(FAULTS, faults, strict=True)):
            time.sleep(max(0.0, t0 + args.warmup + i * spacing - time.time()))
            started = time.monotonic()
            fault.began = time.time()
            inject(stack, fault)
            fault.took_s = round(time.monotonic() - started, 2)
            notes = {k: v for k, v in fault.notes.items() if k != "batch_submissions"}
            stack.log(f"fault {fault.name} at +{fault.at - t0:.1f} s ({fault.took_s} s): {notes}")
        time.sleep(max(0.0, t0 + args.duration - time.time()))
        t_load_end, summary, accepted = load.finish(stack.log)
        stack.log(
            f"draining (at most {args.drain:.0f} s; reconciler every {reconcile_s:.0f} s, stale after {stale_s:.0f} s)"
        )
        drain_started = time.monotonic()
        drained = until(lambda: active_count(stack) == 0 and undecided(stack, set(accepted)) == 0, args.drain, 2.0)
        drain_s = round(time.monotonic() - drain_started, 1)
        stack.log(f"drained: {drained} after {drain_s} s")

        data = fetch(stack)
        per_sub: dict[str, int] = Counter(r.submission_id for r in data["decisions"])
        decided_by_id = {r.submission_id: r.decided_at.timestamp() for r in data["decisions"]}
        lost = sorted(sid for sid in accepted if per_sub.get(sid, 0) == 0)
        duplicates = sorted(sid for sid, n in per_sub.items() if n > 1)
        rows_by_ext: dict[str, list[str]] = defaultdict(list)
        status_of, attempts_of = {}, {}
        for r in data["subs"]:
            rows_by_ext[r.external_id].append(r.id)
            status_of[r.id], attempts_of[r.id] = r.status, r.attempts
        dup_rows = {e: ids for e, ids in rows_by_ext.items() if len(ids) > 1}
        orphans = sorted(set(status_of) - set(accepted))  # committed, but the client never saw a 202
        orphans_undecided = [sid for sid in orphans if per_sub.get(sid, 0) == 0]
        missing_rows = sorted(set(accepted) - set(status_of))
        events: dict[tuple[str, str], int] = {(r.submission_id, r.action): int(r.n) for r in data["events"]}
        received_bad = sorted(sid for sid in status_of if events.get((sid, "received"), 0) != 1)
        decided_bad = sorted(sid for sid in status_of if events.get((sid, "decided"), 0) != per_sub.get(sid, 0))
        details = {
            sid: {
                "received": events.get((sid, "received"), 0),
                "decided_events": events.get((sid, "decided"), 0),
                "decisions": per_sub.get(sid, 0),
                "attempts": attempts_of.get(sid),
                "status": status_of.get(sid),
                "decided_at_s": round(decided_by_id[sid] - t0, 1) if sid in decided_by_id else None,
            }
            for sid in {*received_bad, *decided_bad}
        }
        chains = verify_chains(stack)
        chain_ok = bool(chains) and all(c["ok"] for c in chains.values())
        killed_batch = faults[0].notes.get("batch_submissions", [])
        killed_ok = all(per_sub.get(sid, 0) == 1 for sid in killed_batch)
        # A delivery counts its attempt in a commit of its own first: an attempt count above one
        # shows that the killed batch had started and was delivered again.
        faults[0].notes["batch_attempts"] = [attempts_of.get(sid) for sid in killed_batch]

        rec: dict[str, dict[str, Any]] = {}
        for i, fault in enumerate(faults):
            nxt = faults[i + 1].began if i + 1 < len(faults) else t0 + args.duration
            rec[fault.name] = recovery(fault, nxt, decided_by_id, accepted, load.items)

        internal = summary["outcomes"].get("500", 0)
        checks = {
            "lost (accepted, no automated decision)": (len(lost), len(lost) == 0),
            "duplicate automated decisions": (len(duplicates), not duplicates),
            "accepted ids missing from the database": (len(missing_rows), not missing_rows),
            "external_ids with more than one row": (len(dup_rows), not dup_rows),
            "external_ids answered with two ids": (summary["conflicting_ids"], summary["conflicting_ids"] == 0),
            "rows committed without a 202, undecided": (
                f"{len(orphans_undecided)} of {len(orphans)}",
                not orphans_undecided,
            ),
            "submissions not exactly 1 `received` event": (len(received_bad), not received_bad),
            "submissions whose `decided` events != decisions": (len(decided_bad), not decided_bad),
            "killed batch decided exactly once": (f"{len(killed_batch)} submissions", killed_ok),
            "audit chain verifies (every tenant)": (
                ", ".join(
                    f"{t}: {'ok' if c['ok'] else 'BROKEN ' + json.dumps(c['first_break'])} ({c['checked']})"
                    for t, c in chains.items()
                ),
                chain_ok,
            ),
            "requests answered 500 (503 expected in an outage)": (internal, internal == 0),
            "pipeline drained in time": (f"{drain_s} s", drained),
        }
        ok = all(passed for _, passed in checks.values())
        code = 0 if ok else 1

        actions = Counter(r.action for r in data["decisions"])
        statuses = Counter(status_of.values())
        restarts = [f"+{e.at - t0:.0f} s {e.what}" for e in stack.events if "exited" in e.what]
        print()
        print(f"chaos: {args.duration:.0f} s of hash-only load at {args.rate}/s on a private stack ")
        print(
            f"  api x{args.api_workers}, 2 CPU workers (prefork x{args.concurrency}), callbacks worker, beat; "
            f"reconciler every {reconcile_s:.0f} s, stale after {stale_s:.0f} s"
        )
        print(
            f"  sent {summary['sent']}, accepted (202) {summary['accepted']}, retried items "
            f"{summary['retried_items']} ({summary['retries']} retries), gave up {summary['gave_up']}, refused "
            f"{summary['refused']}; attempt outcomes {summary['outcomes']}"
        )
        print(f"  statuses {dict(statuses)}, actions {dict(actions)}, dead letters {len(data['dead'])}")
        print(f"  supervisor restarts: {restarts or 'none'}")
        print()
        width = max(len(k) for k in checks) + 2
        print(f"{'check':<{width}}{'result':<40}")
        for name, (value, passed) in checks.items():
            print(f"{name:<{width}}{value!s:<40}{'ok' if passed else 'FAIL'}")
        print()
        head = [
            "fault",
            "at s",
            "took s",
            "pre/s",
            "min/s",
            "rate rec s",
            "backlog rec s",
            "delayed",
            "1st dec s",
            "API err",
            "err until s",
        ]
        rows = []
        for f in faults:
            r = rec[f.name]
            rows.append(
                [
                    f.name,
                    f"{f.at - t0:.0f}",
                    f"{f.took_s}",
                    f"{r['pre_rate_per_s']}",
                    f"{r['lowest_rate_per_s']}",
                    f"{r['rate_recovery_s']:.0f}" if r["rate_recovery_s"] is not None else ">horizon",
                    f"{r['backlog_recovery_s']}",
                    f"{r['delayed_over_5s']}",
                    f"{r['first_decision_s']}",
                    f"{r['api_errors']}",
                    f"{r['api_errors_until_s']}",
                ]
            )
        widths = [max(len(h), *(len(row[c]) for row in rows)) + 2 for c, h in enumerate(head)]
        print("".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
        for row in rows:
            print("".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
        mid = faults[0].notes
        print(
            f"\nworker-kill9: {'mid-batch' if mid.get('mid_batch') else 'NOT caught mid-batch'} after "
            f"{mid.get('tries')} freeze(s); killed with {len(mid.get('interrupted', []))} submission(s) counted and "
            f"undecided: {mid.get('interrupted')}"
        )
        print(
            f"\n{'PASS' if ok else 'FAIL'}: lost {len(lost)}, duplicates {len(duplicates)}, "
            f"chain {'ok' if chain_ok else 'BROKEN'}"
        )
        if lost:
            print(f"lost ids (first 20): {lost[:20]}")
        if duplicates:
            print(f"duplicated ids (first 20): {duplicates[:20]}")
        for sid in (received_bad + decided_bad)[:20]:
            print(f"audit events of {sid}: {details[sid]}")

        RESULTS.mkdir(parents=True, exist_ok=True)
        result = {
            **run_header(args),
            "reconcile_interval_s": reconcile_s,
            "stale_after_s": stale_s,
            "load": summary,
            "load_seconds": round(t_load_end - t0, 1),
            "drain_s": drain_s,
            "checks": {k: {"value": str(v), "ok": p} for k, (v, p) in checks.items()},
            "statuses": dict(statuses),
            "actions": dict(actions),
            "dead_letters": len(data["dead"]),
            "faults": [
                {"name": f.name, "at_s": round(f.at - t0, 1), "took_s": f.took_s, "notes": f.notes, **rec[f.name]}
                for f in faults
            ],
            "events": [{"at_s": round(e.at - t0, 1), "what": e.what} for e in stack.events if e.at >= t0],
            "audit_event_mismatches": details,
            "lost": lost[:100],
            "duplicates": duplicates[:100],
            "pass": ok,
        }
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"figures: {args.json}")
    finally:
        stack.stop()
        stack.cleanup(keep_logs=REPO / "var" / "chaos-logs")
        print(f"logs: {REPO / 'var' / 'chaos-logs'}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
