"""Soak (issue 10): hash-only submissions at a steady rate for minutes; is memory flat?

    .venv/bin/python bench/soak.py                       # 10 minutes at 100 submissions/s
    .venv/bin/python bench/soak.py --minutes 2 --rate 100   # a short check that it works

Runs on a private stack (bench/_stack.py: its own PostgreSQL and Redis on free ports; the
machine's shared services are never touched) laid out like `moderation up`: the API (uvicorn,
`--api-workers` processes, one by default as `moderation up` runs it), two CPU workers (prefork,
2 children each), the callbacks worker and beat. One API process, because the API groups its
ingest publishes (IngestBatcher) only above MODERATION_INGEST_BATCH_MIN_RATE submissions/s *per
process* (50): split 100/s over two processes and every submission is a message and a
transaction of its own, serialized on the tenant's audit chain, which this machine's workers
cannot keep up with (~60/s measured), whereas one API process at 100/s sends batches. An
open-loop load generator sends unique hash-only submissions at `--rate`/s (retried with the
same external_id on a 5xx, 429 or connection error).

Every `--sample-s` seconds: the RSS of each process tree (a worker with its prefork children, the
API with its uvicorn workers, beat, callbacks; PostgreSQL and Redis for reference, as PSS, since
the backends share their buffers), the CPU each used, and the depth of each Celery queue (Redis
LLEN over kombu's priority lists, plus the `unacked` hash). After the run: per window,
submissions sent, accepted (202) and decided, and p50/p99 of submit -> decided
(submissions.created_at to decisions.decided_at, both stamped by the pipeline).

Writes bench/results/soak.csv, soak.png (matplotlib, else a plain Pillow chart) and soak.json,
and prints whether RSS is flat: after the warm-up (2 minutes; a third of a shorter run), every
process tree of the pipeline (API, each worker, callbacks, beat) stays within 10 % of its RSS at
the end of the warm-up. When the target rate is not reached it says so, with what saturated.
Exit status 1 when RSS is not flat or fewer than 95 % of the target were decided.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._stack import REPO, TENANT, LoadGen, Stack, UniqueImages, cpu_s, queue_depths, rss_mb, until
from bench.common import pct, run_header

RESULTS = REPO / "bench" / "results"
PIPELINE = ("api", "worker1", "worker2", "callbacks", "beat")  # the trees whose RSS must stay flat
REFERENCE = ("postgres", "redis")
QUEUES = ("ingest", "decide", "maintenance", "analyze.cpu", "callbacks", "unacked")
FLAT = 0.10


def sample(stack: Stack, load: LoadGen, t0: float) -> dict[str, Any]:
    trees = stack.trees()
    now = time.time()
    row: dict[str, Any] = {"t_s": round(now - t0, 1)}
    for name in (*PIPELINE, *REFERENCE):
        row[f"rss_{name}_mb"] = round(rss_mb(trees.get(name, []), proportional=name in REFERENCE), 1)
    for name in (*PIPELINE, *REFERENCE):
        row[f"cpu_{name}_s"] = round(cpu_s(trees.get(name, [])), 2)
    row["cpu_loadgen_s"] = round(sum(psutil.Process().cpu_times()[:2]), 2)
    depths = queue_depths(stack.redis.client())
    for q in QUEUES:
        row[f"depth_{q}"] = depths.get(q, "")
    row["sent"] = len(load.items)
    row["accepted"] = sum(1 for i in load.items if i.accepted_at is not None)
    row["machine_cpu_pct"] = psutil.cpu_percent(None)
    return row


def decided_latencies(stack: Stack, ids: list[str]) -> list[tuple[float, float]]:
    """(created_at, decided_at) of the automated decisions of `ids`, epoch seconds."""
    from sqlalchemy import text

    wanted = set(ids)
    with stack.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT s.id, s.created_at, d.decided_at FROM submissions s JOIN decisions d "
                "ON d.submission_id = s.id AND d.automated WHERE s.tenant_id = :t"
            ),
            {"t": TENANT},
        ).all()
    return [(r.created_at.timestamp(), r.decided_at.timestamp()) for r in rows if r.id in wanted]


def windows(
    samples: list[dict[str, Any]], load: LoadGen, lat: list[tuple[float, float]], t0: float, step: float
) -> None:
    """Add each window's rates and latency percentiles (the window ending at the sample) to `samples`."""
    for row in samples:
        end = t0 + row["t_s"]
        start = end - step
        in_win = [(d - c) * 1000 for c, d in lat if start <= d < end]
        row["sent_per_s"] = round(sum(1 for i in load.items if start <= i.first < end) / step, 1)
        row["accepted_per_s"] = round(
            sum(1 for i in load.items if i.accepted_at is not None and start <= i.accepted_at < end) / step, 1
        )
        row["decided_per_s"] = round(len(in_win) / step, 1)
        row["p50_ms"] = round(pct(in_win, 50), 1) if in_win else ""
        row["p99_ms"] = round(pct(in_win, 99), 1) if in_win else ""


