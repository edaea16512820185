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

import inspect
import io
import logging
import re
import secrets
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from PIL import Image, ImageOps
from sqlalchemy import Connection, Engine, and_, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from moderation import audit, callbacks
from moderation.analyzers.base import (
    AnalysisInput,
    Analyzer,
    FatalAnalyzerError,
    Finding,
    TransientAnalyzerError,
    analyzer_class,
    load_analyzer,
)
from moderation.auth import KeyCache, Principal
from moderation.banks import BankIndex
from moderation.blobs import BlobStore
from moderation.cache import LocalStore, RedisStore, VerdictCache
from moderation.db import make_engine
from moderation.errors import ModerationError
from moderation.images import Limits, inspect_image, sample_frames, to_rgb
from moderation.models import (
    AUTOMATED,
    as_utc,
    dead_letters,
    decisions,
    findings,
    iso,
    review_tasks,
    submissions,
    utcnow,
)
from moderation.policy import BUILTIN_STAGES, Decision, Policy, Stage, evaluate, load_policies, qa_draw
from moderation.queue import (
    Q_CALLBACKS,
    Q_DECIDE,
    Q_INGEST,
    T_ANALYZE,
    T_CALLBACK,
    T_DECIDE,
    IngestBatcher,
    Publisher,
)
from moderation.settings import Settings
from moderation.text import check_text

log = logging.getLogger(__name__)

ACTIVE = ("queued", "analyzing")
PRIORITIES = ("high", "normal", "low")


_ANALYZER_LOCK = threading.Lock()


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
    _batcher: IngestBatcher | None = None
    _verdicts: VerdictCache | None = None

    @property
    def verdicts(self) -> VerdictCache:
        if self._verdicts is None:
            store = RedisStore(self.settings.redis_url) if self.settings.redis_url else LocalStore()
            self._verdicts = VerdictCache(store, self.settings)
        return self._verdicts

    @property
    def batcher(self) -> IngestBatcher:
        if self._batcher is None:
            s = self.settings
            self._batcher = IngestBatcher(
                self.publisher, s.ingest_batch_max, s.ingest_batch_linger_s, s.ingest_batch_min_rate
            )
        return self._batcher

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
            policies=load_policies(settings.policies_dir, settings.features),
            banks=BankIndex(
                engine, settings.bank_cache_ttl_s, settings.bank_max_distance, settings.bank_decisive_distance
            ),
            limits=Limits(
                max_bytes=settings.max_upload_bytes,
                max_pixels=settings.max_pixels,
                max_frames=settings.max_frames,
                max_total_pixels=settings.max_total_pixels,
                hash_side=settings.hash_side,
            ),
        )

    def analyzer(self, stage: Stage) -> Analyzer:
        """The stage's analyzer, built once per process (a model loads once, shared by the
        policies whose stages have the same analyzer and options). Thread-safe."""
        assert stage.analyzer is not None
        key = f"{stage.analyzer}|{sorted(stage.options.items())}"
        if key not in self._analyzers:
            with _ANALYZER_LOCK:
                if key not in self._analyzers:
                    options = dict(stage.options)
                    if "settings" in inspect.signature(analyzer_class(stage.analyzer)).parameters:
                        options["settings"] = self.settings
                    self._analyzers[key] = load_analyzer(stage.analyzer, options)
        return self._analyzers[key]

    def warm_up(self, queues: Iterable[str]) -> list[str]:
        """Load (and warm) every analyzer that a worker consuming `queues` will run, before it
        takes its first task. Returns the stages warmed."""
        warmed: list[str] = []
        wanted = set(queues)
        for policy in self.policies.values():
            for stage in policy.analyzer_stages:
                if stage.queue in wanted:
                    analyzer = self.analyzer(stage)
                    analyzer.warmup()
                    warmed.append(f"{policy.id}:{stage.stage}")
        return warmed


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


