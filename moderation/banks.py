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

import csv
import io
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, and_, delete, func, insert, select

from moderation import audit
from moderation.analyzers.base import Finding
from moderation.errors import ModerationError
from moderation.hashindex import PdqIndex, brute_force, pdq_to_words
from moderation.images import Limits, inspect_image
from moderation.models import bank_entries, banks, utcnow
from moderation.text import check_text

ANALYZER = "banks"
VERSION = "pdq-2"
DEFAULT_MAX_DISTANCE = 31
# Within this distance a match is a copy and decides; beyond it (up to 31) it is a near match that
# goes on through the cascade and never ends in allow. Same-picture memes with other captions sit
# 12-72 bits apart, re-encoded copies 0-4 (bench/meme_hashes.py; bench/RESULTS.md).
DEFAULT_DECISIVE_DISTANCE = 10
DELTA_LIMIT = 20_000
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


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

    def invalidate(self, tenant_id: str | None = None) -> None:
        with self._lock:
            if tenant_id is None:
                self._tenants.clear()
            else:
                self._tenants.pop(tenant_id, None)

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


def _audit(conn: Connection, tenant_id: str, actor: str, category: str | None, facts: dict[str, Any]) -> None:
    event = audit.Event("bank_changed", actor=actor, automated=False, category=category, facts=facts)
    audit.append(conn, tenant_id, [event])


def _bank_row(conn: Connection, tenant_id: str, name: str) -> Any:
    row = conn.execute(select(banks).where(and_(banks.c.tenant_id == tenant_id, banks.c.name == name))).first()
    if row is None:
        raise ModerationError("NOT_FOUND", f"No bank {name!r}.")
    return row


def create_bank(
    conn: Connection,
    tenant_id: str,
    name: str,
    kind: str,
    category: str | None = None,
    description: str | None = None,
    actor: str = "admin",
) -> dict[str, Any]:
    from moderation.policy import TAXONOMY

    check_text("description", description, 2000)
    if not _NAME.fullmatch(name):
        raise ModerationError("INVALID_REQUEST", "A bank name is 1-64 letters, digits, '_', '-' or '.'.", field="name")
    if kind not in ("bad", "good"):
        raise ModerationError("INVALID_REQUEST", "kind is 'bad' or 'good'.", field="kind")
    if category is not None and category not in TAXONOMY:
        raise ModerationError("INVALID_REQUEST", f"category must be one of {', '.join(TAXONOMY)}.", field="category")
    exists = conn.execute(
        select(banks.c.name).where(and_(banks.c.tenant_id == tenant_id, banks.c.name == name))
    ).first()
    if exists:
        raise ModerationError("CONFLICT", f"Bank {name!r} exists.")
    values = {
        "tenant_id": tenant_id,
        "name": name,
        "kind": kind,
        "category": category,
        "description": description,
        "created_at": utcnow(),
    }
    conn.execute(insert(banks), values)
    _audit(conn, tenant_id, actor, category, {"op": "create", "bank": name, "kind": kind})
    return {k: v for k, v in values.items() if k != "tenant_id"}


def list_banks(conn: Connection, tenant_id: str) -> list[dict[str, Any]]:
    counts: dict[str, int] = dict(
        conn.execute(
            select(bank_entries.c.bank, func.count())
            .where(bank_entries.c.tenant_id == tenant_id)
            .group_by(bank_entries.c.bank)
        ).all()
    )
    rows = conn.execute(select(banks).where(banks.c.tenant_id == tenant_id).order_by(banks.c.name)).all()
    return [
        {
            "name": r.name,
            "kind": r.kind,
            "category": r.category,
            "description": r.description,
            "entries": int(counts.get(r.name, 0)),
        }
        for r in rows
    ]


def add_entries(
    conn: Connection,
    tenant_id: str,
    bank: str,
    entries: list[dict[str, Any]],
    actor: str = "admin",
) -> list[int]:
    """Insert entries ({pdq?, phash?, sha256?, label?}) into a bank; returns their ids."""
    b = _bank_row(conn, tenant_id, bank)
    for e in entries:
        check_text("label", e.get("label"), 200)
        if e.get("phash") is not None and not re.fullmatch(r"[0-9a-f]{16}", str(e["phash"])):
            raise ModerationError("INVALID_REQUEST", f"{e['phash']!r:.40} is not a 64-bit pHash in hex.")
    now = utcnow()
    rows = [
        {
            "tenant_id": tenant_id,
            "bank": bank,
            "kind": b.kind,
            "category": b.category,
            "label": e.get("label"),
            "pdq": e.get("pdq"),
            "phash": e.get("phash"),
            "sha256": e.get("sha256"),
            "created_at": now,
        }
        for e in entries
    ]
    if not rows:
        return []
    ids = [int(i) for i in conn.execute(insert(bank_entries).returning(bank_entries.c.id), rows).scalars()]
    _audit(
        conn,
        tenant_id,
        actor,
        b.category,
        {
            "op": "add",
            "bank": bank,
            "kind": b.kind,
            "entries": len(ids),
            "first_id": min(ids),
            "last_id": max(ids),
            "hashes": [r["pdq"] or r["sha256"] for r in rows[:20]],
        },
    )
    return ids