def flatness(samples: list[dict[str, Any]], warmup_s: float) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    base_row = min(samples, key=lambda r: abs(r["t_s"] - warmup_s))
    after = [r for r in samples if r["t_s"] > base_row["t_s"]]
    for name in (*PIPELINE, *REFERENCE):
        col = f"rss_{name}_mb"
        base = float(base_row[col])
        values = [float(r[col]) for r in after]
        if not values or base <= 0:
            out[name] = {"start": samples[0][col], "base": base, "end": samples[-1][col], "flat": None}
            continue
        worst = max(values, key=lambda v: abs(v - base))
        dev = (worst - base) / base
        out[name] = {
            "start": samples[0][col],
            "base": base,
            "end": samples[-1][col],
            "min": min(values),
            "max": max(values),
            "worst_dev_pct": round(100 * dev, 1),
            "flat": abs(dev) <= FLAT,
        }
    return out


def plot(samples: list[dict[str, Any]], path: Path, title: str) -> str:
    """The three panels (RSS, queue depth, latency and rates) as a PNG; returns the backend used."""
    t = [r["t_s"] / 60 for r in samples]
    rss = {n: [r[f"rss_{n}_mb"] for r in samples] for n in (*PIPELINE, *REFERENCE)}
    depth = [sum(int(r[f"depth_{q}"] or 0) for q in QUEUES if q != "unacked") for r in samples]
    unacked = [int(r["depth_unacked"] or 0) for r in samples]
    p50 = [r["p50_ms"] if r["p50_ms"] != "" else None for r in samples]
    p99 = [r["p99_ms"] if r["p99_ms"] != "" else None for r in samples]
    rates = {k: [r[k] for r in samples] for k in ("sent_per_s", "accepted_per_s", "decided_per_s")}
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _plot_pillow(t, rss, depth, p99, path, title)
        return "pillow"
    fig, axes = plt.subplots(4, 1, figsize=(11, 13), sharex=True)
    for name, values in rss.items():
        axes[0].plot(t, values, label=name, linestyle="--" if name in REFERENCE else "-")
    axes[0].set_ylabel("RSS (MB)")
    axes[0].legend(ncol=4, fontsize=8)
    axes[1].plot(t, depth, label="queued (all queues)")
    axes[1].plot(t, unacked, label="unacked")
    axes[1].set_ylabel("messages")
    axes[1].legend(fontsize=8)
    axes[2].plot(t, p50, label="p50")
    axes[2].plot(t, p99, label="p99")
    axes[2].set_ylabel("submit -> decided (ms)")
    axes[2].legend(fontsize=8)
    for name, values in rates.items():
        axes[3].plot(t, values, label=name.replace("_per_s", ""))
    axes[3].set_ylabel("per second")
    axes[3].set_xlabel("minutes")
    axes[3].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return "matplotlib"


