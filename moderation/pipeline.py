"""The life of a submission: accept, advance through the cascade, decide, reconcile.

Every function here is plain Python over a `Context`; Celery tasks in `workers/` are thin
shims that call them. Invariants:
- A submission row is committed before its task is published (publish after commit).
- Each task delivery counts an attempt in the database first; past `max_attempts` the item is
  dead-lettered and fails closed to human review (a poison image is never retried forever).
- A decision is inserted with a unique key per submission, so a redelivered or duplicated
  message is a no-op: exactly one automated decision per submission.
- Analyzer failures fail closed (review), never allow.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from PIL import Image
from sqlalchemy import Connection, Engine, and_, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from moderation import audit
from moderation.analyzers.base import AnalysisInput, Analyzer, Finding, TransientAnalyzerError, load_analyzer
from moderation.auth import KeyCache, Principal
from moderation.banks import BankIndex
from moderation.blobs import BlobStore
from moderation.db import make_engine
from moderation.errors import ModerationError
from moderation.images import Limits, inspect_image, to_rgb
from moderation.models import dead_letters, decisions, findings, iso, review_tasks, submissions, utcnow
from moderation.policy import Decision, Policy, Stage, evaluate, load_policies, qa_draw
from moderation.queue import Q_DECIDE as Q_DECIDE
from moderation.queue import Q_INGEST, T_ANALYZE, T_DECIDE, Publisher
from moderation.settings import Settings

log = logging.getLogger(__name__)

ACTIVE = ("queued", "analyzing")
PRIORITIES = ("high", "normal", "low")
AUTOMATED = "automated"


@dataclass
class Context:
    settings: Settings
    engine: Engine
    blobs: BlobStore
    publisher: Publisher
    policies: dict[str, Policy]
    banks: BankIndex
    limits: Limits
    _analyzers: dict[str, Analyzer] = field(default_factory=dict)
    _keys: KeyCache | None = None

    @property
    def keys(self) -> KeyCache:
        if self._keys is None:
            self._keys = KeyCache(self.engine, self.settings.key_cache_ttl_s)
        return self._keys

    @classmethod
    def build(cls, settings: Settings, publisher: Publisher | None = None) -> Context:
        engine = make_engine(settings)
        return cls(
            settings=settings,
            engine=engine,
            blobs=BlobStore(settings.blobs, fsync=settings.blob_fsync),
            publisher=publisher or Publisher(settings),
            policies=load_policies(settings.policies_dir),
            banks=BankIndex(engine, ttl_s=settings.bank_cache_ttl_s),
            limits=Limits(
                max_bytes=settings.max_upload_bytes,
                max_pixels=settings.max_pixels,
                max_frames=settings.max_frames,
                max_total_pixels=settings.max_total_pixels,
                hash_side=settings.hash_side,
            ),
        )

    def analyzer(self, stage: Stage) -> Analyzer:
        assert stage.analyzer is not None
        key = f"{stage.analyzer}|{sorted(stage.options.items())}"
        if key not in self._analyzers:
            self._analyzers[key] = load_analyzer(stage.analyzer, stage.options)
        return self._analyzers[key]


# ---------------------------------------------------------------- accept


@dataclass
class SubmissionRequest:
    tenant_id: str
    actor: str  # api key id, or "queue:<key id>"
    default_policy: str | None = None
    external_id: str | None = None
    idempotency_key: str | None = None
    caption: str | None = None
    uploader_id: str | None = None
    callback_url: str | None = None
    priority: str = "normal"
    policy: str | None = None
    request_ip: str | None = None
    source: str = "http"


_URL = re.compile(r"^https?://[^\s]+$")


def _check_fields(ctx: Context, req: SubmissionRequest) -> str:
    def bad(message: str, **data: Any) -> ModerationError:
        return ModerationError("INVALID_REQUEST", message, **data)

    if req.priority not in PRIORITIES:
        raise bad(f"priority must be one of {', '.join(PRIORITIES)}.", field="priority")
    for name, value, limit in (
        ("external_id", req.external_id, 256),
        ("idempotency_key", req.idempotency_key, 256),
        ("uploader_id", req.uploader_id, 256),
        ("caption", req.caption, 10_000),
        ("callback_url", req.callback_url, 2_000),
    ):
        if value is not None and len(value) > limit:
            raise bad(f"{name} is longer than {limit} characters.", field=name)
    if req.callback_url and not _URL.match(req.callback_url):
        raise bad("callback_url must be an http(s) URL.", field="callback_url")
    policy_id = req.policy or req.default_policy or ctx.settings.default_policy
    if policy_id not in ctx.policies:
        raise ModerationError("UNKNOWN_POLICY", f"No policy {policy_id!r}; known: {', '.join(sorted(ctx.policies))}.")
    return policy_id


def _existing(conn: Connection, req: SubmissionRequest) -> Any | None:
    conds = []
    if req.external_id:
        conds.append(submissions.c.external_id == req.external_id)
    if req.idempotency_key:
        conds.append(submissions.c.idempotency_key == req.idempotency_key)
    if not conds:
        return None
    from sqlalchemy import or_

    return conn.execute(
        select(submissions.c.id, submissions.c.status, submissions.c.sha256).where(
            and_(submissions.c.tenant_id == req.tenant_id, or_(*conds))
        )
    ).first()


def _same_or_conflict(row: Any, sha256: str) -> dict[str, Any]:
    if row.sha256 != sha256:
        raise ModerationError(
            "IDEMPOTENCY_CONFLICT",
            "This external_id / Idempotency-Key was used for a different image.",
            submission_id=row.id,
        )
    return {"id": row.id, "status": row.status}


def accept(ctx: Context, req: SubmissionRequest, data: bytes) -> tuple[dict[str, Any], bool]:
    """Validate, store and durably record an upload, then publish it. Returns ({id, status}, created).

    Raises ModerationError (4xx) for bad input: nothing is stored or queued for it. The same
    (tenant, external_id) or Idempotency-Key returns the first submission (409 if the image differs).
    """
    policy_id = _check_fields(ctx, req)
    info, _thumb = inspect_image(data, ctx.limits)
    sha256 = info.sha256
    ctx.blobs.put(data, info.sha256)
    sid = secrets.token_hex(16)
    now = utcnow()
    values = {
        "id": sid,
        "tenant_id": req.tenant_id,
        "external_id": req.external_id,
        "idempotency_key": req.idempotency_key,
        "source": req.source,
        "sha256": info.sha256,
        "phash": info.phash,
        "pdq": info.pdq,
        "pdq_quality": info.pdq_quality,
        "format": info.format,
        "width": info.width,
        "height": info.height,
        "frames": info.frames,
        "byte_size": info.byte_size,
        "caption": req.caption,
        "uploader_id": req.uploader_id,
        "callback_url": req.callback_url,
        "priority": req.priority,
        "policy_id": policy_id,
        "status": "queued",
        "attempts": 0,
        "request_ip": req.request_ip,
        "api_key_id": req.actor,
        "created_at": now,
        "updated_at": now,
    }
    try:
        with ctx.engine.begin() as conn:
            conn.execute(insert(submissions).values(**values))
    except IntegrityError:
        # Lost a race with the same external_id / idempotency key.
        with ctx.engine.connect() as conn:
            row = _existing(conn, req)
        if row is None:
            raise
        return _same_or_conflict(row, sha256), False
    ctx.publisher.ingest(sid, req.priority)
    return {"id": sid, "status": "queued"}, True


def received_event(sub: Any) -> audit.Event:
    """The `received` audit event, built from the durable submission row.

    It is appended by the first worker delivery, in the same transaction as its other events,
    rather than by the API: the API then never waits on the tenant's chain lock, and the
    row committed before the 202 already holds every request fact. `occurred_at` is the
    acceptance time; the chain position records when it was appended.
    """
    return audit.Event(
        "received",
        actor=sub.api_key_id or "system",
        submission_id=sub.id,
        automated=None,
        occurred_at=sub.created_at,
        facts={
            "puid": sub.external_id,
            "source": sub.source,
            "content_type": f"image/{str(sub.format).lower()}",
            "content_hashes": {"sha256": sub.sha256, "pdq": sub.pdq, "phash": sub.phash},
            "byte_size": sub.byte_size,
            "width": sub.width,
            "height": sub.height,
            "frames": sub.frames,
            "uploader_id": sub.uploader_id,
            "policy": sub.policy_id,
            "priority": sub.priority,
            "request": {"time": iso(sub.created_at), "client_ip": sub.request_ip, "api_key_id": sub.api_key_id},
        },
    )


# ---------------------------------------------------------------- advance


def _count_attempt(conn: Connection, submission_id: str) -> Any | None:
    """Count this delivery (status -> analyzing) and return the row, or None if not active."""
    return conn.execute(
        update(submissions)
        .where(and_(submissions.c.id == submission_id, submissions.c.status.in_(ACTIVE)))
        .values(attempts=submissions.c.attempts + 1, status="analyzing", updated_at=utcnow())
        .returning(*submissions.c)
    ).first()


def _start_attempt(ctx: Context, submission_id: str) -> Any | None:
    """Count this delivery in its own commit, before any work that parses the image, so a
    worker killed by a poison input still leaves the count behind."""
    with ctx.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Losing this increment in a crash only loses one count: no need to wait for fsync.
            conn.execute(text("SET LOCAL synchronous_commit = off"))
        return _count_attempt(conn, submission_id)


def _stored_findings(conn: Connection, submission_id: str) -> list[Finding]:
    rows = conn.execute(
        select(findings.c.body).where(findings.c.submission_id == submission_id).order_by(findings.c.id)
    ).all()
    return [Finding.from_json(r.body) for r in rows]


def advance(ctx: Context, submission_id: str, count_attempt: bool = True) -> str:
    """Move a submission one step along its cascade. Returns what happened (for the task log).

    Used by the `ingest` task (first delivery, or re-enqueued by the reconciler) and the
    `decide` task (after an analyzer stage). Safe to call any number of times.

    The step is one transaction: the attempt count, the bank lookup and, when no analyzer stage
    is due, the decision. Nothing here parses the image (its hashes were computed at intake), so
    no input can crash the worker between counting and deciding; analyzer stages, which do
    parse it, commit their attempt count first (`analyze`).
    """
    with ctx.engine.begin() as conn:
        if count_attempt:
            sub = _count_attempt(conn, submission_id)
        else:
            sub = conn.execute(select(submissions).where(submissions.c.id == submission_id)).first()
        if sub is None or sub.status not in ACTIVE:
            return "noop"
        first = count_attempt and sub.attempts == 1
        events = [received_event(sub)] if first else []
        policy = ctx.policies.get(sub.policy_id)
        if sub.attempts > attempt_budget(ctx, policy):
            dead_letter(ctx, sub, "ingest", f"gave up after {sub.attempts - 1} attempts", conn)
            return "dead_lettered"
        if policy is None:
            missing = Finding("policy", "0", "policy", error=f"policy {sub.policy_id!r} is no longer loaded")
            finalize(ctx, sub, None, [missing], [missing], conn=conn, events=events)
            return "decided"
        # A first delivery has no stored findings: skip the round trip.
        done = [] if first else _stored_findings(conn, submission_id)
        new: list[Finding] = []
        if any(s.stage == "banks" for s in policy.cascade) and not any(f.stage == "banks" for f in done):
            new.append(ctx.banks.lookup(sub.tenant_id, sub.sha256, sub.pdq))
        current = done + new
        nxt = None if any(f.bank_match for f in current) else next_stage(policy, current, sub.id)
        if nxt is None:
            finalize(ctx, sub, policy, current, new, conn=conn, events=events)
            return "decided"
        events += _insert_findings(conn, sub.id, new)
        audit.append(conn, sub.tenant_id, events)
    ctx.publisher.send(T_ANALYZE, [sub.id, nxt.stage], nxt.queue, sub.priority)
    return f"routed:{nxt.stage}"


def attempt_budget(ctx: Context, policy: Policy | None) -> int:
    """Deliveries allowed per submission: every stage's first run plus `max_attempts` retries."""
    return ctx.settings.max_attempts + 1 + (len(policy.analyzer_stages) if policy else 0)


