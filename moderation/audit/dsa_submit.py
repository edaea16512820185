"""Sending statements of reasons to the DSA Transparency Database (`moderation audit
submit-dsa`): batches of at most 100 to `POST /api/v1/statements`, each PUID once (the ledger
`dsa_ledger` holds what was sent; the database never takes a PUID twice and has no update).

The database refuses a whole batch when one statement fails its rules (422 with
`errors.statement_<i>`): those statements are dead-lettered in the ledger with the database's
message and the rest is sent again. PUIDs it already holds (`errors.existing_puids`: an earlier
run sent them and stopped before recording it) are recorded as sent. 429 waits for
`Retry-After`; 5xx and network errors back off; after `max_attempts` the run stops, and what it
had not recorded is sent by the next run."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import Engine, and_, select

from moderation.audit.chain import Event, append
from moderation.audit.decisions import DecisionFilter, stream
from moderation.audit.exports import dsa_statements
from moderation.db.sql import insert_ignore
from moderation.db.tables import dsa_ledger, utcnow
from moderation.policy import Policy

log = logging.getLogger(__name__)
BATCH = 100
OURS = ("schema_version", "decision_id", "submission_id")  # exported beside a statement, never sent


class SubmitFailed(Exception):
    """The database kept failing (5xx, network, 429 beyond patience, an answer we cannot read)."""


@dataclass
class Outcome:
    sent: int = 0
    rejected: int = 0
    already_there: int = 0
    skipped: int = 0
    requests: int = 0
    errors: list[str] = field(default_factory=list)


def pending(engine: Engine, tenant_id: str, policies: dict[str, Policy]) -> Iterator[dict[str, Any]]:
    """The tenant's statements whose PUID the ledger does not hold, in decision order."""
    for rows in stream(engine, tenant_id, DecisionFilter(action=None)):
        batch = list(dsa_statements(engine, rows, policies))
        if not batch:
            continue
        with engine.connect() as conn:
            known = set(
                conn.execute(
                    select(dsa_ledger.c.puid).where(
                        and_(dsa_ledger.c.tenant_id == tenant_id, dsa_ledger.c.puid.in_([s["puid"] for s in batch]))
                    )
                ).scalars()
            )
        yield from (s for s in batch if s["puid"] not in known)


def submit(
    engine: Engine,
    tenant_id: str,
    statements: Iterable[dict[str, Any]],
    endpoint: str,
    token: str,
    *,
    client: httpx.Client | None = None,
    sleep: Callable[[float], None] = time.sleep,
    max_attempts: int = 6,
    batch_size: int = BATCH,
) -> Outcome:
    """Send `statements` (as `pending` yields them). Raises SubmitFailed when the database keeps
    failing; everything recorded before stays recorded."""
    outcome = Outcome()
    http = client or httpx.Client(timeout=30)
    url = endpoint.rstrip("/") + "/api/v1/statements"
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    batch: list[dict[str, Any]] = []
    try:
        for s in statements:
            if any(b["puid"] == s["puid"] for b in batch):  # never one PUID twice in a batch
                outcome.skipped += 1
                continue
            batch.append(s)
            if len(batch) == batch_size:
                _send(engine, tenant_id, http, url, headers, batch, outcome, sleep, max_attempts, endpoint)
                batch = []
        if batch:
            _send(engine, tenant_id, http, url, headers, batch, outcome, sleep, max_attempts, endpoint)
    finally:
        if client is None:
            http.close()
    return outcome


def _send(
    engine: Engine,
    tenant_id: str,
    http: httpx.Client,
    url: str,
    headers: dict[str, str],
    batch: list[dict[str, Any]],
    outcome: Outcome,
    sleep: Callable[[float], None],
    max_attempts: int,
    endpoint: str,
) -> None:
    while batch:
        body = {"statements": [{k: v for k, v in s.items() if k not in OURS} for s in batch]}
        answer = _post(http, url, headers, body, outcome, sleep, max_attempts)
        if answer.status_code == 201:
            _record(engine, tenant_id, batch, "sent", None, endpoint)
            outcome.sent += len(batch)
            return
        errors = _errors(answer)
        bad = {int(k.split("_", 1)[1]): v for k, v in errors.items() if k.startswith("statement_") and k[10:].isdigit()}
        existing = set(errors.get("existing_puids") or [])
        if bad:
            refused = [batch[i] for i in sorted(bad) if i < len(batch)]
            for i in sorted(bad):
                if i < len(batch):
                    message = json.dumps(bad[i], sort_keys=True)[:4000]
                    _record(engine, tenant_id, [batch[i]], "rejected", message, endpoint)
                    log.error("statement %s refused by the Transparency Database: %s", batch[i]["puid"], message)
            outcome.rejected += len(refused)
            batch = [s for i, s in enumerate(batch) if i not in bad]
            continue
        if existing:
            held = [s for s in batch if s["puid"] in existing]
            _record(engine, tenant_id, held, "sent", "the database held this PUID already", endpoint)
            outcome.already_there += len(held)
            batch = [s for s in batch if s["puid"] not in existing]
            continue
        raise SubmitFailed(f"HTTP {answer.status_code}: {answer.text[:500]}")


def _errors(answer: httpx.Response) -> dict[str, Any]:
    try:
        body = answer.json()
    except ValueError as exc:
        raise SubmitFailed(f"HTTP {answer.status_code} without JSON: {answer.text[:200]}") from exc
    errors = body.get("errors") if isinstance(body, dict) else None
    if answer.status_code != 422 or not isinstance(errors, dict):
        raise SubmitFailed(f"HTTP {answer.status_code}: {answer.text[:500]}")
    return errors


def _post(
    http: httpx.Client,
    url: str,
    headers: dict[str, str],
    body: dict[str, Any],
    outcome: Outcome,
    sleep: Callable[[float], None],
    max_attempts: int,
) -> httpx.Response:
    """One batch, retried on 429 (Retry-After), 5xx and network errors with backoff."""
    delay = 1.0
    for attempt in range(1, max_attempts + 1):
        outcome.requests += 1
        try:
            answer = http.post(url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if answer.status_code not in (429,) and answer.status_code < 500:
                return answer
            problem = f"HTTP {answer.status_code}"
            if answer.status_code == 429:
                retry_after = answer.headers.get("Retry-After", "")
                delay = float(retry_after) if retry_after.replace(".", "", 1).isdigit() else delay
        outcome.errors.append(problem)
        if attempt == max_attempts:
            raise SubmitFailed(f"gave up after {attempt} attempts: {problem}")
        sleep(min(delay, 60.0))
        delay = min(delay * 2, 60.0)
    raise SubmitFailed("unreachable")


def _record(
    engine: Engine, tenant_id: str, statements: list[dict[str, Any]], status: str, error: str | None, endpoint: str
) -> None:
    if not statements:
        return
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            insert_ignore(conn, dsa_ledger),
            [
                {
                    "tenant_id": tenant_id,
                    "puid": s["puid"],
                    "submission_id": s["submission_id"],
                    "decision_id": s["decision_id"],
                    "status": status,
                    "error": error,
                    "endpoint": endpoint[:500],
                    "sent_at": now,
                }
                for s in statements
            ],
        )
        action = "statement_submitted" if status == "sent" else "statement_rejected"
        append(
            conn,
            tenant_id,
            [
                Event(
                    action,
                    actor="cli",
                    submission_id=s["submission_id"],
                    automated=False,
                    facts={"puid": s["puid"], "decision_id": s["decision_id"], "endpoint": endpoint, "error": error},
                )
                for s in statements
            ],
        )
