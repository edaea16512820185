"""Unit tests for moderation.policy: loading and validating policy files, `evaluate`, QA draws, versions.

Findings are built directly; policy files are written to pytest's tmp_path. Nothing is mocked.
"""

from __future__ import annotations

import copy
import re
import statistics
from pathlib import Path
from typing import Any

import pytest
import yaml

from moderation.analyzers.base import Finding
from moderation.policy import (
    DSA_CATEGORIES,
    TAXONOMY,
    Policy,
    PolicyError,
    evaluate,
    load_policies,
    load_policy,
    qa_draw,
)
from moderation.vocab import Action

SHIPPED = Path(__file__).resolve().parents[2] / "policies"


# --------------------------------------------------------------------------- builders


def _dsa(category: str, clause: str, **kw: Any) -> dict[str, Any]:
    return {"category": category, "clause": clause, **kw}


BASE: dict[str, Any] = {
    "id": "test",
    "description": "unit-test policy",
    "min_confidence": 0.6,
    "qa_sample_rate": 0.0,
    "on_error": "review",
    "on_uncovered": "review",
    "cascade": [{"stage": "banks"}, {"stage": "lite", "analyzer": "some.module:Lite"}],
    "categories": {
        "sexual": {
            "block_at": 0.85,
            "review_at": 0.5,
            "restrict_at": 0.7,
            "dsa": _dsa("OTHER_VIOLATION_TC", "ToS 4.1 Sexual content"),
        },
        "hate": {"block_at": 0.85, "review_at": 0.5, "dsa": _dsa("ILLEGAL_OR_HARMFUL_SPEECH", "ToS 4.7 Hate")},
        "self_harm": {
            "block_at": 0.8,
            "review_at": 0.4,
            "review_queue": "priority",
            "dsa": _dsa("SELF_HARM", "ToS 4.9 Self-harm"),
        },
        "child_safety": {
            "block_at": 0.3,
            "review_at": 0.05,
            "escalate": True,
            "review_queue": "restricted",
            "dsa": _dsa(
                "PROTECTION_OF_MINORS",
                "ToS 4.3 Child safety",
                ground="illegal_content",
                legal_ground="Directive 2011/93/EU",
            ),
        },
    },
}
ALL = sorted(BASE["categories"])


def make_policy(**overrides: Any) -> Policy:
    data = copy.deepcopy(BASE)
    data.update(overrides)
    return Policy.model_validate(data)


POLICY = make_policy()


def model(scores: dict[str, float] | None = None, confidence: float = 0.95, **kw: Any) -> Finding:
    """A model finding that covers every category of the test policy unless told otherwise."""
    kw.setdefault("covered", ALL)
    return Finding("lite", "1.0", "lite", scores=scores or {}, confidence=confidence, **kw)


def bank(kind: str, category: str | None = None, distance: int = 0, entry: str = "e1") -> Finding:
    match = {"bank": "tenant-bank", "kind": kind, "label": "x", "distance": distance, "entry_id": entry, "hash": "ab"}
    if category is not None:
        match["category"] = category
    return Finding("banks", "1.0", "banks", bank_match=match)


def failed(error: str = "TimeoutError: model server") -> Finding:
    return Finding("lite", "1.0", "lite", error=error)


def codes(decision) -> list[str]:
    return [r["code"] for r in decision.reasons]


def write(directory: Path, name: str, content: Any) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
    return path