def next_stage(policy: Policy, found: list[Finding], submission_id: str) -> Stage | None:
    """The first analyzer stage not yet run whose `run` condition holds, or None: decide now."""
    done = {f.stage for f in found}
    for stage in policy.analyzer_stages:
        if stage.stage in done:
            continue
        if stage.run == "always":
            return stage
        interim = evaluate(policy, found, qa_draw(submission_id))
        if interim.action in ("review", "escalate") and interim.review_reason != "analyzer_error":
            return stage
    return None


def analyze(ctx: Context, submission_id: str, stage_name: str) -> str:
    """Run one analyzer stage for one submission and hand over to `decide`.

    Any exception from the analyzer other than TransientAnalyzerError becomes an error
    finding (fail closed); transient ones propagate for the task to retry with backoff.
    """
    sub = _start_attempt(ctx, submission_id)
    if sub is None:
        return "noop"
    policy = ctx.policies[sub.policy_id]
    if sub.attempts > attempt_budget(ctx, policy):
        dead_letter(ctx, sub, f"analyze:{stage_name}", f"gave up after {sub.attempts - 1} attempts")
        return "dead_lettered"
    stage = policy.stage(stage_name)
    finding = run_stage(ctx, sub, policy, stage)
    with ctx.engine.begin() as conn:
        audit.append(conn, sub.tenant_id, _insert_findings(conn, sub.id, [finding]))
    ctx.publisher.send(T_DECIDE, [sub.id], Q_DECIDE, sub.priority)
    return "analyzed" if not finding.error else "analyzer_error"