_URL = re.compile(r"https?://[^\s]+")


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
        ("policy", req.policy, 64),
    ):
        check_text(name, value, limit)
    if req.callback_url:
        try:
            refused = callbacks.literal_host_refused(req.callback_url)
        except ValueError:  # no host, a bad port, a name the HTTP client or IDNA cannot use
            refused = None
        if refused is None or not _URL.fullmatch(req.callback_url):
            raise bad("callback_url must be an http(s) URL.", field="callback_url")
        if refused and not ctx.settings.callback_allow_private:
            raise bad(
                "callback_url must point to a public address (MODERATION_CALLBACK_ALLOW_PRIVATE allows others).",
                field="callback_url",
            )
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
            conn.execute(insert(submissions), values)  # params apart: the compiled statement is cached
    except IntegrityError:
        # Lost a race with the same external_id / idempotency key.
        with ctx.engine.connect() as conn:
            row = _existing(conn, req)
        if row is None:
            raise
        return _same_or_conflict(row, sha256), False
    ctx.batcher.add(sid, req.priority)
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


def _count_attempts(conn: Connection, submission_ids: list[str]) -> list[Any]:
    """Count this delivery (status -> analyzing) for the active ones among `submission_ids`."""
    return list(
        conn.execute(
            update(submissions)
            .where(and_(submissions.c.id.in_(submission_ids), submissions.c.status.in_(ACTIVE)))
            .values(attempts=submissions.c.attempts + 1, status="analyzing", updated_at=utcnow())
            .returning(*submissions.c)
        ).all()
    )


def _start_attempt(ctx: Context, submission_id: str) -> Any | None:
    """Count this delivery in its own commit, before any work that parses the image, so a
    worker killed by a poison input still leaves the count behind."""
    with ctx.engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Losing this increment in a crash only loses one count: no need to wait for fsync.
            conn.execute(text("SET LOCAL synchronous_commit = off"))
        rows = _count_attempts(conn, [submission_id])
        return rows[0] if rows else None


def _stored_findings(conn: Connection, submission_ids: list[str]) -> dict[str, list[Finding]]:
    out: dict[str, list[Finding]] = {sid: [] for sid in submission_ids}
    if submission_ids:
        rows = conn.execute(
            select(findings.c.submission_id, findings.c.body)
            .where(findings.c.submission_id.in_(submission_ids))
            .order_by(findings.c.id)
        ).all()
        for r in rows:
            out[r.submission_id].append(Finding.from_json(r.body))
    return out


@dataclass
class _Due:
    """A submission ready for its automated decision, with what is still to be written."""

    sub: Any
    policy: Policy | None
    found: list[Finding]
    new: list[Finding]
    events: list[audit.Event]
    reason: str | None = None