def policy_file_data(pid: str, **overrides: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    data["id"] = pid
    data.update(overrides)
    return data


# --------------------------------------------------------------------------- 1. known-bad bank matches


def test_known_bad_bank_match_blocks_with_bank_category():
    d = evaluate(POLICY, [bank("bad", "hate", distance=4, entry="e42"), model({"hate": 0.0})])
    assert d.action == "block"
    assert d.top_category == "hate"
    assert d.categories["hate"] == 1.0
    assert d.reasons[0]["code"] == "bank_match"
    assert d.reasons[0]["entry_id"] == "e42"
    assert d.reasons[0]["distance"] == 4
    assert d.reasons[0]["clause"] == "ToS 4.7 Hate"
    assert d.visibility == "REMOVED"
    assert d.dsa["category"] == "ILLEGAL_OR_HARMFUL_SPEECH"
    assert d.review_queue is None
    assert d.policy_id == "test" and d.policy_version == POLICY.version


def test_known_bad_child_safety_match_escalates_to_restricted_queue():
    d = evaluate(POLICY, [bank("bad", "child_safety")])
    assert d.action == "escalate"
    assert d.review_queue == "restricted"
    assert d.top_category == "child_safety"
    assert d.dsa["decision_ground"] == "illegal_content"
    assert d.dsa["legal_ground"] == "Directive 2011/93/EU"
    assert codes(d) == ["bank_match"]


def test_known_bad_match_uses_the_closest_entry():
    d = evaluate(
        POLICY, [bank("bad", "sexual", distance=20, entry="far"), bank("bad", "hate", distance=2, entry="near")]
    )
    assert d.action == "block"
    assert d.top_category == "hate"
    assert d.reasons[0]["entry_id"] == "near"


def test_known_bad_match_wins_over_errors_good_matches_and_low_confidence():
    found = [failed(), bank("good"), bank("bad", "sexual"), model({"sexual": 0.0}, confidence=0.1)]
    d = evaluate(POLICY, found)
    assert d.action == "block"
    assert codes(d) == ["bank_match"]


def test_known_bad_match_with_category_outside_policy_still_blocks():
    d = evaluate(POLICY, [bank("bad", "spam")])
    assert d.action == "block"
    assert d.top_category is None
    assert d.reasons[0]["clause"] is None
    assert d.dsa == {}


def test_known_bad_match_without_category_blocks():
    d = evaluate(POLICY, [bank("bad")])
    assert d.action == "block"
    assert d.top_category is None


# --------------------------------------------------------------------------- 2. analyzer errors fail closed


def test_analyzer_error_goes_to_review():
    d = evaluate(POLICY, [bank("none_matched_but_present"), failed("ValueError: unparseable output")])
    assert d.action == "review"
    assert d.review_reason == "analyzer_error"
    assert d.review_queue == "default"
    reason = next(r for r in d.reasons if r["code"] == "analyzer_error")
    assert reason["analyzer"] == "lite"
    assert reason["error"] == "ValueError: unparseable output"


def test_analyzer_error_with_on_error_block_blocks():
    d = evaluate(make_policy(on_error="block"), [failed()])
    assert d.action == "block"
    assert d.visibility == "REMOVED"
    assert "analyzer_error" in codes(d)


def test_every_analyzer_error_is_reported():
    d = evaluate(POLICY, [failed("A"), Finding("vlm", "2", "vlm", error="B")])
    errors = [(r["analyzer"], r["error"]) for r in d.reasons if r["code"] == "analyzer_error"]
    assert errors == [("lite", "A"), ("vlm", "B")]


@pytest.mark.parametrize("on_error", ["review", "block"])
@pytest.mark.parametrize(
    "others",
    [
        [],
        [model({"sexual": 0.0, "hate": 0.0})],
        [bank("good")],
        [model({}, flags={"prompt_injection": False})],
    ],
    ids=["alone", "with_clean_scores", "with_known_good", "with_clean_flags"],
)
def test_analyzer_error_never_allows(on_error, others):
    policy = make_policy(on_error=on_error, on_uncovered="allow", qa_sample_rate=1.0)
    d = evaluate(policy, [*others, failed()], qa=0.0)
    assert d.action == on_error
    assert d.action != "allow"


def test_on_error_allow_is_rejected_by_validation():
    with pytest.raises(ValueError, match="on_error"):
        make_policy(on_error="allow")


@pytest.mark.parametrize(
    ("scores", "action", "queue"),
    [({"child_safety": 0.9}, "escalate", "restricted"), ({"hate": 0.95}, "block", None)],
    ids=["escalate", "block"],
)
def test_analyzer_error_never_weakens_what_other_analyzers_found(scores, action, queue):
    without_error = evaluate(POLICY, [model(scores)])
    assert (without_error.action, without_error.review_queue) == (action, queue)
    with_error = evaluate(POLICY, [model(scores), Finding("vlm", "2", "vlm", error="timeout")])
    assert Action(with_error.action).severity >= Action(action).severity
    if queue:
        assert with_error.review_queue == queue


# --------------------------------------------------------------------------- 3. known-good matches


def test_known_good_match_allows():
    d = evaluate(POLICY, [bank("good", distance=1, entry="g7")])
    assert d.action == "allow"
    assert d.reasons == [{"code": "bank_match", **bank("good", distance=1, entry="g7").bank_match}]
    assert d.review_queue is None
    assert d.visibility is None


def test_known_good_match_allows_without_regard_to_models():
    d = evaluate(POLICY, [bank("good"), model({"hate": 0.99})])
    assert d.action == "allow"


# --------------------------------------------------------------------------- 4. thresholds


@pytest.mark.parametrize(
    ("score", "action"),
    [
        (0.0, "allow"),
        (0.4999, "allow"),
        (0.5, "review"),  # review_at inclusive
        (0.6999, "review"),
        (0.7, "restrict"),  # restrict_at inclusive
        (0.8499, "restrict"),
        (0.85, "block"),  # block_at inclusive
        (1.0, "block"),
    ],
)
def test_threshold_boundaries_are_inclusive(score, action):
    d = evaluate(POLICY, [model({"sexual": score})])
    assert d.action == action
    assert d.categories["sexual"] == score
    if action != "allow":
        assert d.top_category == "sexual"
        reason = next(r for r in d.reasons if r["code"] == "threshold")
        assert reason["category"] == "sexual"
        assert reason["action"] == action
        assert reason["clause"] == "ToS 4.1 Sexual content"
        assert reason["threshold"] == {"review": 0.5, "restrict": 0.7, "block": 0.85}[action]
    else:
        assert codes(d) == ["no_violation"]


def test_category_without_restrict_at_goes_from_review_to_block():
    assert evaluate(POLICY, [model({"hate": 0.8})]).action == "review"
    assert evaluate(POLICY, [model({"hate": 0.85})]).action == "block"


def test_restrict_and_block_set_visibility_and_dsa():
    restricted = evaluate(POLICY, [model({"sexual": 0.75})])
    assert restricted.visibility == "AGE_RESTRICTED"
    assert restricted.dsa == {
        "category": "OTHER_VIOLATION_TC",
        "keywords": [],
        "decision_ground": "incompatible_content",
        "legal_ground": None,
        "clause": "ToS 4.1 Sexual content",
    }
    policy = make_policy(visibility={"block": "DISABLED", "restrict": "LABELLED"})
    assert evaluate(policy, [model({"sexual": 0.75})]).visibility == "LABELLED"
    assert evaluate(policy, [model({"sexual": 0.9})]).visibility == "DISABLED"


def test_review_uses_the_category_review_queue():
    d = evaluate(POLICY, [model({"self_harm": 0.5})])
    assert d.action == "review"
    assert d.review_queue == "priority"
    assert d.review_reason == "threshold"
    hate = evaluate(POLICY, [model({"hate": 0.6})])
    assert hate.review_queue == "default"


@pytest.mark.parametrize(("score", "escalated"), [(0.049, False), (0.05, True), (0.2, True), (0.3, True)])
def test_child_safety_scores_escalate_to_restricted(score, escalated):
    d = evaluate(POLICY, [model({"child_safety": score})])
    if escalated:
        assert d.action == "escalate"
        assert d.review_queue == "restricted"
        assert d.review_reason == "threshold"
    else:
        assert d.action == "allow"
        assert d.review_queue is None


def test_scores_take_the_max_over_findings_and_ignore_out_of_policy_categories():
    high = Finding("vlm", "2", "vlm", scores={"hate": 0.9}, covered=ALL)
    low = model({"hate": 0.2, "spam": 0.99})
    for found in ([high, low], [low, high]):
        d = evaluate(POLICY, found)
        assert d.categories == {"hate": 0.9}
        assert d.action == "block"


# --------------------------------------------------------------------------- most severe category wins


def test_block_beats_restrict():
    d = evaluate(POLICY, [model({"sexual": 0.75, "hate": 0.9})])
    assert d.action == "block"
    assert d.top_category == "hate"
    hits = {r["category"]: r["action"] for r in d.reasons if r["code"] == "threshold"}
    assert hits == {"sexual": "restrict", "hate": "block"}


def test_escalate_beats_block_even_with_a_lower_score():
    d = evaluate(POLICY, [model({"sexual": 0.99, "child_safety": 0.1})])
    assert d.action == "escalate"
    assert d.top_category == "child_safety"
    assert d.review_queue == "restricted"


def test_review_is_more_severe_than_restrict():
    d = evaluate(POLICY, [model({"sexual": 0.75, "self_harm": 0.45})])
    assert d.action == "review"
    assert d.top_category == "self_harm"
    assert d.review_queue == "priority"


def test_between_equal_actions_the_highest_score_is_top():
    d = evaluate(POLICY, [model({"sexual": 0.9, "hate": 0.95})])
    assert d.action == "block"
    assert d.top_category == "hate"


# --------------------------------------------------------------------------- 5. guards


def test_low_confidence_turns_allow_into_review():
    d = evaluate(POLICY, [model({"sexual": 0.1}, confidence=0.3)])
    assert d.action == "review"
    assert d.review_reason == "low_confidence"
    reason = next(r for r in d.reasons if r["code"] == "low_confidence")
    assert reason == {"code": "low_confidence", "min_confidence": 0.6, "confidence": 0.3}


@pytest.mark.parametrize("score", [0.75, 0.9], ids=["restrict", "block"])
def test_low_confidence_turns_restrict_and_block_into_review(score):
    assert evaluate(POLICY, [model({"sexual": score}, confidence=0.95)]).action in ("restrict", "block")
    d = evaluate(POLICY, [model({"sexual": score}, confidence=0.59)])
    assert d.action == "review"
    assert d.review_reason == "low_confidence"
    assert d.top_category == "sexual"


def test_low_confidence_keeps_escalate():
    d = evaluate(POLICY, [model({"child_safety": 0.5}, confidence=0.1)])
    assert d.action == "escalate"
    assert d.review_queue == "restricted"
    assert "low_confidence" not in codes(d)


def test_confidence_equal_to_minimum_is_enough():
    assert evaluate(POLICY, [model({"sexual": 0.1}, confidence=0.6)]).action == "allow"


def test_low_confidence_counts_only_findings_with_scores():
    unscored = Finding("ocr", "1", "ocr", confidence=0.0, covered=[])
    assert evaluate(POLICY, [model({"sexual": 0.1}), unscored]).action == "allow"


def test_lowest_confidence_is_reported():
    d = evaluate(POLICY, [model({"sexual": 0.1}, confidence=0.5), model({"hate": 0.1}, confidence=0.2)])
    assert next(r for r in d.reasons if r["code"] == "low_confidence")["confidence"] == 0.2


@pytest.mark.parametrize(("score", "before"), [(0.1, "allow"), (0.75, "restrict")])
def test_prompt_injection_turns_allow_and_restrict_into_review(score, before):
    assert evaluate(POLICY, [model({"sexual": score})]).action == before
    d = evaluate(POLICY, [model({"sexual": score}, flags={"prompt_injection": True})])
    assert d.action == "review"
    assert d.review_reason == "prompt_injection"
    assert "prompt_injection" in codes(d)


def test_prompt_injection_does_not_soften_block():
    d = evaluate(POLICY, [model({"hate": 0.9}, flags={"prompt_injection": True})])
    assert d.action == "block"


def test_prompt_injection_flag_false_is_ignored():
    assert evaluate(POLICY, [model({"sexual": 0.1}, flags={"prompt_injection": False})]).action == "allow"


def test_uncovered_categories_go_to_review():
    d = evaluate(POLICY, [model({"sexual": 0.1}, covered=["sexual", "hate"])])
    assert d.action == "review"
    assert d.review_reason == "uncovered_categories"
    assert d.review_queue == "default"
    reason = next(r for r in d.reasons if r["code"] == "uncovered_categories")
    assert reason["categories"] == ["child_safety", "self_harm"]


def test_coverage_defaults_to_scored_categories():
    partial = Finding("lite", "1", "lite", scores={"sexual": 0.1, "hate": 0.1})
    assert partial.coverage == {"sexual", "hate"}
    assert evaluate(POLICY, [partial]).action == "review"
    full = Finding("lite", "1", "lite", scores=dict.fromkeys(ALL, 0.0))
    assert evaluate(POLICY, [full]).action == "allow"


def test_coverage_is_the_union_over_findings():
    a = model({"sexual": 0.1}, covered=["sexual", "hate"])
    b = model({"self_harm": 0.1}, covered=["self_harm", "child_safety"])
    assert evaluate(POLICY, [a, b]).action == "allow"


def test_uncovered_with_on_uncovered_allow_allows():
    policy = make_policy(on_uncovered="allow")
    d = evaluate(policy, [model({"sexual": 0.1}, covered=["sexual"])])
    assert d.action == "allow"
    assert codes(d) == ["no_violation"]
    assert evaluate(policy, []).action == "allow"


def test_no_findings_with_on_uncovered_review_is_review():
    d = evaluate(POLICY, [])
    assert d.action == "review"
    assert d.review_reason == "uncovered_categories"


def test_uncovered_does_not_soften_block():
    d = evaluate(POLICY, [model({"hate": 0.9}, covered=["hate"])])
    assert d.action == "block"


# --------------------------------------------------------------------------- QA sampling


@pytest.mark.parametrize("score", [0.1, 0.75, 0.9], ids=["allow", "restrict", "block"])
def test_qa_sample_below_rate_opens_qa_review_without_changing_action(score):
    policy = make_policy(qa_sample_rate=0.1)
    plain = evaluate(policy, [model({"sexual": score})], qa=0.5)
    sampled = evaluate(policy, [model({"sexual": score})], qa=0.05)
    assert sampled.action == plain.action
    assert sampled.review_queue == "qa"
    assert sampled.review_reason == "qa_sample"
    assert {"code": "qa_sample", "rate": 0.1} in sampled.reasons
    assert plain.review_queue is None
    assert "qa_sample" not in codes(plain)


def test_qa_sample_at_or_above_rate_is_not_sampled():
    policy = make_policy(qa_sample_rate=0.1)
    assert evaluate(policy, [model({"sexual": 0.1})], qa=0.1).review_queue is None
    assert evaluate(policy, [model({"sexual": 0.1})], qa=0.99).review_queue is None
    # the default draw (1.0) never samples
    assert evaluate(make_policy(qa_sample_rate=1.0), [model({"sexual": 0.1})]).review_queue is None


def test_qa_sample_does_not_replace_a_real_review_queue():
    policy = make_policy(qa_sample_rate=1.0)
    d = evaluate(policy, [model({"self_harm": 0.5})], qa=0.0)
    assert d.action == "review"
    assert d.review_queue == "priority"
    assert "qa_sample" not in codes(d)


def test_qa_rate_zero_never_samples():
    assert evaluate(POLICY, [model({"sexual": 0.1})], qa=0.0).review_queue is None


def test_evaluate_is_pure():
    found = [model({"sexual": 0.75}), model({"hate": 0.6}, confidence=0.7)]
    a = evaluate(POLICY, found, qa=0.3)
    b = evaluate(POLICY, found, qa=0.3)
    assert a == b
    assert a.to_json()["policy"] == {"id": "test", "version": POLICY.version}


# --------------------------------------------------------------------------- qa_draw


def test_qa_draw_is_deterministic_and_in_range():
    assert qa_draw("sub-1") == qa_draw("sub-1")
    assert qa_draw("sub-1") != qa_draw("sub-2")
    for sid in ["", "x", "sub-1", "0" * 200, "ünïcødé"]:
        assert 0.0 <= qa_draw(sid) < 1.0


def test_qa_draw_is_roughly_uniform():
    draws = [qa_draw(f"submission-{i}") for i in range(2000)]
    assert all(0.0 <= x < 1.0 for x in draws)
    assert len(set(draws)) == 2000
    assert abs(statistics.fmean(draws) - 0.5) < 0.03
    bins = [0] * 10
    for x in draws:
        bins[int(x * 10)] += 1
    assert all(140 <= b <= 260 for b in bins), bins
    chi2 = sum((b - 200) ** 2 / 200 for b in bins)
    assert chi2 < 27.9, chi2  # 9 degrees of freedom, p = 0.001
    # about 1% of ids fall under a 1% QA rate
    assert 5 <= sum(x < 0.01 for x in draws) <= 40


# --------------------------------------------------------------------------- versions


def test_version_is_stable_across_loads(tmp_path):
    path = write(tmp_path, "alpha", policy_file_data("alpha"))
    v1, v2 = load_policy(path).version, load_policy(path).version
    assert v1 == v2
    assert re.fullmatch(r"[0-9a-f]{16}", v1)


def test_version_ignores_formatting_and_key_order(tmp_path):
    data = policy_file_data("alpha")
    a = load_policy(write(tmp_path, "alpha", data)).version
    reordered = dict(reversed(list(data.items())))
    text = "# a comment\n" + yaml.safe_dump(reordered, sort_keys=True, default_flow_style=True)
    (tmp_path / "b").mkdir()
    b = load_policy(write(tmp_path / "b", "alpha", text)).version
    assert a == b


def test_version_changes_when_a_threshold_changes(tmp_path):
    data = policy_file_data("alpha")
    before = load_policy(write(tmp_path, "alpha", data)).version
    data["categories"]["hate"]["block_at"] = 0.86
    after = load_policy(write(tmp_path, "alpha", data)).version
    assert before != after
    data["categories"]["hate"]["block_at"] = 0.85
    assert load_policy(write(tmp_path, "alpha", data)).version == before


def test_version_of_an_extending_policy_follows_its_parent(tmp_path):
    write(tmp_path, "parent", policy_file_data("parent"))
    child = write(tmp_path, "child", {"id": "child", "extends": "parent", "qa_sample_rate": 0.5})
    before = load_policy(child)
    assert before.qa_sample_rate == 0.5
    assert before.categories == make_policy().categories
    data = policy_file_data("parent")
    data["categories"]["sexual"]["review_at"] = 0.4
    write(tmp_path, "parent", data)
    after = load_policy(child)
    assert after.categories["sexual"].review_at == 0.4
    assert after.version != before.version


def test_decision_records_policy_version():
    policy = make_policy(min_confidence=0.5)
    assert policy.version != POLICY.version
    assert evaluate(policy, [model({"sexual": 0.1})]).policy_version == policy.version


# --------------------------------------------------------------------------- validation errors


def expect_policy_error(path: Path, *needles: str) -> str:
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    message = str(caught.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


def test_unknown_category_is_rejected(tmp_path):
    data = policy_file_data("p")
    data["categories"]["gambling"] = copy.deepcopy(data["categories"]["hate"])
    expect_policy_error(write(tmp_path, "p", data), "unknown categories", "gambling")


def test_review_at_above_block_at_is_rejected(tmp_path):
    data = policy_file_data("p")
    data["categories"]["hate"].update(review_at=0.9, block_at=0.8)
    expect_policy_error(write(tmp_path, "p", data), "categories.hate", "review_at must be <= block_at")


def test_restrict_at_outside_review_block_range_is_rejected(tmp_path):
    data = policy_file_data("p")
    data["categories"]["sexual"]["restrict_at"] = 0.9
    expect_policy_error(write(tmp_path, "p", data), "categories.sexual", "restrict_at")


def test_threshold_above_one_is_rejected(tmp_path):
    data = policy_file_data("p")
    data["categories"]["hate"]["block_at"] = 1.5
    expect_policy_error(write(tmp_path, "p", data), "categories.hate.block_at")


def test_unknown_dsa_category_is_rejected(tmp_path):
    data = policy_file_data("p")
    data["categories"]["hate"]["dsa"]["category"] = "NOT_A_DSA_CATEGORY"
    expect_policy_error(write(tmp_path, "p", data), "categories.hate.dsa", "NOT_A_DSA_CATEGORY")


def test_illegal_content_without_legal_ground_is_rejected(tmp_path):
    data = policy_file_data("p")
    del data["categories"]["child_safety"]["dsa"]["legal_ground"]
    expect_policy_error(write(tmp_path, "p", data), "categories.child_safety.dsa", "legal_ground")


def test_id_must_match_file_name(tmp_path):
    expect_policy_error(write(tmp_path, "p", policy_file_data("other")), "'other'", "'p'", "file name")


def test_invalid_id_pattern_is_rejected(tmp_path):
    expect_policy_error(write(tmp_path, "Bad Id", policy_file_data("Bad Id")), "id")


def test_analyzer_stage_without_analyzer_path_is_rejected(tmp_path):
    data = policy_file_data("p", cascade=[{"stage": "banks"}, {"stage": "lite"}])
    expect_policy_error(write(tmp_path, "p", data), "cascade.1", "'lite'", "needs an analyzer")


def test_empty_cascade_is_rejected(tmp_path):
    expect_policy_error(write(tmp_path, "p", policy_file_data("p", cascade=[])), "cascade must name at least one stage")


def test_duplicate_stages_are_rejected(tmp_path):
    data = policy_file_data("p", cascade=[{"stage": "banks"}, {"stage": "banks"}])
    expect_policy_error(write(tmp_path, "p", data), "unique")


def test_unknown_key_is_rejected(tmp_path):
    data = policy_file_data("p")
    data["categories"]["hate"]["blockat"] = 0.9
    expect_policy_error(write(tmp_path, "p", data), "categories.hate.blockat")


def test_on_error_allow_in_a_file_is_rejected(tmp_path):
    expect_policy_error(write(tmp_path, "p", policy_file_data("p", on_error="allow")), "on_error")


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "", "42\n"], ids=["list", "str", "empty", "int"])
def test_yaml_that_is_not_a_mapping_is_rejected(tmp_path, text):
    expect_policy_error(write(tmp_path, "p", text), "a policy is a mapping")


