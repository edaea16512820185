"""Routing along a policy's cascade: which analyzer stage runs next, and whether a `run: when`
stage's conditions hold on the findings so far."""

from __future__ import annotations

from moderation.analyzers.base import Finding
from moderation.policy.evaluate import evaluate
from moderation.policy.schema import BUILTIN_STAGES, Policy, Stage
from moderation.vocab import Action


def next_stage(policy: Policy, found: list[Finding]) -> Stage | None:
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
        if "unsure" in conditions and Action(interim.action).needs_people:
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


def analyzed(policy: Policy, found: list[Finding]) -> bool:
    """Whether any analyzer stage of the policy has a finding already."""
    names = {s.stage for s in policy.analyzer_stages}
    return any(f.stage in names for f in found)