def advance(ctx: Context, submission_ids: list[str] | str, count_attempt: bool = True) -> str:
    """Move submissions one step along their cascade. Returns what happened (for the task log).

    Used by the `ingest` task (a batch of fresh submissions, or ones re-enqueued by the
    reconciler) and the `decide` task (after an analyzer stage). Safe to call any number of times.

    The attempt counts are committed first; then one transaction for the whole batch holds the
    bank lookups and, where no analyzer stage is due, the decisions. Nothing here parses an image (hashes were
    computed at intake), so no input can crash the worker between counting and deciding;
    analyzer stages, which do parse it, commit their attempt count first (`analyze`).
    """
    ids = [submission_ids] if isinstance(submission_ids, str) else list(dict.fromkeys(submission_ids))
    routed: list[tuple[Any, Stage]] = []
    outcome: Counter[str] = Counter()
    counted: list[Any] = []
    if count_attempt:
        # Its own commit, so that a batch that fails every time still uses up its attempts
        # and ends dead-lettered rather than re-enqueued forever.
        with ctx.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SET LOCAL synchronous_commit = off"))
            counted = _count_attempts(conn, ids)
    with ctx.engine.begin() as conn:
        if count_attempt:
            rows = counted
        else:
            rows = [r for r in conn.execute(select(submissions).where(submissions.c.id.in_(ids))).all()]
        rows = [r for r in rows if r.status in ACTIVE]
        outcome["noop"] = len(ids) - len(rows)
        with_callback = {r.id for r in rows if r.callback_url}
        # A first delivery has no stored findings: skip the round trip for those.
        first = {r.id for r in rows if count_attempt and r.attempts == 1}
        stored = _stored_findings(conn, [r.id for r in rows if r.id not in first])
        due: list[_Due] = []
        route_events: list[tuple[str, audit.Event]] = []
        for sub in rows:
            events = [received_event(sub)] if sub.id in first else []
            policy = ctx.policies.get(sub.policy_id)
            done = stored.get(sub.id, [])
            if sub.attempts > attempt_budget(ctx, policy):
                events.append(dead_letter_event(conn, sub, "ingest", f"gave up after {sub.attempts - 1} attempts"))
                due.append(_Due(sub, policy, done, [], events, reason="exhausted_retries"))
                outcome["dead_lettered"] += 1
                continue
            if policy is None:
                missing = Finding("policy", "0", "policy", error=f"policy {sub.policy_id!r} is no longer loaded")
                due.append(_Due(sub, None, [missing], [missing], events))
                continue
            new: list[Finding] = []
            if any(s.stage == "banks" for s in policy.cascade) and not any(f.stage == "banks" for f in done):
                new.append(ctx.banks.lookup(sub.tenant_id, sub.sha256, sub.pdq, conn))
            current = done + new
            matched = any(f.bank_match and not f.bank_match.get("near") for f in current)
            if not matched and any(s.stage == "cache" for s in policy.cascade) and not _analyzed(policy, done):
                cached = ctx.verdicts.get(policy, sub.sha256, sub.caption)
                if cached:
                    current, new = current + cached, new + cached
                    outcome["cache_hits"] += 1
            nxt = None if matched else next_stage(policy, current, sub.id)
            if nxt is None:
                due.append(_Due(sub, policy, current, new, events))
                continue
            stored_now = _insert_findings(conn, [(sub.id, f) for f in new])
            events += [analyzed_event(sub.id, f) for f in new if (sub.id, f.stage) in stored_now]
            route_events += [(sub.tenant_id, e) for e in events]
            routed.append((sub, nxt))
        decided = finalize_many(ctx, conn, due, route_events)
        outcome["decided"] += len(decided)
    for item in due:  # after commit: cache what the analyzers found (never errors, never a replay)
        fresh = item.policy is not None and _analyzed(item.policy, item.found)
        if item.sub.id in decided and fresh and item.policy and not any(f.cached for f in item.found):
            ctx.verdicts.put(item.policy, item.sub.sha256, item.sub.caption, item.found)
    for sid in decided:
        if sid in with_callback:
            ctx.publisher.send(T_CALLBACK, [sid], Q_CALLBACKS)
    for sub, nxt in routed:
        ctx.publisher.send(T_ANALYZE, [sub.id, nxt.stage], nxt.queue, sub.priority)
    outcome["routed"] = len(routed)
    return ",".join(f"{k}={v}" for k, v in sorted(outcome.items()) if v)


def _analyzed(policy: Policy, found: list[Finding]) -> bool:
    """Whether any analyzer stage of the policy has a finding already."""
    names = {s.stage for s in policy.analyzer_stages}
    return any(f.stage in names for f in found)


def attempt_budget(ctx: Context, policy: Policy | None) -> int:
    """Deliveries allowed per submission: every stage's first run plus `max_attempts` retries."""
    return ctx.settings.max_attempts + 1 + (len(policy.analyzer_stages) if policy else 0)


def next_stage(policy: Policy, found: list[Finding], submission_id: str) -> Stage | None:
    """The first analyzer stage not yet run whose `run` condition holds, or None: decide now."""
    done = {f.stage for f in found}
    for stage in policy.analyzer_stages:
        if stage.stage in done:
            continue
        if stage.run == "always" or escalates(policy, stage, found):
            return stage
    return None


def escalates(policy: Policy, stage: Stage, found: list[Finding]) -> bool:
    """Whether any of the stage's `when` conditions holds on the findings so far.

    An analyzer error never escalates: the decision fails closed to review on it anyway, and a
    broken image would only fail again, on a GPU."""
    ok = [f for f in found if f.error is None]
    if len(ok) < len(found):
        return False
    conditions = stage.conditions
    if conditions & {"unsure", "risk"}:
        interim = evaluate(policy, found)  # without the QA draw: a QA sample goes to people, not to a GPU
        if "unsure" in conditions and interim.action in ("review", "escalate"):
            return True
        if "risk" in conditions and interim.action != "allow":
            return True
    flags = {k for f in ok for k, v in f.flags.items() if v}
    if "text" in conditions and ("text_in_image" in flags or any(f.ocr_text for f in ok)):
        return True
    if "meme" in conditions and "meme" in flags:
        return True
    if "injection" in conditions and "prompt_injection" in flags:
        return True
    if "uncovered" in conditions:
        analyzed = [f for f in ok if f.stage not in BUILTIN_STAGES]
        seen = set().union(*(f.coverage for f in analyzed)) if analyzed else set()
        if set(policy.categories) - seen:
            return True
    return False