def analysis_input(ctx: Context, sub: Any, policy: Policy) -> AnalysisInput:
    data = ctx.blobs.get(sub.sha256)
    with Image.open(io.BytesIO(data)) as im:
        im.seek(0)
        im.load()
        from PIL import ImageOps

        rgb = to_rgb(ImageOps.exif_transpose(im) or im)
    return AnalysisInput(
        submission_id=sub.id,
        tenant_id=sub.tenant_id,
        image=rgb,
        sha256=sub.sha256,
        caption=sub.caption,
        phash=sub.phash,
        pdq=sub.pdq,
        frames=sub.frames,
        categories=tuple(policy.categories),
    )


def run_stage(ctx: Context, sub: Any, policy: Policy, stage: Stage) -> Finding:
    started = time.perf_counter()
    try:
        item = analysis_input(ctx, sub, policy)
        finding = ctx.analyzer(stage).analyze(item)
    except TransientAnalyzerError:
        raise
    except Exception as exc:  # fail closed: the error is the finding
        log.exception("analyzer %s failed on %s", stage.stage, sub.id)
        finding = Finding(stage.stage, "error", stage.stage, error=f"{type(exc).__name__}: {exc}")
    finding.stage = stage.stage
    log.info("stage=%s submission=%s ms=%.1f", stage.stage, sub.id, (time.perf_counter() - started) * 1000)
    return finding