def test_invalid_yaml_is_rejected(tmp_path):
    expect_policy_error(write(tmp_path, "p", "id: p\ncategories: {sexual: [\n"), "not valid YAML")


def test_extends_of_a_missing_policy_is_rejected(tmp_path):
    path = write(tmp_path, "child", {"id": "child", "extends": "nope"})
    expect_policy_error(path, "extends 'nope'", "missing")


def test_circular_extends_is_rejected(tmp_path):
    write(tmp_path, "a", {"id": "a", "extends": "b"})
    b = write(tmp_path, "b", {"id": "b", "extends": "a"})
    with pytest.raises(PolicyError, match="circular"):
        load_policy(b)
    selfref = write(tmp_path, "c", {"id": "c", "extends": "c"})
    with pytest.raises(PolicyError, match="circular"):
        load_policy(selfref)


def test_extending_policy_must_still_match_its_file_name(tmp_path):
    write(tmp_path, "parent", policy_file_data("parent"))
    # without its own id the child inherits the parent's, which does not match child.yaml
    expect_policy_error(write(tmp_path, "child", {"extends": "parent"}), "'parent'", "'child'")


@pytest.mark.parametrize("parent", ["../parent", "sub/parent"])
def test_extends_with_a_path_is_a_policy_error(tmp_path, parent):
    write(tmp_path, "parent", policy_file_data("parent"))
    expect_policy_error(write(tmp_path, "child", {"id": "child", "extends": parent}), "extends")