def add_image(
    conn: Connection,
    limits: Limits,
    tenant_id: str,
    bank: str,
    data: bytes,
    label: str | None = None,
    actor: str = "admin",
) -> int:
    """Hash an image and add it to a bank. Raises ModerationError for bad images or an unknown bank."""
    info, _ = inspect_image(data, limits)
    return add_entries(
        conn, tenant_id, bank, [{"pdq": info.pdq, "phash": info.phash, "sha256": info.sha256, "label": label}], actor
    )[0]


def parse_hash_list(text: str) -> list[dict[str, Any]]:
    """Parse a CSV or TSV hash list: a header naming `pdq` (and optionally `label`, `sha256`,
    `phash`), or headerless lines of `<pdq hex>[,<label>]`. Raises ModerationError with the line."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise ModerationError("INVALID_REQUEST", "The hash list is empty.")
    dialect = "excel-tab" if "\t" in lines[0] else "excel"
    first = [c.strip().lower() for c in next(csv.reader([lines[0]], dialect=dialect))]
    header = first if "pdq" in first or "sha256" in first else None
    reader = csv.reader(lines[1:] if header else lines, dialect=dialect)
    out: list[dict[str, Any]] = []
    try:
        rows = list(enumerate(reader, start=2 if header else 1))
    except csv.Error as exc:
        raise ModerationError("INVALID_REQUEST", f"The hash list is not valid CSV/TSV: {exc}") from exc
    for n, cells in rows:
        cols: dict[str, str] = (
            dict(zip(header, cells, strict=False)) if header else dict(zip(("pdq", "label"), cells, strict=False))
        )
        pdq = (cols.get("pdq") or "").strip().lower() or None
        sha = (cols.get("sha256") or "").strip().lower() or None
        if pdq is not None and not _HEX64.match(pdq):
            raise ModerationError("INVALID_REQUEST", f"line {n}: {pdq!r} is not a 64-hex-digit PDQ hash.")
        if sha is not None and not _HEX64.match(sha):
            raise ModerationError("INVALID_REQUEST", f"line {n}: {sha!r} is not a SHA-256 hex digest.")
        if pdq is None and sha is None:
            raise ModerationError("INVALID_REQUEST", f"line {n}: no pdq or sha256.")
        out.append(
            {
                "pdq": pdq,
                "sha256": sha,
                "phash": (cols.get("phash") or "").strip() or None,
                "label": (cols.get("label") or "").strip() or None,
            }
        )
    return out


def import_hash_list(conn: Connection, tenant_id: str, bank: str, text: str, actor: str = "admin") -> int:
    return len(add_entries(conn, tenant_id, bank, parse_hash_list(text), actor))


def remove_entry(conn: Connection, tenant_id: str, bank: str, entry_id: int, actor: str = "admin") -> None:
    b = _bank_row(conn, tenant_id, bank)
    t = bank_entries.c
    gone = conn.execute(
        delete(bank_entries)
        .where(and_(t.tenant_id == tenant_id, t.bank == bank, t.id == entry_id))
        .returning(t.pdq, t.sha256)
    ).first()
    if gone is None:
        raise ModerationError("NOT_FOUND", f"No entry {entry_id} in bank {bank!r}.")
    _audit(
        conn,
        tenant_id,
        actor,
        b.category,
        {"op": "remove", "bank": bank, "entry_id": entry_id, "pdq": gone.pdq, "sha256": gone.sha256},
    )


def list_entries(
    conn: Connection, tenant_id: str, bank: str, after_id: int = 0, limit: int = 100
) -> list[dict[str, Any]]:
    _bank_row(conn, tenant_id, bank)
    t = bank_entries.c
    rows = conn.execute(
        select(t.id, t.label, t.pdq, t.phash, t.sha256, t.created_at)
        .where(and_(t.tenant_id == tenant_id, t.bank == bank, t.id > after_id))
        .order_by(t.id)
        .limit(limit)
    ).all()
    return [{**dict(r._mapping), "created_at": r.created_at.isoformat() if r.created_at else None} for r in rows]


def export_hash_list(conn: Connection, tenant_id: str, bank: str) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["pdq", "label", "sha256", "phash"])
    after = 0
    while rows := list_entries(conn, tenant_id, bank, after, 5000):
        for r in rows:
            w.writerow([r["pdq"] or "", r["label"] or "", r["sha256"] or "", r["phash"] or ""])
        after = rows[-1]["id"]
    return buf.getvalue()
