"""Running one analyzer stage for one submission: the normalised image in, one finding out
(errors become the finding: fail closed), then hand over to `decide`."""

from __future__ import annotations

import io
import logging
import time
from contextlib import nullcontext

from PIL import Image
from sqlalchemy import update

from moderation import audit
from moderation.analyzers.base import AnalysisInput, Finding
from moderation.audit.events import analyzed_event
from moderation.db.rows import SubmissionRow
from moderation.db.tables import submissions
from moderation.errors import FatalAnalyzerError, ModerationError, TransientAnalyzerError
from moderation.intake.images import ORIENTATIONS, decode_cost, sample_frames, to_rgb
from moderation.pipeline.context import Context
from moderation.pipeline.finalize import attempt_budget, dead_letter, finalize_many
from moderation.pipeline.findings import Due, insert_findings, start_attempt, stored_findings
from moderation.policy import Policy, Stage
from moderation.queue import Q_CALLBACKS, Q_DECIDE, T_CALLBACK, T_DECIDE

log = logging.getLogger(__name__)


def analyze(ctx: Context, submission_id: str, stage_name: str, isolate: bool = False) -> str:
    """Run one analyzer stage for one submission and hand over to `decide`.

    `isolate`: this delivery is a redelivery or a retry (it may be the item that broke a batch
    or a worker): analyzers that batch run it on its own.

    Any exception from the analyzer other than TransientAnalyzerError becomes an error
    finding (fail closed); transient ones propagate for the task to retry with backoff.
    """
    sub = start_attempt(ctx, submission_id)
    if sub is None:
        return "noop"
    policy = ctx.policies.get(sub.policy_id)
    if policy is None or sub.attempts > attempt_budget(ctx, policy):
        with ctx.engine.begin() as conn:
            found = stored_findings(conn, [sub.id])[sub.id]
            why = f"gave up after {sub.attempts - 1} attempts" if policy else "policy no longer loaded"
            event = dead_letter(conn, sub, f"analyze:{stage_name}", why)
            decided = finalize_many(ctx, conn, [Due(sub, policy, found, [], [event], reason="exhausted_retries")])
        if sub.id in decided and sub.callback_url:
            ctx.publisher.send(T_CALLBACK, [sub.id], Q_CALLBACKS)
        return "dead_lettered"
    stage = policy.stage(stage_name)
    with ctx.engine.connect() as conn:
        done = stored_findings(conn, [sub.id])[sub.id]
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
        if insert_findings(conn, [(sub.id, finding)]):
            audit.append(conn, sub.tenant_id, [analyzed_event(sub.id, finding)])
    ctx.publisher.send(T_DECIDE, [sub.id], Q_DECIDE, sub.priority)
    return "analyzed" if not finding.error else "analyzer_error"


# The analyzers' view of an image: at most this many pixels (OCR reads a 1080x20000 screenshot at
# 0.86 of its size), reduced before any conversion, within the process's decode budget.
ANALYSIS_MAX_PIXELS = 16_000_000


def analysis_cost(im: Image.Image) -> int:
    """What decoding `im` for the analyzers holds at its peak (see intake.images.decode_cost)."""
    return decode_cost(im) + ANALYSIS_MAX_PIXELS * 4 * 2


def analysis_frame(im: Image.Image) -> Image.Image:
    """The first frame, oriented, RGB, at most ANALYSIS_MAX_PIXELS."""
    orientation = im.getexif().get(0x0112)
    if im.format in ("JPEG", "MPO") and im.width * im.height > ANALYSIS_MAX_PIXELS:
        scale = (ANALYSIS_MAX_PIXELS / (im.width * im.height)) ** 0.5
        im.draft("RGB", (int(im.width * scale), int(im.height * scale)))
    im.load()
    frame = im
    if frame.width * frame.height > ANALYSIS_MAX_PIXELS:
        scale = (ANALYSIS_MAX_PIXELS / (frame.width * frame.height)) ** 0.5
        size = (max(1, int(frame.width * scale)), max(1, int(frame.height * scale)))
        frame = frame.resize(size, Image.Resampling.BOX)  # every mode, 16-bit included
    if orientation in ORIENTATIONS:
        frame = frame.transpose(ORIENTATIONS[orientation])
    return to_rgb(frame)


def analysis_input(ctx: Context, sub: SubmissionRow, policy: Policy, isolate: bool = False) -> AnalysisInput:
    """The normalised image (and, for animations, a few more frames) for an analyzer."""
    data = ctx.blobs.get(sub.sha256)
    with Image.open(io.BytesIO(data)) as im:
        im.seek(0)
        budget = ctx.limits.budget
        with budget.hold(analysis_cost(im)) if budget else nullcontext():
            rgb = analysis_frame(im)
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


def run_stage(ctx: Context, sub: SubmissionRow, policy: Policy, stage: Stage, isolate: bool = False) -> Finding:
    started = time.perf_counter()
    try:
        try:
            item = analysis_input(ctx, sub, policy, isolate)
        except ModerationError as exc:
            if exc.final:
                raise
            # The blob store is unreachable: a fault outside the input, retried with backoff
            # (the attempt given back), never an error finding that sends the item to people.
            raise TransientAnalyzerError(exc.message) from exc
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