def test_non_utf8_policy_file_is_a_policy_error(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_bytes(b"id: p\ndescription: \xff\xfe\n")
    expect_policy_error(path)


# --------------------------------------------------------------------------- load_policies and shipped policies


def test_load_policies_returns_policies_by_id(tmp_path):
    write(tmp_path, "alpha", policy_file_data("alpha"))
    write(tmp_path, "beta", {"id": "beta", "extends": "alpha", "on_error": "block"})
    (tmp_path / "notes.txt").write_text("not a policy")
    policies = load_policies(tmp_path)
    assert sorted(policies) == ["alpha", "beta"]
    assert policies["beta"].on_error == "block"
    assert policies["alpha"].on_error == "review"


def test_load_policies_of_an_empty_directory_is_an_error(tmp_path):
    with pytest.raises(PolicyError, match="no policies"):
        load_policies(tmp_path)


def test_load_policies_fails_on_any_invalid_file(tmp_path):
    write(tmp_path, "alpha", policy_file_data("alpha"))
    write(tmp_path, "broken", policy_file_data("broken", cascade=[]))
    with pytest.raises(PolicyError, match=r"broken\.yaml"):
        load_policies(tmp_path)


def test_shipped_policies_load():
    policies = load_policies(SHIPPED)
    assert {"default", "hash-only"} <= set(policies)
    default, hash_only = policies["default"], policies["hash-only"]
    assert set(default.categories) == set(TAXONOMY)
    assert all(rule.dsa.category in DSA_CATEGORIES for rule in default.categories.values())
    assert default.categories["child_safety"].escalate
    assert default.on_error in ("review", "block")
    # hash-only inherits the default's categories and overrides QA sampling
    assert hash_only.categories == default.categories
    assert hash_only.qa_sample_rate == 0.0
    assert [s.stage for s in hash_only.cascade] == ["banks"]
    assert hash_only.version != default.version
    assert load_policies(SHIPPED)["default"].version == default.version


def test_shipped_default_policy_decisions():
    default = load_policy(SHIPPED / "default.yaml")
    assert evaluate(default, [bank("bad", "child_safety")]).review_queue == "restricted"
    assert evaluate(default, [bank("bad", "violence_gore")]).action == "block"
    assert evaluate(default, [failed()]).action == "review"
    # no model stage sees anything yet, so an image without a bank match is allowed
    clean = evaluate(default, [Finding("banks", "1", "banks")], qa=0.5)
    assert clean.action == "allow"
    assert clean.review_queue is None
    sampled = evaluate(default, [Finding("banks", "1", "banks")], qa=0.001)
    assert sampled.review_queue == "qa"


# --------------------------------------------------------------------------- near bank matches


def near(kind: str, distance: int = 20, category: str | None = "hate") -> Finding:
    return Finding(
        "banks",
        "1",
        "banks",
        covered=[],
        bank_match={
            "kind": kind,
            "bank": f"{kind}-bank",
            "category": category,
            "distance": distance,
            "near": True,
            "entry_id": 9,
            "label": "template",
        },
    )


def test_near_bad_match_is_never_allowed_automatically():
    d = evaluate(POLICY, [near("bad")])
    assert d.action == "review" and d.review_reason == "bank_near_match"
    assert d.reasons[-1]["code"] == "bank_near_match" and d.top_category == "hate"


def test_near_bad_match_does_not_weaken_a_block():
    d = evaluate(POLICY, [near("bad"), model({"hate": 0.95})])
    assert d.action == "block"


def test_near_good_match_does_not_allow_by_itself():
    for scores in ({"hate": 0.95}, {}):
        with_near = evaluate(POLICY, [near("good"), model(scores)])
        assert with_near.action == evaluate(POLICY, [model(scores)]).action
        assert not any(r["code"] == "bank_match" for r in with_near.reasons)


@pytest.mark.parametrize(
    "finding",
    [
        Finding("m", "1", "m", scores={"hate": float("nan")}),
        Finding("m", "1", "m", scores={"hate": 1.5}),
        Finding("m", "1", "m", scores={"hate": -0.1}),
        Finding("m", "1", "m", scores={"hate": None}),  # type: ignore[dict-item]
        Finding("m", "1", "m", scores={"hate": "0.9"}),  # type: ignore[dict-item]
        Finding("m", "1", "m", confidence=float("nan")),
        Finding("m", "1", "m", flags=None),  # type: ignore[arg-type]
        Finding("m", "1", "m", covered="hate"),  # type: ignore[arg-type]
    ],
    ids=["nan", "above-1", "negative", "none", "string", "nan-confidence", "flags-none", "covered-str"],
)
def test_malformed_findings_are_caught(finding):
    assert finding.problem() is not None


def test_wellformed_finding_passes():
    assert model({"hate": 0.2}).problem() is None


def test_moderation_talk_keeps_an_image_from_being_allowed_automatically():
    assert evaluate(POLICY, [model({"sexual": 0.1})]).action == "allow"
    d = evaluate(POLICY, [model({"sexual": 0.1}, flags={"moderation_talk": True})])
    assert d.action == "review" and d.review_reason == "moderation_talk"
    # weaker evidence than an injection: it never softens, nor hardens, a restriction or a block
    assert evaluate(POLICY, [model({"sexual": 0.75}, flags={"moderation_talk": True})]).action == "restrict"


def test_policies_use_the_transparency_databases_current_categories():
    """The Transparency Database's categories since July 2025: removed ones are refused at load,
    with the successor named; keywords and territorial codes are checked too."""
    from moderation.policy.schema import DsaMapping

    with pytest.raises(ValueError, match=r"no longer exists.*OTHER_VIOLATION_TC"):
        DsaMapping(category="PORNOGRAPHY_OR_SEXUALIZED_CONTENT", clause="x")
    with pytest.raises(ValueError, match="no longer exists"):
        DsaMapping(category="SCOPE_OF_PLATFORM_SERVICE", clause="x")
    with pytest.raises(ValueError, match="unknown DSA keywords"):
        DsaMapping(category="VIOLENCE", keywords=["DANGEROUS_TOYS"], clause="x")
    assert DsaMapping(category="OTHER_VIOLATION_TC", keywords=["NUDITY"], clause="x").keywords == ["NUDITY"]
    with pytest.raises(ValueError, match="territorial_scope"):
        make_policy(territorial_scope=["EU", "UK"])
    default = load_policies(SHIPPED)["default"]
    assert {r.dsa.category for r in default.categories.values()} <= set(DSA_CATEGORIES)
