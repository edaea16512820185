"""Hash banks, minimal form: known-bad and known-good images per tenant, matched by PDQ distance
(or exact SHA-256). A match decides without any model.

Entries are read once per tenant and kept in-process for a few seconds (new entries apply
within `ttl_s`); matching is a vectorised popcount over the tenant's PDQ hashes.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, insert, select

from moderation import audit
from moderation.analyzers.base import Finding
from moderation.images import Limits, inspect_image
from moderation.models import bank_entries, utcnow

ANALYZER = "banks"
VERSION = "pdq-1"
DEFAULT_MAX_DISTANCE = 31

_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint16)


@dataclass
class _TenantBank:
    loaded_at: float
    ids: np.ndarray  # int64
    pdq: np.ndarray  # (n, 32) uint8
    meta: list[dict[str, Any]]  # per PDQ row
    by_sha: dict[str, dict[str, Any]]


class BankIndex:
    def __init__(self, engine: Engine, ttl_s: float = 5.0, max_distance: int = DEFAULT_MAX_DISTANCE) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        self.max_distance = max_distance
        self._lock = threading.Lock()
        self._tenants: dict[str, _TenantBank] = {}

    def invalidate(self, tenant_id: str | None = None) -> None:
        with self._lock:
            if tenant_id is None:
                self._tenants.clear()
            else:
                self._tenants.pop(tenant_id, None)

    def _bank(self, tenant_id: str, conn: Connection | None = None) -> _TenantBank:
        now = time.monotonic()
        with self._lock:
            bank = self._tenants.get(tenant_id)
        if bank is not None and now - bank.loaded_at < self.ttl_s:
            return bank
        query = select(bank_entries).where(bank_entries.c.tenant_id == tenant_id)
        if conn is not None:  # the caller's transaction (SQLite allows one writer at a time)
            rows = conn.execute(query).all()
        else:
            with self.engine.connect() as own:
                rows = own.execute(query).all()
        with_pdq = [r for r in rows if r.pdq]
        bank = _TenantBank(
            loaded_at=now,
            ids=np.array([r.id for r in with_pdq], dtype=np.int64),
            pdq=np.array(
                [np.frombuffer(bytes.fromhex(r.pdq), dtype=np.uint8) for r in with_pdq], dtype=np.uint8
            ).reshape(-1, 32),
            meta=[_meta(r) for r in with_pdq],
            by_sha={r.sha256: _meta(r) for r in rows if r.sha256},
        )
        with self._lock:
            self._tenants[tenant_id] = bank
        return bank

    def lookup(self, tenant_id: str, sha256: str, pdq: str | None, conn: Connection | None = None) -> Finding:
        """The banks stage's finding: a match (closest first, bad before good) or none."""
        bank = self._bank(tenant_id, conn)
        match: dict[str, Any] | None = None
        if sha256 in bank.by_sha:
            match = {**bank.by_sha[sha256], "distance": 0, "hash": "sha256"}
        elif pdq and len(bank.ids):
            probe = np.frombuffer(bytes.fromhex(pdq), dtype=np.uint8)
            dist = _POPCOUNT[np.bitwise_xor(bank.pdq, probe)].sum(axis=1)
            hits = np.flatnonzero(dist <= self.max_distance)
            if len(hits):
                # bad beats good at equal distance: a known-bad copy is never waved through.
                best = min(hits, key=lambda i: (int(dist[i]), bank.meta[i]["kind"] != "bad"))
                match = {**bank.meta[best], "distance": int(dist[best]), "hash": "pdq"}
        return Finding(
            analyzer=ANALYZER,
            version=VERSION,
            stage="banks",
            covered=[],
            bank_match=match,
            rationale={"bank": f"matched {match['bank']} ({match['kind']})"} if match else {},
        )


def _meta(row: Any) -> dict[str, Any]:
    return {"entry_id": int(row.id), "bank": row.bank, "kind": row.kind, "label": row.label, "category": row.category}


def add_image(
    conn: Connection,
    limits: Limits,
    tenant_id: str,
    bank: str,
    kind: str,
    data: bytes,
    category: str | None = None,
    label: str | None = None,
    actor: str = "admin",
) -> int:
    """Hash an image and add it to a bank. Raises ModerationError for bad images."""
    if kind not in ("bad", "good"):
        raise ValueError("kind must be 'bad' or 'good'")
    info, _ = inspect_image(data, limits)
    entry_id = conn.execute(
        insert(bank_entries)
        .values(
            tenant_id=tenant_id,
            bank=bank,
            kind=kind,
            label=label,
            category=category,
            pdq=info.pdq,
            phash=info.phash,
            sha256=info.sha256,
            created_at=utcnow(),
        )
        .returning(bank_entries.c.id)
    ).scalar_one()
    audit.append(
        conn,
        tenant_id,
        [
            audit.Event(
                "bank_changed",
                actor=actor,
                automated=False,
                category=category,
                facts={
                    "op": "add",
                    "bank": bank,
                    "kind": kind,
                    "entry_id": entry_id,
                    "sha256": info.sha256,
                    "pdq": info.pdq,
                    "label": label,
                },
            )
        ],
    )
    return int(entry_id)