def analyze(ctx: Context, submission_id: str, stage_name: str, isolate: bool = False) -> str:
    """Run one analyzer stage for one submission and hand over to `decide`.

    `isolate`: this delivery is a redelivery or a retry (it may be the item that broke a batch
    or a worker): analyzers that batch run it on its own.

    Any exception from the analyzer other than TransientAnalyzerError becomes an error
    finding (fail closed); transient ones propagate for the task to retry with backoff.
    """
    sub = _start_attempt(ctx, submission_id)
    if sub is None:
        return "noop"
    policy = ctx.policies.get(sub.policy_id)
    if policy is None or sub.attempts > attempt_budget(ctx, policy):
        with ctx.engine.begin() as conn:
            found = _stored_findings(conn, [sub.id])[sub.id]
            why = f"gave up after {sub.attempts - 1} attempts" if policy else "policy no longer loaded"
            event = dead_letter_event(conn, sub, f"analyze:{stage_name}", why)
            decided = finalize_many(ctx, conn, [_Due(sub, policy, found, [], [event], reason="exhausted_retries")])
        if sub.id in decided and sub.callback_url:
            ctx.publisher.send(T_CALLBACK, [sub.id], Q_CALLBACKS)
        return "dead_lettered"
    stage = policy.stage(stage_name)
    with ctx.engine.connect() as conn:
        done = _stored_findings(conn, [sub.id])[sub.id]
    if any(f.stage == stage_name for f in done):  # a redelivery: the model already ran
        ctx.publisher.send(T_DECIDE, [sub.id], Q_DECIDE, sub.priority)
        return "already_analyzed"
    try:
        finding = run_stage(ctx, sub, policy, stage, isolate)
    except TransientAnalyzerError as exc:
        if exc.charge_attempt:
            raise
        # A fault outside the input (the model server down, a batch timed out) must not use up
        # the submission's budget and send it to people: give the delivery back. Celery's
        # max_retries and the reconciler still bound how long it is retried.
        with ctx.engine.begin() as conn:
            conn.execute(
                update(submissions)
                .where(submissions.c.id == sub.id, submissions.c.attempts > 0)
                .values(attempts=submissions.c.attempts - 1)
            )
        raise
    with ctx.engine.begin() as conn:
        if _insert_findings(conn, [(sub.id, finding)]):
            audit.append(conn, sub.tenant_id, [analyzed_event(sub.id, finding)])
    ctx.publisher.send(T_DECIDE, [sub.id], Q_DECIDE, sub.priority)
    return "analyzed" if not finding.error else "analyzer_error"


def analysis_input(ctx: Context, sub: Any, policy: Policy, isolate: bool = False) -> AnalysisInput:
    """The normalised image (and, for animations, a few more frames) for an analyzer."""
    data = ctx.blobs.get(sub.sha256)
    with Image.open(io.BytesIO(data)) as im:
        im.seek(0)
        im.load()
        rgb = to_rgb(ImageOps.exif_transpose(im) or im)
        frames = tuple(sample_frames(im, 4)) if sub.frames > 1 else ()
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
        frames_sample=frames,
        isolate=isolate,
    )


def run_stage(ctx: Context, sub: Any, policy: Policy, stage: Stage, isolate: bool = False) -> Finding:
    started = time.perf_counter()
    try:
        item = analysis_input(ctx, sub, policy, isolate)
        finding = ctx.analyzer(stage).analyze(item)
    except (TransientAnalyzerError, FatalAnalyzerError):
        raise
    except Exception as exc:  # fail closed: the error is the finding
        log.exception("analyzer %s failed on %s", stage.stage, sub.id)
        finding = Finding(stage.stage, "error", stage.stage, error=f"{type(exc).__name__}: {exc}")
    if not isinstance(finding, Finding):
        finding = Finding(stage.stage, "error", stage.stage, error=f"analyzer returned {type(finding).__name__}")
    elif finding.error is None and (problem := finding.problem()):
        finding = Finding(finding.analyzer, finding.version, stage.stage, error=f"malformed finding: {problem}")
    finding.stage = stage.stage
    log.info("stage=%s submission=%s ms=%.1f", stage.stage, sub.id, (time.perf_counter() - started) * 1000)
    return finding