def _plot_pillow(
    t: list[float], rss: dict[str, list[Any]], depth: list[int], p99: list[Any], path: Path, title: str
) -> None:
    from PIL import Image, ImageDraw

    w, h, pad = 1000, 900, 50
    im = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(im)
    draw.text((pad, 10), title, fill="black")
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
    panels: list[tuple[str, dict[str, list[Any]]]] = [
        ("RSS (MB)", rss),
        ("queued messages", {"queued": depth}),
        ("p99 submit->decided (ms)", {"p99": p99}),
    ]
    ph = (h - 2 * pad) // len(panels)
    xmax = max(t) or 1.0
    for k, (label, series) in enumerate(panels):
        top = pad + k * ph
        draw.rectangle((pad, top + 20, w - pad, top + ph - 10), outline="gray")
        draw.text((pad, top + 4), label, fill="black")
        ymax = max((float(v) for vs in series.values() for v in vs if v not in (None, "")), default=1.0) or 1.0
        for c, (name, values) in enumerate(series.items()):
            pts = [
                (pad + (w - 2 * pad) * x / xmax, top + ph - 10 - (ph - 30) * float(y) / ymax)
                for x, y in zip(t, values, strict=True)
                if y not in (None, "")
            ]
            if len(pts) > 1:
                draw.line(pts, fill=colors[c % len(colors)], width=2)
            draw.text((w - pad - 120, top + 24 + 12 * c), name, fill=colors[c % len(colors)])
    im.save(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--rate", type=float, default=100, help="submissions/s")
    ap.add_argument("--warmup", type=float, default=120, help="seconds before RSS is expected flat")
    ap.add_argument("--sample-s", type=float, default=5)
    ap.add_argument("--api-workers", type=int, default=1, help="uvicorn processes (`moderation up` runs one)")
    ap.add_argument("--concurrency", type=int, default=2, help="prefork children per CPU worker")
    ap.add_argument("--drain", type=float, default=120, help="seconds to wait for the backlog after the load")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for soak.csv, soak.png, soak.json")
    args = ap.parse_args()
    duration = args.minutes * 60
    warmup = args.warmup if args.warmup * 1.5 <= duration else duration / 3
    if warmup != args.warmup:
        print(f"run shorter than 1.5 x the warm-up: RSS is judged after {warmup:.0f} s instead of {args.warmup:.0f} s")

    images = UniqueImages()
    stack = Stack(api_workers=args.api_workers, cpu_workers=2, concurrency=args.concurrency)
    samples: list[dict[str, Any]] = []
    code = 1
    try:
        stack.log(f"starting the private stack under {stack.root}")
        stack.start()
        stack.log(f"stack up; {args.rate}/s for {args.minutes} min, a sample every {args.sample_s:.0f} s")
        load = LoadGen(stack.api_port, stack.key, images, args.rate, f"soak{int(time.time())}", give_up_s=60)
        psutil.cpu_percent(None)
        load.start()
        t0 = time.time()
        cpu0 = sample(stack, load, t0)
        n = 1
        while time.time() < t0 + duration:
            time.sleep(max(0.0, t0 + n * args.sample_s - time.time()))
            row = sample(stack, load, t0)
            samples.append(row)
            if n % max(1, int(30 / args.sample_s)) == 0:
                stack.log(
                    f"t={row['t_s']:.0f}s sent {row['sent']} accepted {row['accepted']} "
                    f"queued ingest {row['depth_ingest']} unacked {row['depth_unacked']} "
                    f"rss api {row['rss_api_mb']} w1 {row['rss_worker1_mb']} w2 {row['rss_worker2_mb']} MB"
                )
            n += 1
        t_end = time.time()
        load.stop_and_wait(load.give_up_s + 30)
        summary = load.summary()
        accepted = [i.id for i in load.accepted() if i.id is not None]
        backlog_at_end = len(accepted) - len(decided_latencies(stack, accepted))
        until(lambda: len(decided_latencies(stack, accepted)) >= len(accepted), args.drain, 2.0)
        lat = decided_latencies(stack, accepted)
        windows(samples, load, lat, t0, args.sample_s)
        in_run = [(c, d) for c, d in lat if d <= t_end]
        all_ms = [(d - c) * 1000 for c, d in lat]
        # Intake as the client sees it: from the moment a submission was due to its 202 (retries,
        # and the wait for a connection when the API falls behind, included).
        accept_ms = [(i.accepted_at - i.first) * 1000 for i in load.items if i.accepted_at is not None]
        steady_ms = [(d - c) * 1000 for c, d in lat if c >= t0 + warmup]
        wall = t_end - t0
        last = samples[-1]
        cpu_share = {
            name: round(100 * (last[f"cpu_{name}_s"] - cpu0[f"cpu_{name}_s"]) / wall, 1)
            for name in (*PIPELINE, *REFERENCE, "loadgen")
        }
        flat = flatness(samples, warmup)
        rss_flat = all(flat[n]["flat"] for n in PIPELINE if flat[n]["flat"] is not None)
        accepted_rate = len([i for i in load.items if i.accepted_at and i.accepted_at <= t_end]) / wall
        decided_rate = len(in_run) / wall
        depth_first = sum(int(samples[0][f"depth_{q}"] or 0) for q in ("ingest", "decide"))
        depth_last = sum(int(last[f"depth_{q}"] or 0) for q in ("ingest", "decide"))
        reached = decided_rate >= 0.95 * args.rate
        saturation = ""
        if not reached:
            top = max(cpu_share, key=lambda k: cpu_share[k])
            api_per_process = cpu_share["api"] / args.api_workers
            where = (
                "the workers: the queues grew (decided below accepted)"
                if depth_last > max(100, 2 * depth_first)
                else f"intake: the API accepted {accepted_rate:.0f}/s at {api_per_process:.0f} % of a core per "
                f"process ({args.api_workers} process(es))"
                if accepted_rate < 0.95 * args.rate
                else "the decided rate lagged the accepted rate"
            )
            saturation = (
                f"target {args.rate}/s not reached: {where}; machine CPU {last['machine_cpu_pct']} % at the end, "
                f"the busiest process tree is {top} ({cpu_share[top]} % of one core)"
            )
        code = 0 if rss_flat and reached else 1

        args.out.mkdir(parents=True, exist_ok=True)
        cols = ["t_s", "sent_per_s", "accepted_per_s", "decided_per_s", "p50_ms", "p99_ms"]
        cols += [f"depth_{q}" for q in QUEUES]
        cols += [f"rss_{n}_mb" for n in (*PIPELINE, *REFERENCE)]
        cols += [f"cpu_{n}_s" for n in (*PIPELINE, *REFERENCE)] + [
            "cpu_loadgen_s",
            "machine_cpu_pct",
            "sent",
            "accepted",
        ]
        with (args.out / "soak.csv").open("w", newline="") as fh:
            writer = csv.DictWriter(fh, cols, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(samples)
        title = (
            f"soak: hash-only at {args.rate}/s for {args.minutes} min on {platform.node()} "
            f"({os.cpu_count()} cores), {datetime.now(UTC):%Y-%m-%d}"
        )
        backend = plot(samples, args.out / "soak.png", title)

        print()
        print(title)
        print(
            f"  sent {summary['sent']}, accepted {summary['accepted']} ({accepted_rate:.1f}/s), decided during the run "
            f"{len(in_run)} ({decided_rate:.1f}/s), backlog at the end {backlog_at_end}, all decided after drain "
            f"{len(lat) == len(accepted)}; retries {summary['retries']}, outcomes {summary['outcomes']}"
        )
        print(
            f"  submit -> decided: p50 {pct(all_ms, 50):.0f} ms, p99 {pct(all_ms, 99):.0f} ms over the run; "
            f"after the warm-up p50 {pct(steady_ms, 50):.0f} ms, p99 {pct(steady_ms, 99):.0f} ms"
        )
        print(
            f"  due -> 202 at the client: p50 {pct(accept_ms, 50):.0f} ms, p99 {pct(accept_ms, 99):.0f} ms; "
            f"submissions started over 1 s late (client's in-flight cap): {summary['behind_schedule']}"
        )
        print(f"  CPU, % of one core: {cpu_share}")
        print(f"  queued (ingest + decide) first sample {depth_first}, last {depth_last}")
        if saturation:
            print(f"  {saturation}")
        print()
        print(f"RSS (MB) per process tree; judged after {warmup:.0f} s (flat: within {FLAT:.0%} of the warm-up value)")
        print(f"{'process':<12}{'start':>9}{'warm-up':>9}{'end':>9}{'min':>9}{'max':>9}{'worst':>9}  flat")
        for name, f in flat.items():
            mark = "-" if f["flat"] is None else ("yes" if f["flat"] else "NO")
            if name in REFERENCE:
                mark = "(reference, PSS; not judged)"
            print(
                f"{name:<12}{f['start']:>9}{f['base']:>9}{f['end']:>9}{f.get('min', ''):>9}{f.get('max', ''):>9}"
                f"{str(f.get('worst_dev_pct', '')) + '%':>9}  {mark}"
            )
        print(f"\nRSS flat: {'yes' if rss_flat else 'NO'}; rate reached: {'yes' if reached else 'NO'}")
        result = {
            **run_header(args),
            "warmup_s": warmup,
            "load": summary,
            "accepted_per_s": round(accepted_rate, 1),
            "decided_per_s": round(decided_rate, 1),
            "backlog_at_end": backlog_at_end,
            "latency_ms": {"p50": round(pct(all_ms, 50), 1), "p99": round(pct(all_ms, 99), 1)},
            "accept_ms": {"p50": round(pct(accept_ms, 50), 1), "p99": round(pct(accept_ms, 99), 1)},
            "latency_after_warmup_ms": {"p50": round(pct(steady_ms, 50), 1), "p99": round(pct(steady_ms, 99), 1)},
            "cpu_pct_of_one_core": cpu_share,
            "rss": flat,
            "rss_flat": rss_flat,
            "rate_reached": reached,
            "saturation": saturation or None,
            "plot_backend": backend,
            "supervisor_events": [e.what for e in stack.events if "exited" in e.what],
        }
        (args.out / "soak.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"written: {args.out / 'soak.csv'}, {args.out / 'soak.png'} ({backend}), {args.out / 'soak.json'}")
    finally:
        stack.stop()
        stack.cleanup(keep_logs=REPO / "var" / "soak-logs")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
