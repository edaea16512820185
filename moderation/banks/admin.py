"""Bank administration: create and list banks, add images and hash lists, remove and export
entries. Every change is audited in the tenant's chain; matching reads them through `index`."""

from __future__ import annotations

import csv
import io
import re
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, select

from moderation import audit
from moderation.db.tables import bank_entries, banks, utcnow
from moderation.errors import ModerationError
from moderation.intake.images import Limits, inspect_image
from moderation.intake.text import check_text

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _audit(conn: Connection, tenant_id: str, actor: str, category: str | None, facts: dict[str, Any]) -> None:
    event = audit.Event("bank_changed", actor=actor, automated=False, category=category, facts=facts)
    audit.append(conn, tenant_id, [event])


def _bank_row(conn: Connection, tenant_id: str, name: str) -> Any:
    if not _NAME.fullmatch(name):  # no such bank can exist (and NUL never reaches the driver)
        raise ModerationError("NOT_FOUND", "No such bank.")
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
    """Hash an image and add it to a bank. Raises ModerationError for bad images or an unknown bank.
    (It decodes inside the caller's transaction: for uploads, hash with `image_entry` first.)"""
    return add_entries(conn, tenant_id, bank, [image_entry(limits, data, label)], actor)[0]


def image_entry(limits: Limits, data: bytes, label: str | None = None) -> dict[str, Any]:
    """The bank entry of an image: validate and hash it (raises ModerationError for bad images).
    Call it before opening the transaction that adds it: the audit append in `add_entries` locks
    the tenant's chain head, and a decode must never hold that lock."""
    info = inspect_image(data, limits)[0]
    return {"pdq": info.pdq, "phash": info.phash, "sha256": info.sha256, "label": label}


def parse_hash_list(text: str) -> list[dict[str, Any]]:
    """Parse a CSV or TSV hash list: a header naming `pdq` (and optionally `label`, `sha256`,
    `phash`), or headerless lines of `<pdq hex>[,<label>]`. Raises ModerationError with the line."""
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise ModerationError("INVALID_REQUEST", "The hash list is empty.")
    dialect = "excel-tab" if "\t" in lines[0] else "excel"
    out: list[dict[str, Any]] = []
    try:
        first = [c.strip().lower() for c in next(csv.reader([lines[0]], dialect=dialect), [])]
        header = first if "pdq" in first or "sha256" in first else None
        reader = csv.reader(lines[1:] if header else lines, dialect=dialect)
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
                "label": _unguard((cols.get("label") or "").strip()) or None,
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


# A cell a spreadsheet would run as a formula (=, +, -, @, and tab or CR before them).
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _guard(cell: str) -> str:
    """CSV injection: a label opened in a spreadsheet must stay text ('=HYPERLINK(…)' → "'=HYPERLINK(…)")."""
    return "'" + cell if cell.startswith(_FORMULA) else cell


def _unguard(cell: str) -> str:
    """What `_guard` added, taken off on import: an export imports back unchanged."""
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(_FORMULA) else cell


def export_hash_list(conn: Connection, tenant_id: str, bank: str) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["pdq", "label", "sha256", "phash"])
    after = 0
    while rows := list_entries(conn, tenant_id, bank, after, 5000):
        for r in rows:
            w.writerow([r["pdq"] or "", _guard(r["label"] or ""), r["sha256"] or "", r["phash"] or ""])
        after = rows[-1]["id"]
    return buf.getvalue()