def _insert_findings(conn: Connection, items: list[tuple[str, Finding]]) -> set[tuple[str, str]]:
    """Store findings (a redelivered one is ignored); returns the (submission, stage) pairs stored."""
    if not items:
        return set()
    now = utcnow()
    rows = conn.execute(
        _upsert_ignore(conn, findings).on_conflict_do_nothing().returning(findings.c.submission_id, findings.c.stage),
        [
            {
                "submission_id": sid,
                "stage": f.stage,
                "analyzer": f.analyzer,
                "analyzer_version": f.version,
                "body": f.to_json(),
                "created_at": now,
            }
            for sid, f in items
        ],
    ).all()
    return {(r.submission_id, r.stage) for r in rows}


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
            "cached": f.cached,
        },
    )


def _upsert_ignore(conn: Connection, table: Any) -> Any:
    """An INSERT that supports ON CONFLICT DO NOTHING on both dialects."""
    from sqlalchemy.dialects import postgresql, sqlite

    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def decide_one(item: _Due) -> Decision:
    """The automated decision for one submission; fails closed to review if it cannot be made."""
    try:
        return _decide_one(item)
    except Exception as exc:  # stored findings that no longer evaluate: a human decides
        log.exception("cannot evaluate %s", item.sub.id)
        return Decision(
            action="review",
            categories={},
            reasons=[{"code": "evaluation_error", "error": f"{type(exc).__name__}: {exc}"[:300]}],
            policy_id=item.sub.policy_id,
            policy_version=item.policy.version if item.policy else "unknown",
            review_queue="default",
            review_reason="evaluation_error",
        )


def _decide_one(item: _Due) -> Decision:
    sub, policy = item.sub, item.policy
    if policy is None:
        return Decision(
            action="review",
            categories={},
            reasons=[{"code": "policy_missing", "policy": sub.policy_id}],
            policy_id=sub.policy_id,
            policy_version="unknown",
            review_queue="default",
            review_reason="policy_missing",
        )
    decision = evaluate(policy, item.found, qa_draw(sub.id))
    if item.reason:  # forced fail-closed outcome (dead letter)
        decision = Decision(
            action="review",
            categories=decision.categories,
            reasons=[*decision.reasons, {"code": item.reason}],
            policy_id=decision.policy_id,
            policy_version=decision.policy_version,
            review_queue="default",
            review_reason=item.reason,
        )
    return decision


