"""Moving submissions one step along their cascade: bank lookups, the verdict cache, routing to
the next analyzer stage, or the automated decision when none is due."""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import select

from moderation import audit
from moderation.analyzers.base import Finding
from moderation.audit.events import analyzed_event, received_event
from moderation.db.rows import SubmissionRow
from moderation.db.sql import relaxed_commit
from moderation.db.tables import submissions
from moderation.pipeline.context import Context
from moderation.pipeline.finalize import attempt_budget, dead_letter, finalize_many
from moderation.pipeline.findings import Due, count_attempts, insert_findings, not_yet_received, stored_findings
from moderation.policy import Stage
from moderation.policy.cascade import analyzed, next_stage
from moderation.queue import Q_CALLBACKS, T_ANALYZE, T_CALLBACK
from moderation.vocab import ACTIVE


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
    counted: list[SubmissionRow] = []
    if count_attempt:
        # Its own commit, so that a batch that fails every time still uses up its attempts
        # and ends dead-lettered rather than re-enqueued forever.
        with ctx.engine.begin() as conn:
            relaxed_commit(conn)
            counted = count_attempts(conn, ids)
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
        # A later one may follow a first whose transaction never committed (worker killed, the
        # database restarted after the count): its `received` event is still to be written.
        unreceived = not_yet_received(conn, [r.id for r in rows if r.id not in first]) if count_attempt else set()
        stored = stored_findings(conn, [r.id for r in rows if r.id not in first])
        due: list[Due] = []
        route_events: list[tuple[str, audit.Event]] = []
        for sub in rows:
            events = [received_event(sub)] if sub.id in first or sub.id in unreceived else []
            policy = ctx.policies.get(sub.policy_id)
            done = stored.get(sub.id, [])
            if sub.attempts > attempt_budget(ctx, policy):
                events.append(dead_letter(conn, sub, "ingest", f"gave up after {sub.attempts - 1} attempts"))
                due.append(Due(sub, policy, done, [], events, reason="exhausted_retries"))
                outcome["dead_lettered"] += 1
                continue
            if policy is None:
                missing = Finding("policy", "0", "policy", error=f"policy {sub.policy_id!r} is no longer loaded")
                due.append(Due(sub, None, [missing], [missing], events))
                continue
            new: list[Finding] = []
            if any(s.stage == "banks" for s in policy.cascade) and not any(f.stage == "banks" for f in done):
                new.append(ctx.banks.lookup(sub.tenant_id, sub.sha256, sub.pdq, conn))
            current = done + new
            matched = any(f.bank_match and not f.bank_match.get("near") for f in current)
            if not matched and any(s.stage == "cache" for s in policy.cascade) and not analyzed(policy, done):
                cached = ctx.verdicts.get(policy, sub.tenant_id, sub.sha256, sub.caption)
                if cached:
                    current, new = current + cached, new + cached
                    outcome["cache_hits"] += 1
            nxt = None if matched else next_stage(policy, current)
            if nxt is None:
                due.append(Due(sub, policy, current, new, events))
                continue
            stored_now = insert_findings(conn, [(sub.id, f) for f in new])
            events += [analyzed_event(sub.id, f) for f in new if (sub.id, f.stage) in stored_now]
            route_events += [(sub.tenant_id, e) for e in events]
            routed.append((sub, nxt))
        decided = finalize_many(ctx, conn, due, route_events)
        outcome["decided"] += len(decided)
    for item in due:  # after commit: cache what the analyzers found (never errors, never a replay)
        fresh = item.policy is not None and analyzed(item.policy, item.found)
        if item.sub.id in decided and fresh and item.policy and not any(f.cached for f in item.found):
            ctx.verdicts.put(item.policy, item.sub.tenant_id, item.sub.sha256, item.sub.caption, item.found)
    for sid in decided:
        if sid in with_callback:
            ctx.publisher.send(T_CALLBACK, [sid], Q_CALLBACKS)
    for sub, nxt in routed:
        ctx.publisher.send(T_ANALYZE, [sub.id, nxt.stage], nxt.queue, sub.priority)
    outcome["routed"] = len(routed)
    return ",".join(f"{k}={v}" for k, v in sorted(outcome.items()) if v)