def _insert_findings(conn: Connection, submission_id: str, new: list[Finding]) -> list[audit.Event]:
    """Store findings (a redelivered one is ignored); returns the `analyzed` events of those stored."""
    events = []
    for f in new:
        stored = conn.execute(
            _upsert_ignore(conn, findings)
            .values(
                submission_id=submission_id,
                stage=f.stage,
                analyzer=f.analyzer,
                analyzer_version=f.version,
                body=f.to_json(),
                created_at=utcnow(),
            )
            .on_conflict_do_nothing()
        ).rowcount
        if stored:
            events.append(analyzed_event(submission_id, f))
    return events


def analyzed_event(submission_id: str, f: Finding) -> audit.Event:
    return audit.Event(
        "analyzed",
        actor="system",
        submission_id=submission_id,
        automated=True,
        facts={
            "stage": f.stage,
            "analyzer": f.analyzer,
            "analyzer_version": f.version,
            "model": f.model,
            "scores": f.scores,
            "confidence": f.confidence,
            "flags": f.flags,
            "error": f.error,
            "bank_match": f.bank_match,
            "rationale": f.rationale,
        },
    )


def _upsert_ignore(conn: Connection, table: Any) -> Any:
    """An INSERT that supports ON CONFLICT DO NOTHING on both dialects."""
    from sqlalchemy.dialects import postgresql, sqlite

    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