def finalize_many(
    ctx: Context, conn: Connection, due: list[_Due], extra_events: list[tuple[str, audit.Event]] | None = None
) -> dict[str, Decision]:
    """Record automated decisions, review tasks and audit events for `due`, inside `conn`.

    Idempotent per submission: where an automated decision exists already, nothing is written
    for it. `extra_events` (tenant, event) are appended to the chains in the same transaction.
    Chain heads are locked in tenant order, so concurrent batches cannot deadlock.
    """
    now = utcnow()
    decided = {item.sub.id: decide_one(item) for item in due}
    inserted: set[str] = set()
    if due:
        rows = conn.execute(
            _upsert_ignore(conn, decisions).on_conflict_do_nothing().returning(decisions.c.submission_id),
            [
                {
                    "submission_id": item.sub.id,
                    "dedupe_key": AUTOMATED,
                    "action": decided[item.sub.id].action,
                    "categories": decided[item.sub.id].categories,
                    "reasons": decided[item.sub.id].reasons,
                    "policy_id": decided[item.sub.id].policy_id,
                    "policy_version": decided[item.sub.id].policy_version,
                    "automated": True,
                    "attempt": int(item.sub.attempts or 1),
                    "decided_at": now,
                }
                for item in due
            ],
        ).all()
        inserted = {r.submission_id for r in rows}
    todo = [item for item in due if item.sub.id in inserted]
    stored = _insert_findings(conn, [(item.sub.id, f) for item in todo for f in item.new])
    tasks: list[dict[str, Any]] = []
    by_tenant: dict[str, list[audit.Event]] = defaultdict(list)
    for tenant, event in extra_events or []:
        by_tenant[tenant].append(event)
    status: dict[str, list[str]] = defaultdict(list)
    for item in todo:
        sub, decision = item.sub, decided[item.sub.id]
        status["in_review" if decision.action in ("review", "escalate") else "decided"].append(sub.id)
        events = [
            *item.events,
            *(analyzed_event(sub.id, f) for f in item.new if (sub.id, f.stage) in stored),
            audit.Event(
                "decided",
                actor="system",
                submission_id=sub.id,
                category=decision.top_category,
                automated=True,
                occurred_at=now,
                facts=statement_of_reasons(sub, item.policy, decision, item.found, now),
            ),
        ]
        if decision.review_queue:
            task_id = secrets.token_hex(16)
            tasks.append(
                {
                    "id": task_id,
                    "submission_id": sub.id,
                    "tenant_id": sub.tenant_id,
                    "dedupe_key": AUTOMATED,
                    "queue": decision.review_queue,
                    "reason": decision.review_reason or "review",
                    "status": "open",
                    "priority": {"high": 1, "normal": 5, "low": 9}.get(sub.priority, 5),
                    "created_at": now,
                }
            )
            events.append(
                audit.Event(
                    "routed_to_review",
                    actor="system",
                    submission_id=sub.id,
                    category=decision.top_category,
                    automated=True,
                    facts={"queue": decision.review_queue, "reason": decision.review_reason, "review_task_id": task_id},
                )
            )
        by_tenant[sub.tenant_id] += events
    if tasks:
        conn.execute(_upsert_ignore(conn, review_tasks).on_conflict_do_nothing(), tasks)
    callbacks.enqueue(conn, (item.sub for item in todo), AUTOMATED, now)
    for new_status, ids in status.items():
        conn.execute(
            update(submissions)
            .where(submissions.c.id.in_(ids))
            .values(status=new_status, decided_at=now, updated_at=now)
        )
    for tenant in sorted(by_tenant):
        audit.append(conn, tenant, by_tenant[tenant])
    return {item.sub.id: decided[item.sub.id] for item in todo}


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
        # How each stage's scores were made (VLM: the generated number, or its token-probability expectation).
        "score_methods": {f.stage: f.score_methods for f in found if f.score_methods},
        "review": {"queue": decision.review_queue, "reason": decision.review_reason} if decision.review_queue else None,
        "attempt": int(sub.attempts or 1),
        "cached": any(f.cached for f in found),
    }


def dead_letter_event(conn: Connection, sub: Any, task: str, error: str) -> audit.Event:
    """Record the give-up in the dead-letter table; returns its audit event. The caller then
    fails the submission closed to review (never lost, never allowed)."""
    conn.execute(
        insert(dead_letters).values(
            submission_id=sub.id, task=task, error=error, attempts=int(sub.attempts), created_at=utcnow()
        )
    )
    return audit.Event(
        "dead_lettered",
        actor="system",
        submission_id=sub.id,
        automated=True,
        facts={"task": task, "error": error, "attempts": int(sub.attempts)},
    )


# ---------------------------------------------------------------- callbacks


def deliver_callback(ctx: Context, submission_id: str) -> str:
    """POST the submission's status and decision (the body of GET /v1/submissions/{id}) to its
    callback_url, signed; see `moderation.callbacks`. Raises callbacks.CallbackFailed when the
    attempt failed and the next one is due soon (the task retries with its countdown).
    """
    return callbacks.deliver(ctx.engine, ctx.settings, submission_id, lambda tenant, sid: view(ctx, tenant, sid))


# ---------------------------------------------------------------- reconcile


