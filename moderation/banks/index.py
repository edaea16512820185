"""Hash banks (the HMA core, in-process): known-bad and known-good images per tenant.

A bank has a name, a kind (`bad` blocks, `good` allows) and the policy category a match
implies; its entries are PDQ hashes (with pHash and SHA-256 when the image was seen), each with
a label. Matching: exact SHA-256, or PDQ Hamming distance <= `max_distance` (31, HMA's default)
through a multi-index hash (`hashindex.PdqIndex`, ~1 ms at 1M hashes).

Each process keeps one index per tenant and refreshes it every `ttl_s`: new entries are read
incrementally (ids above the last one seen) into a small linear-scanned delta that is folded
into the index when it grows; a removal triggers a full reload.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, and_, func, select

from moderation.analyzers.base import Finding
from moderation.banks.hashindex import PdqIndex, brute_force, pdq_to_words
from moderation.db.tables import bank_entries

ANALYZER = "banks"
VERSION = "pdq-2"
DEFAULT_MAX_DISTANCE = 31
# Within this distance a match is a copy and decides; beyond it (up to 31) it is a near match that
# goes on through the cascade and never ends in allow. Same-picture memes with other captions sit
# 12-72 bits apart, re-encoded copies 0-4 (bench/meme_hashes.py; bench/RESULTS.md).
DEFAULT_DECISIVE_DISTANCE = 10
DELTA_LIMIT = 20_000


def _sha_key(sha256: str) -> int:
    return int(sha256[:16], 16)


@dataclass
class _TenantBank:
    checked_at: float = 0.0
    max_id: int = 0
    count: int = 0
    newest: Any = None
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    index: PdqIndex = field(default_factory=lambda: PdqIndex(np.zeros((0, 4), dtype=np.uint64)))
    delta_ids: list[int] = field(default_factory=list)
    delta_words: list[np.ndarray] = field(default_factory=list)
    sha_keys: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint64))  # sorted
    sha_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


class BankIndex:
    def __init__(
        self,
        engine: Engine,
        ttl_s: float = 5.0,
        max_distance: int = DEFAULT_MAX_DISTANCE,
        decisive_distance: int = DEFAULT_DECISIVE_DISTANCE,
    ) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        self.max_distance = max_distance
        self.decisive_distance = decisive_distance
        self._lock = threading.Lock()
        self._tenants: dict[str, _TenantBank] = {}

    # ------------------------------------------------------------ loading

    def _bank(self, tenant_id: str, conn: Connection | None) -> _TenantBank:
        now = time.monotonic()
        with self._lock:
            bank = self._tenants.get(tenant_id)
            if bank is not None and now - bank.checked_at < self.ttl_s:
                return bank
            if conn is None:
                with self.engine.connect() as own:
                    bank = self._refresh(own, tenant_id, bank)
            else:  # the caller's transaction (SQLite allows one writer at a time)
                bank = self._refresh(conn, tenant_id, bank)
            bank.checked_at = now
            self._tenants[tenant_id] = bank
            return bank

    def _refresh(self, conn: Connection, tenant_id: str, bank: _TenantBank | None) -> _TenantBank:
        t = bank_entries.c
        # The newest created_at is in the fingerprint: SQLite reuses a deleted row's id, so a
        # remove-then-add could otherwise keep count and max(id) unchanged.
        count, max_id, newest = conn.execute(
            select(func.count(), func.coalesce(func.max(t.id), 0), func.max(t.created_at)).where(
                t.tenant_id == tenant_id
            )
        ).one()
        if bank is not None and (count, max_id, newest) == (bank.count, bank.max_id, bank.newest):
            return bank
        if bank is not None and max_id > bank.max_id:
            new = conn.execute(
                select(t.id, t.pdq, t.sha256).where(and_(t.tenant_id == tenant_id, t.id > bank.max_id)).order_by(t.id)
            ).all()
            if bank.count + len(new) == count:  # additions only
                self._add(bank, new)
                bank.count, bank.max_id, bank.newest = count, max_id, newest
                if len(bank.delta_ids) > DELTA_LIMIT:
                    self._fold(bank)
                return bank
        fresh = self._load(conn, tenant_id)
        fresh.newest = newest
        return fresh

    def _load(self, conn: Connection, tenant_id: str) -> _TenantBank:
        t = bank_entries.c
        ids: list[int] = []
        hexes: list[str] = []
        count = max_id = 0
        sha_ids: list[int] = []
        sha_keys: list[int] = []
        # Statement-level option: Connection.execution_options() would change the caller's connection.
        result = conn.execute(
            select(t.id, t.pdq, t.sha256)
            .where(t.tenant_id == tenant_id)
            .order_by(t.id)
            .execution_options(yield_per=50_000)
        )
        for row in result:
            count, max_id = count + 1, row.id
            if row.pdq:
                ids.append(row.id)
                hexes.append(row.pdq)
            if row.sha256:
                sha_ids.append(row.id)
                sha_keys.append(_sha_key(row.sha256))
        bank = _TenantBank(
            count=count,
            max_id=max_id,
            ids=np.array(ids, dtype=np.int64),
            index=PdqIndex(pdq_to_words(hexes)),
        )
        keys = np.array(sha_keys, dtype=np.uint64)
        order = np.argsort(keys, kind="stable")
        bank.sha_keys, bank.sha_ids = keys[order], np.array(sha_ids, dtype=np.int64)[order]
        return bank

    def _add(self, bank: _TenantBank, rows: Any) -> None:
        with_pdq = [r for r in rows if r.pdq]
        if with_pdq:
            bank.delta_ids += [r.id for r in with_pdq]
            bank.delta_words.append(pdq_to_words([r.pdq for r in with_pdq]))
        with_sha = [r for r in rows if r.sha256]
        if with_sha:
            keys = np.concatenate([bank.sha_keys, np.array([_sha_key(r.sha256) for r in with_sha], dtype=np.uint64)])
            ids = np.concatenate([bank.sha_ids, np.array([r.id for r in with_sha], dtype=np.int64)])
            order = np.argsort(keys, kind="stable")
            bank.sha_keys, bank.sha_ids = keys[order], ids[order]

    def _fold(self, bank: _TenantBank) -> None:
        bank.ids = np.concatenate([bank.ids, np.array(bank.delta_ids, dtype=np.int64)])
        bank.index = PdqIndex(np.concatenate([bank.index.words, *bank.delta_words]))
        bank.delta_ids, bank.delta_words = [], []

    # ------------------------------------------------------------ matching

    def candidates(
        self, tenant_id: str, sha256: str, pdq: str | None, conn: Connection | None = None
    ) -> list[tuple[int, int, str]]:
        """(entry id, distance, hash kind) of every entry within reach, closest first."""
        bank = self._bank(tenant_id, conn)
        out: list[tuple[int, int, str]] = []
        key = np.uint64(_sha_key(sha256))
        lo, hi = np.searchsorted(bank.sha_keys, key, "left"), np.searchsorted(bank.sha_keys, key, "right")
        out += [(int(i), 0, "sha256") for i in bank.sha_ids[lo:hi]]
        if pdq:
            query = pdq_to_words([pdq])[0]
            out += [(int(bank.ids[row]), d, "pdq") for row, d in bank.index.search(query, self.max_distance)]
            if bank.delta_ids:
                words = np.concatenate(bank.delta_words)
                out += [(bank.delta_ids[row], d, "pdq") for row, d in brute_force(words, query, self.max_distance)]
        return sorted(out, key=lambda c: c[1])

    def lookup(self, tenant_id: str, sha256: str, pdq: str | None, conn: Connection | None = None) -> Finding:
        """The banks stage's finding: the closest match (bad before good at equal distance), or none."""
        found = self.candidates(tenant_id, sha256, pdq, conn)
        match: dict[str, Any] | None = None
        if found:
            meta = self._entries(conn, tenant_id, [c[0] for c in found[:50]])
            ranked = sorted(
                (c for c in found if c[0] in meta and not (c[2] == "sha256" and meta[c[0]]["sha256"] != sha256)),
                key=lambda c: (c[1], meta[c[0]]["kind"] != "bad"),
            )
            if ranked:
                entry_id, distance, kind = ranked[0]
                m = meta[entry_id]
                match = {
                    "entry_id": entry_id,
                    "bank": m["bank"],
                    "kind": m["kind"],
                    "label": m["label"],
                    "category": m["category"],
                    "distance": distance,
                    "hash": kind,
                    "near": distance > self.decisive_distance,
                }
        return Finding(
            analyzer=ANALYZER,
            version=VERSION,
            stage="banks",
            covered=[],
            bank_match=match,
            rationale={
                "bank": f"matched {match['bank']} ({match['kind']}, {match['hash']} distance {match['distance']})"
            }
            if match
            else {},
        )

    def _entries(self, conn: Connection | None, tenant_id: str, ids: list[int]) -> dict[int, dict[str, Any]]:
        t = bank_entries.c
        # The tenant filter matters: an id cached a moment ago may belong to another tenant now.
        query = select(t.id, t.bank, t.kind, t.label, t.category, t.sha256).where(
            and_(t.tenant_id == tenant_id, t.id.in_(ids))
        )
        if conn is None:
            with self.engine.connect() as own:
                rows = own.execute(query).all()
        else:
            rows = conn.execute(query).all()
        return {r.id: dict(r._mapping) for r in rows}


# ---------------------------------------------------------------- administration