# ---------------------------------------------------------------- decide


def finalize(
    ctx: Context,
    sub: Any,
    policy: Policy | None,
    found: list[Finding],
    new: list[Finding] | None = None,
    reason: str | None = None,
    conn: Connection | None = None,
    events: list[audit.Event] | None = None,
) -> Decision:
    """Evaluate and record the automated decision, review task and audit events in one transaction
    (the caller's `conn`, or a new one).

    `new` are findings not stored yet; `events` are audit events to append before these.
    Idempotent: if an automated decision exists already, nothing is written.
    """
    if policy is None:
        decision = Decision(
            action="review",
            categories={},
            reasons=[{"code": "policy_missing", "policy": sub.policy_id}],
            policy_id=sub.policy_id,
            policy_version="unknown",
            review_queue="default",
            review_reason="policy_missing",
        )
    else:
        decision = evaluate(policy, found, qa_draw(sub.id))
    if reason:  # forced fail-closed outcome (dead letter)
        decision = Decision(
            action="review",
            categories=decision.categories,
            reasons=[*decision.reasons, {"code": reason}],
            policy_id=decision.policy_id,
            policy_version=decision.policy_version,
            review_queue="default",
            review_reason=reason,
        )
    now = utcnow()
    status = "in_review" if decision.action in ("review", "escalate") else "decided"
    closing = [
        audit.Event(
            "decided",
            actor="system",
            submission_id=sub.id,
            category=decision.top_category,
            automated=True,
            occurred_at=now,
            facts=statement_of_reasons(sub, policy, decision, found, now),
        )
    ]
    task_id = secrets.token_hex(16)
    if decision.review_queue:
        closing.append(
            audit.Event(
                "routed_to_review",
                actor="system",
                submission_id=sub.id,
                category=decision.top_category,
                automated=True,
                facts={"queue": decision.review_queue, "reason": decision.review_reason, "review_task_id": task_id},
            )
        )
    with contextlib.nullcontext(conn) if conn is not None else ctx.engine.begin() as conn:
        inserted = conn.execute(
            _upsert_ignore(conn, decisions)
            .values(
                submission_id=sub.id,
                dedupe_key=AUTOMATED,
                action=decision.action,
                categories=decision.categories,
                reasons=decision.reasons,
                policy_id=decision.policy_id,
                policy_version=decision.policy_version,
                automated=True,
                attempt=int(sub.attempts or 1),
                decided_at=now,
            )
            .on_conflict_do_nothing()
        ).rowcount
        if not inserted:
            return decision
        analyzed = _insert_findings(conn, sub.id, new or [])
        if decision.review_queue:
            conn.execute(
                _upsert_ignore(conn, review_tasks)
                .values(
                    id=task_id,
                    submission_id=sub.id,
                    tenant_id=sub.tenant_id,
                    dedupe_key=AUTOMATED,
                    queue=decision.review_queue,
                    reason=decision.review_reason or "review",
                    status="open",
                    priority={"high": 1, "normal": 5, "low": 9}.get(sub.priority, 5),
                    created_at=now,
                )
                .on_conflict_do_nothing()
            )
        conn.execute(
            update(submissions).where(submissions.c.id == sub.id).values(status=status, decided_at=now, updated_at=now)
        )
        audit.append(conn, sub.tenant_id, [*(events or []), *analyzed, *closing])
    return decision


