"""Hash bank lookup at scale: 1M PDQ hashes in one tenant's bank on the real PostgreSQL.

    python bench/banks.py [--entries 1000000] [--queries 2000]

Prints the time to load the bank into a worker's index, the process RSS after loading, and
the latency of `BankIndex.candidates` (index only) and `BankIndex.lookup` (index + the
entries' rows from PostgreSQL on a hit) for queries that are near-duplicates of banked hashes
(0-31 bits flipped) and for unrelated hashes.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/moderation_bench_banks")
    args = ap.parse_args()

    import psycopg2

    from bench.common import fresh_database, pct

    dbname = args.database.rsplit("/", 1)[1]
    admin = fresh_database(args.database)
    os.environ["DATABASE_URL"] = args.database
    from moderation.banks import BankIndex, create_bank
    from moderation.db.engine import make_engine
    from moderation.db.migrate import upgrade
    from moderation.settings import Settings

    settings = Settings()
    upgrade(settings)
    engine = make_engine(settings)
    with engine.begin() as conn:
        from moderation.access.keys import ensure_tenant

        ensure_tenant(conn, "bench")
        create_bank(conn, "bench", "big", "bad", "violence_gore")

    rng = np.random.default_rng(7)
    words = rng.integers(0, 2**64 - 1, (args.entries, 4), dtype=np.uint64, endpoint=True)
    hexes = [w.astype(">u8").tobytes().hex() for w in words]
    t0 = time.perf_counter()
    raw = psycopg2.connect(args.database)
    with raw, raw.cursor() as cur:
        buf = io.StringIO()
        now = datetime.now(UTC).isoformat()
        for i, h in enumerate(hexes):
            buf.write(f"bench\tbig\tbad\tentry {i}\tviolence_gore\t{h}\t{now}\n")
        buf.seek(0)
        cur.copy_expert("COPY bank_entries (tenant_id, bank, kind, label, category, pdq, created_at) FROM STDIN", buf)
    raw.close()
    print(f"inserted {args.entries} PDQ hashes in {time.perf_counter() - t0:.1f} s")
    del buf

    proc = psutil.Process()
    rss0 = proc.memory_info().rss
    index = BankIndex(engine, ttl_s=3600)
    t0 = time.perf_counter()
    index.candidates("bench", "0" * 64, hexes[0])
    load_s = time.perf_counter() - t0
    rss = proc.memory_info().rss
    print(
        f"index loaded from PostgreSQL in {load_s:.1f} s; process RSS {rss / 2**20:.0f} MB "
        f"(+{(rss - rss0) / 2**20:.0f} MB for the index)"
    )

    def flip(q: np.ndarray, k: int) -> np.ndarray:
        q = q.copy()
        for b in rng.choice(256, k, replace=False):
            q[b // 64] ^= np.uint64(1) << np.uint64(63 - b % 64)
        return q

    near_lat, far_lat, look_lat, found = [], [], [], 0
    for i in range(args.queries):
        if i % 2 == 0:
            k = int(rng.integers(0, 32))
            q = flip(words[int(rng.integers(0, args.entries))], k).astype(">u8").tobytes().hex()
            t = time.perf_counter()
            hits = index.candidates("bench", "0" * 64, q)
            near_lat.append(time.perf_counter() - t)
            found += bool(hits) and hits[0][1] <= k
            t = time.perf_counter()
            index.lookup("bench", "0" * 64, q)
            look_lat.append(time.perf_counter() - t)
        else:
            q = rng.integers(0, 2**64 - 1, 4, dtype=np.uint64, endpoint=True).astype(">u8").tobytes().hex()
            t = time.perf_counter()
            index.candidates("bench", "0" * 64, q)
            far_lat.append(time.perf_counter() - t)

    def fmt(values: list[float]) -> str:
        return " / ".join(f"{1000 * pct(values, p):.2f}" for p in (50, 95, 99))

    print(f"machine: {platform.node()} {os.cpu_count()} cores; date {datetime.now(UTC):%Y-%m-%d}")
    print(f"near-duplicate queries (0-31 bits): index p50/p95/p99 ms {fmt(near_lat)}; found {found}/{len(near_lat)}")
    print(f"near-duplicate queries, lookup with entry rows from PostgreSQL: p50/p95/p99 ms {fmt(look_lat)}")
    print(f"unrelated queries: index p50/p95/p99 ms {fmt(far_lat)}")
    print(f"peak RSS {proc.memory_info().rss / 2**20:.0f} MB")
    with admin.cursor() as cur:
        engine.dispose()
        cur.execute(f"DROP DATABASE IF EXISTS {dbname}")


if __name__ == "__main__":
    main()