def reconcile(ctx: Context) -> dict[str, int]:
    """Re-enqueue stuck submissions and overdue callback deliveries (the broker may have lost them)."""
    outcome = _reconcile_submissions(ctx)
    # A delivery overdue by the stale window is lost (or its back-off outlived a Celery countdown,
    # or its worker died mid-request) unless the callbacks queue still holds work: past the hard
    # bound it is published anyway, the claim in `callbacks.deliver` makes duplicates harmless.
    s = ctx.settings
    backlog = ctx.publisher.queue_depth(Q_CALLBACKS) not in (0, None)
    late_s = max(s.stale_after_s * 5, s.visibility_timeout_s * 2) if backlog else s.stale_after_s
    due = callbacks.overdue(ctx.engine, late_s, s.reconcile_batch)
    for sid in due:
        ctx.publisher.send(T_CALLBACK, [sid], Q_CALLBACKS)
    if due:
        log.warning("reconciler re-published the callbacks of %d submissions", len(due))
    outcome["callbacks"] = len(due)
    return outcome


def _reconcile_submissions(ctx: Context) -> dict[str, int]:
    """Re-enqueue submissions stuck without progress (the broker may have lost them).

    A stale item is re-published when the queues it can be waiting in are empty (nothing can be
    waiting for it: the broker lost its queue, or its worker died) or when it has been stuck past
    the hard bound: five times `stale_after_s`, and at least twice the broker's visibility timeout, so that
    a long GPU backlog (items queued, not lost) does not turn into duplicate deliveries that use
    up attempts. Duplicates are harmless otherwise: each delivery is idempotent.
    """
    now = utcnow()
    s = ctx.settings
    cutoff = now - timedelta(seconds=s.stale_after_s)
    hard_cutoff = now - timedelta(seconds=max(s.stale_after_s * 5, s.visibility_timeout_s * 2))
    with ctx.engine.connect() as conn:
        stale = conn.execute(
            select(submissions.c.id, submissions.c.priority, submissions.c.updated_at, submissions.c.policy_id)
            .where(and_(submissions.c.status.in_(ACTIVE), submissions.c.updated_at < cutoff))
            .order_by(submissions.c.updated_at)
            .limit(s.reconcile_batch)
        ).all()
        done = _stored_findings(conn, [r.id for r in stale]) if stale else {}
    if not stale:
        return {"stale": 0, "requeued": 0}
    # Anything still waiting in a queue (a long analyzer backlog) is not lost: re-enqueue an item
    # when the queues it can be waiting in are empty (ingest, and the queue of its next stage, or
    # decide), or past the hard limit. A GPU backlog does not hold back a lost CPU-stage item.
    depth_of: dict[str, int | None] = {}

    def depth(queue: str) -> int | None:
        if queue not in depth_of:
            depth_of[queue] = ctx.publisher.queue_depth(queue)
        return depth_of[queue]

    def waiting_in(r: Any) -> list[str]:
        policy = ctx.policies.get(r.policy_id)
        stages = {f.stage for f in done.get(r.id, [])}
        nxt = next((st for st in (policy.analyzer_stages if policy else []) if st.stage not in stages), None)
        return [Q_INGEST, nxt.queue if nxt else Q_DECIDE, Q_DECIDE]

    due = [r for r in stale if as_utc(r.updated_at) < hard_cutoff or all(depth(q) == 0 for q in set(waiting_in(r)))]
    if not due:
        return {"stale": len(stale), "requeued": 0}
    ids = [r.id for r in due]
    with ctx.engine.begin() as conn:
        conn.execute(
            update(submissions)
            .where(and_(submissions.c.id.in_(ids), submissions.c.status.in_(ACTIVE)))
            .values(updated_at=now)
        )
    by_priority: dict[str, list[str]] = defaultdict(list)
    for r in due:
        by_priority[r.priority].append(r.id)
    for priority, pids in by_priority.items():
        for k in range(0, len(pids), ctx.settings.ingest_batch_max):
            ctx.publisher.ingest(pids[k : k + ctx.settings.ingest_batch_max], priority)
    known = [d for d in depth_of.values() if d is not None]
    total = sum(known) if len(known) == len(depth_of) else None
    details = " ".join(f"{q}={d}" for q, d in depth_of.items())
    log.warning("reconciler re-enqueued %d stale submissions (pipeline queue depth %s: %s)", len(due), total, details)
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
        for name in ("caption", "uploader_id", "callback_url", "priority", "policy"):
            if message.get(name) is not None and not isinstance(message.get(name), str):
                raise ModerationError("INVALID_MESSAGE", f"{name} must be a string.")
        req = SubmissionRequest(
            tenant_id=principal.tenant_id,
            actor=principal.key_id,
            default_policy=principal.default_policy,
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