def statement_of_reasons(
    sub: Any, policy: Policy | None, decision: Decision, found: list[Finding], decided_at: Any
) -> dict[str, Any]:
    """The DSA statement-of-reasons fields of an automated decision (see DESIGN.md, Audit event)."""
    rule = policy.categories.get(decision.top_category) if policy and decision.top_category else None
    models = [f.model for f in found if f.model]
    return {
        "puid": sub.external_id or sub.id,
        "content_type": f"image/{str(sub.format).lower()}",
        "content_hashes": {"sha256": sub.sha256, "pdq": sub.pdq, "phash": sub.phash},
        "content_date": iso(sub.created_at),
        "application_date": decided_at.isoformat(),
        "action": decision.action,
        "decision_visibility": decision.visibility,
        "territorial_scope": policy.territorial_scope if policy else [],
        "decision_ground": decision.dsa.get("decision_ground"),
        "illegal_content_legal_ground": decision.dsa.get("legal_ground"),
        "incompatible_content_ground": decision.dsa.get("clause"),
        "category": decision.dsa.get("category"),
        "decision_facts": [r for r in decision.reasons],
        "source_type": policy.source_type if policy else "SOURCE_VOLUNTARY",
        "automated_detection": True,
        "automated_decision": "AUTOMATED_DECISION_FULLY",
        "models": models,
        "analyzers": [{"stage": f.stage, "analyzer": f.analyzer, "version": f.version} for f in found],
        "policy": {"id": decision.policy_id, "version": decision.policy_version},
        "scores": decision.categories,
        "thresholds": (
            {"block_at": rule.block_at, "review_at": rule.review_at, "restrict_at": rule.restrict_at} if rule else None
        ),
        "rationale": {k: v for f in found for k, v in f.rationale.items()},
        "review": {"queue": decision.review_queue, "reason": decision.review_reason} if decision.review_queue else None,
        "attempt": int(sub.attempts or 1),
    }


def dead_letter(ctx: Context, sub: Any, task: str, error: str, conn: Connection | None = None) -> None:
    """Record the give-up and fail closed to review (never lost, never allowed)."""
    with contextlib.nullcontext(conn) if conn is not None else ctx.engine.begin() as conn:
        conn.execute(
            insert(dead_letters).values(
                submission_id=sub.id,
                task=task,
                error=error,
                attempts=int(sub.attempts),
                created_at=utcnow(),
            )
        )
        audit.append(
            conn,
            sub.tenant_id,
            [
                audit.Event(
                    "dead_lettered",
                    actor="system",
                    submission_id=sub.id,
                    automated=True,
                    facts={"task": task, "error": error, "attempts": int(sub.attempts)},
                )
            ],
        )
        policy = ctx.policies.get(sub.policy_id)
        found = _stored_findings(conn, sub.id)
        finalize(ctx, sub, policy, found, reason="exhausted_retries", conn=conn)


# ---------------------------------------------------------------- reconcile


def reconcile(ctx: Context) -> dict[str, int]:
    """Re-enqueue submissions stuck without progress (the broker may have lost them).

    A stale item is re-published when the ingest queue is empty (nothing can be waiting for it:
    the broker lost its queue, or its worker died) or when it has been stuck for five times
    `stale_after_s` (a hard bound during a long backlog). Duplicates are harmless: each
    delivery is idempotent.
    """
    now = utcnow()
    cutoff = now - timedelta(seconds=ctx.settings.stale_after_s)
    hard_cutoff = now - timedelta(seconds=ctx.settings.stale_after_s * 5)
    with ctx.engine.connect() as conn:
        stale = conn.execute(
            select(submissions.c.id, submissions.c.priority, submissions.c.updated_at)
            .where(and_(submissions.c.status.in_(ACTIVE), submissions.c.updated_at < cutoff))
            .order_by(submissions.c.updated_at)
            .limit(ctx.settings.reconcile_batch)
        ).all()
    if not stale:
        return {"stale": 0, "requeued": 0}
    depth = ctx.publisher.queue_depth(Q_INGEST)
    due = [r for r in stale if depth == 0 or r.updated_at.replace(tzinfo=None) < hard_cutoff.replace(tzinfo=None)]
    if not due:
        return {"stale": len(stale), "requeued": 0}
    ids = [r.id for r in due]
    with ctx.engine.begin() as conn:
        conn.execute(
            update(submissions)
            .where(and_(submissions.c.id.in_(ids), submissions.c.status.in_(ACTIVE)))
            .values(updated_at=now)
        )
    for r in due:
        ctx.publisher.ingest(r.id, r.priority)
    log.warning("reconciler re-enqueued %d stale submissions (ingest queue depth %s)", len(due), depth)
    return {"stale": len(stale), "requeued": len(due)}


# ---------------------------------------------------------------- read


