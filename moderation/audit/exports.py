"""Exports of a tenant's decisions, streamed with flat memory and no row cap: CSV (cells that a
spreadsheet would run as a formula neutralised), JSON Lines, and DSA statements of reasons (JSON
Lines, one statement per line: one per submission with a restrictive decision, each checked by
the Transparency Database's rules before it is written)."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, and_, func, select

from moderation.audit.chain import Event, append
from moderation.audit.decisions import DecisionFilter, decision_json, stream
from moderation.audit.dsa import RESTRICTIVE, statement, validate, with_schema
from moderation.db.tables import AUTOMATED, decisions
from moderation.policy import Policy
from moderation.policy.dsa_vocab import SCHEMA_VERSION

log = logging.getLogger(__name__)
FORMATS = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson", "dsa": "application/x-ndjson"}
CSV_COLUMNS = (
    "decision_id",
    "submission_id",
    "puid",
    "kind",
    "action",
    "categories",
    "automated",
    "reviewer",
    "policy_id",
    "policy_version",
    "decided_at",
    "uploaded_at",
    "reasons",
)


def neutralise(cell: str) -> str:
    """A cell a spreadsheet would evaluate (= + - @, tab, CR) is prefixed with an apostrophe."""
    return "'" + cell if cell[:1] in ("=", "+", "-", "@", "\t", "\r") else cell


def _csv_line(values: list[Any]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerow([neutralise("" if v is None else str(v)) for v in values])
    return buf.getvalue().encode()


def _csv(rows: list[Any]) -> Iterator[bytes]:
    for r in rows:
        j = decision_json(r)
        yield _csv_line(
            [
                j["id"],
                j["submission_id"],
                j["puid"],
                j["kind"],
                j["action"],
                json.dumps(j["categories"], sort_keys=True),
                j["automated"],
                j["reviewer"],
                j["policy"]["id"],
                j["policy"]["version"],
                j["decided_at"],
                j["uploaded_at"],
                ";".join(str(x.get("code")) for x in j["reasons"] or [] if isinstance(x, dict)),
            ]
        )


def _line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def dsa_statements(engine: Engine, rows: list[Any], policies: dict[str, Policy]) -> Iterator[dict[str, Any]]:
    """The statements of a batch of decision rows: one per submission, from its first
    restrictive decision (the database never takes a PUID twice; later changes stay in our log)."""
    subs = sorted({r.submission_id for r in rows if r.action in RESTRICTIVE})
    if not subs:
        return
    with engine.connect() as conn:
        first = {
            sid: first_id
            for sid, first_id in conn.execute(
                select(decisions.c.submission_id, func.min(decisions.c.id))
                .where(and_(decisions.c.submission_id.in_(subs), decisions.c.action.in_(RESTRICTIVE)))
                .group_by(decisions.c.submission_id)
            ).all()
        }
        flagged = set(
            conn.execute(
                select(decisions.c.submission_id).where(
                    and_(
                        decisions.c.submission_id.in_(subs),
                        decisions.c.dedupe_key == AUTOMATED,
                        decisions.c.action != "allow",
                    )
                )
            ).scalars()
        )
    for r in rows:
        if r.action not in RESTRICTIVE or first.get(r.submission_id) != r.id:
            continue
        row = _SubmissionView(r)
        s = statement(row, r, policies.get(r.policy_id), r.submission_id in flagged)
        if s is None:
            continue
        problems = validate(s)
        if problems:  # a bug of ours: never hand the regulator a statement it would refuse
            log.critical("statement for decision %s fails the database's rules: %s", r.id, problems)
            continue
        yield {**with_schema(s), "decision_id": int(r.id), "submission_id": r.submission_id}


class _SubmissionView:
    """What `statement` reads of a submission, from a joined decision row."""

    def __init__(self, r: Any) -> None:
        self.id = r.submission_id
        self.external_id = r.external_id
        self.created_at = r.created_at


def export(
    engine: Engine,
    tenant_id: str,
    f: DecisionFilter,
    fmt: str,
    policies: dict[str, Policy],
    actor: str,
    progress: Any = None,
) -> Iterator[bytes]:
    """The export as chunks of bytes; when it has been read to the end, an `exported` audit event
    (format, filters, rows) goes into the tenant's chain. `progress(n)` is called per batch."""
    f.check()
    if fmt not in FORMATS:
        raise ValueError(fmt)
    written = 0
    if fmt == "csv":
        yield _csv_line(list(CSV_COLUMNS))
    for rows in stream(engine, tenant_id, f):
        if fmt == "csv":
            chunk = b"".join(_csv(rows))
            written += len(rows)
        elif fmt == "jsonl":
            chunk = b"".join(_line(decision_json(r)) for r in rows)
            written += len(rows)
        else:
            lines = [_line(s) for s in dsa_statements(engine, rows, policies)]
            chunk = b"".join(lines)
            written += len(lines)
        if progress is not None:
            progress(len(rows))
        yield chunk
    filters = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in vars(f).items() if v is not None}
    with engine.begin() as conn:
        facts = {"format": fmt, "filters": filters, "rows": written}
        if fmt == "dsa":
            facts["schema_version"] = SCHEMA_VERSION
        append(conn, tenant_id, [Event("exported", actor=actor, automated=False, facts=facts)])