def view(ctx: Context, tenant_id: str, submission_id: str) -> dict[str, Any]:
    """The public status of a submission: {id, status, decision}. Human decisions supersede automated."""
    with ctx.engine.connect() as conn:
        sub = conn.execute(
            select(submissions.c.id, submissions.c.status, submissions.c.external_id, submissions.c.created_at).where(
                and_(submissions.c.id == submission_id, submissions.c.tenant_id == tenant_id)
            )
        ).first()
        if sub is None:
            raise ModerationError("NOT_FOUND", f"No submission {submission_id}.")
        rows = conn.execute(
            select(decisions).where(decisions.c.submission_id == submission_id).order_by(decisions.c.id)
        ).all()
    decision = None
    if rows:
        human = [r for r in rows if not r.automated]
        d = (human or rows)[-1]
        decision = {
            "action": d.action,
            "categories": d.categories,
            "reasons": d.reasons,
            "policy": {"id": d.policy_id, "version": d.policy_version},
            "automated": bool(d.automated),
            "decided_at": iso(d.decided_at),
        }
    return {
        "id": sub.id,
        "status": sub.status,
        "external_id": sub.external_id,
        "created_at": iso(sub.created_at),
        "decision": decision,
    }


# ---------------------------------------------------------------- queue-side ingest


def submit_message(ctx: Context, message: dict[str, Any]) -> dict[str, Any]:
    """Handle one queue-side submission (see README, "Queue-side ingest").

    Same validation and durability path as HTTP. A rejected message is recorded (dead-letter
    row, and a `rejected` audit event when the tenant is known) and never retried.
    """
    import base64
    import binascii

    tenant: str | None = None
    try:
        if not isinstance(message, dict):
            raise ModerationError("INVALID_MESSAGE", "The message must be a JSON object.")
        principal: Principal = ctx.keys.authenticate(f"Bearer {message.get('api_key', '')}")
        principal.require("submitter", "admin")
        tenant = principal.tenant_id
        external_id = message.get("external_id")
        if not isinstance(external_id, str) or not external_id:
            raise ModerationError("INVALID_MESSAGE", "external_id (a string) is required on the queue.")
        if message.get("image_b64") is not None:
            b64 = message["image_b64"]
            if not isinstance(b64, str) or len(b64) > ctx.settings.max_upload_bytes * 4 // 3 + 8:
                raise ModerationError("IMAGE_TOO_LARGE", "image_b64 is over the upload size cap.")
            try:
                data = base64.b64decode(b64, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ModerationError("INVALID_MESSAGE", "image_b64 is not valid base64.") from exc
        elif message.get("blob_sha256") is not None:
            data = ctx.blobs.get(str(message["blob_sha256"]))
        else:
            raise ModerationError("INVALID_MESSAGE", "Give the image as image_b64 or blob_sha256.")
        req = SubmissionRequest(
            tenant_id=principal.tenant_id,
            actor=principal.key_id,
            default_policy=None,
            external_id=external_id,
            caption=message.get("caption"),
            uploader_id=message.get("uploader_id"),
            callback_url=message.get("callback_url"),
            priority=message.get("priority") or "normal",
            policy=message.get("policy"),
            source="queue",
        )
        result, created = accept(ctx, req, data)
        return {**result, "created": created}
    except ModerationError as exc:
        if not exc.final:
            raise
        _record_rejection(ctx, tenant, message, exc)
        return {"rejected": exc.code, "message": exc.message}


def _record_rejection(ctx: Context, tenant: str | None, message: Any, exc: ModerationError) -> None:
    safe = {k: v for k, v in message.items() if k not in ("api_key", "image_b64")} if isinstance(message, dict) else {}
    with ctx.engine.begin() as conn:
        conn.execute(
            insert(dead_letters).values(
                submission_id=None,
                task="submit",
                error=f"{exc.code}: {exc.message}",
                attempts=1,
                payload=safe,
                created_at=utcnow(),
            )
        )
        if tenant:
            audit.append(
                conn,
                tenant,
                [
                    audit.Event(
                        "rejected",
                        actor="queue",
                        automated=True,
                        facts={"code": exc.code, "message": exc.message, "puid": safe.get("external_id")},
                    )
                ],
            )
