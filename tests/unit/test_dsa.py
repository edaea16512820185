"""Statements of reasons for the DSA Transparency Database: built from decisions under the
shipped policy, each passes the database's validation rules; the validator refuses what the
database refuses; no personal data leaves."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from moderation.audit.dsa import puid_for, statement, validate
from moderation.policy import load_policies
from moderation.policy.dsa_vocab import EU, territories

POLICY = load_policies(Path(__file__).resolve().parents[2] / "policies")["default"]
UPLOADED = datetime(2026, 11, 30, 23, 59, tzinfo=UTC)
DECIDED = datetime(2026, 12, 1, 0, 1, tzinfo=UTC)


def sub(external_id: str | None = "post-1", caption: str = "meet me at 12 Elm St, call 555-0101") -> SimpleNamespace:
    return SimpleNamespace(
        id="a" * 32, external_id=external_id, created_at=UPLOADED, caption=caption, uploader_id="u-9"
    )


def decision(
    action: str, scores: dict[str, float], automated: bool = True, reasons: list | None = None
) -> SimpleNamespace:
    return SimpleNamespace(
        action=action,
        categories=scores,
        reasons=reasons or [{"code": "threshold", "reason": "the uploader Jane Doe is a known troll"}],
        policy_id="default",
        policy_version=POLICY.version,
        automated=automated,
        decided_at=DECIDED,
    )


@pytest.mark.parametrize("category", sorted(POLICY.categories))
@pytest.mark.parametrize("action", ["block", "restrict"])
def test_every_category_makes_a_valid_statement(category: str, action: str) -> None:
    s = statement(sub(), decision(action, {category: 0.99}), POLICY, flagged_by_machine=True)
    assert s is not None
    assert validate(s) == [], s
    assert s["content_type"] == ["CONTENT_TYPE_IMAGE"]
    assert s["content_date"] == "2026-11-30" and s["application_date"] == "2026-12-01"
    assert s["category"] == "STATEMENT_CATEGORY_" + POLICY.categories[category].dsa.category
    assert s["decision_visibility"][0].startswith("DECISION_VISIBILITY_CONTENT_")
    # No personal data: neither the caption, the uploader, nor a moderator's own words.
    text = str(s)
    assert "Elm St" not in text and "u-9" not in text and "Jane Doe" not in text


def test_grounds_automation_and_scope() -> None:
    cs = statement(sub(), decision("block", {"child_safety": 0.9}), POLICY, True)
    assert cs is not None and cs["decision_ground"] == "DECISION_GROUND_ILLEGAL_CONTENT"
    assert cs["illegal_content_legal_ground"].startswith("Directive 2011/93/EU")
    assert cs["category_specification"] == ["KEYWORD_CHILD_SEXUAL_ABUSE_MATERIAL"]
    assert cs["automated_detection"] == "Yes" and cs["automated_decision"] == "AUTOMATED_DECISION_FULLY"
    assert (
        cs["territorial_scope"] == sorted(EU)
        and "GR" in cs["territorial_scope"]
        and "EL" not in cs["territorial_scope"]
    )
    human = statement(sub(), decision("block", {"hate": 1.0}, automated=False), POLICY, True)
    assert human is not None and human["automated_decision"] == "AUTOMATED_DECISION_PARTIALLY"
    appeal = decision("block", {"hate": 1.0}, automated=False, reasons=[{"code": "appeal"}])
    assert statement(sub(), appeal, POLICY, True)["automated_decision"] == "AUTOMATED_DECISION_NOT_AUTOMATED"  # type: ignore[index]
    assert statement(sub(), decision("allow", {}), POLICY, True) is None
    assert statement(sub(), decision("review", {"hate": 0.6}), POLICY, True) is None
    assert territories(["EL", "no", "EEA"])[:3] == ["AT", "BE", "BG"] and "GR" in territories(["EL"])


@pytest.mark.parametrize(
    ("external_id", "expected"),
    [
        ("post-123_ab", "post-123_ab"),
        ("post/123", None),
        ("ünïcode", None),
        ("a" * 501, None),
        ("line\n", None),
        (None, "a" * 32),
    ],
)
def test_puids_are_what_the_database_accepts(external_id: str | None, expected: str | None) -> None:
    got = puid_for(external_id, "a" * 32)
    if expected is not None:
        assert got == expected
    else:
        assert got.startswith("sha256-") and got == puid_for(external_id, "b" * 32)  # deterministic
    s = statement(sub(external_id), decision("block", {"spam": 0.99}), POLICY, True)
    assert s is not None and validate(s) == []


def valid() -> dict:
    s = statement(sub(), decision("block", {"spam": 0.99}), POLICY, True)
    assert s is not None
    return s


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"category": "STATEMENT_CATEGORY_PORNOGRAPHY_OR_SEXUALIZED_CONTENT"}, "category"),
        ({"category": "STATEMENT_CATEGORY_SCOPE_OF_PLATFORM_SERVICE"}, "category"),
        ({"category_specification": ["KEYWORD_DANGEROUS_TOYS"]}, "category_specification"),
        ({"territorial_scope": ["EL"]}, "territorial_scope"),
        ({"territorial_scope": ["de"]}, "territorial_scope"),
        ({"content_date": "2026-12-1"}, "content_date"),
        ({"content_date": "2026-02-30"}, "content_date"),
        ({"application_date": "2019-12-31"}, "application_date"),
        ({"content_date": "2026-12-02"}, "content_date"),
        ({"decision_facts": "x" * 5001}, "decision_facts"),
        ({"decision_facts": "   "}, "decision_facts"),
        ({"incompatible_content_ground": None}, "incompatible_content_ground"),
        ({"decision_ground": "DECISION_GROUND_ILLEGAL_CONTENT"}, "illegal_content_legal_ground"),
        ({"decision_visibility": []}, "one of decision_visibility"),
        ({"decision_visibility": "DECISION_VISIBILITY_CONTENT_REMOVED"}, "decision_visibility"),
        ({"decision_visibility": ["DECISION_VISIBILITY_OTHER"]}, "decision_visibility_other"),
        ({"content_type": "CONTENT_TYPE_IMAGE"}, "content_type"),
        ({"automated_detection": True}, "automated_detection"),
        ({"automated_decision": "AUTOMATED_DECISION_YES"}, "automated_decision"),
        ({"source_type": "SOURCE_TRUSTED_NOTIFIER"}, "source_type"),
        ({"puid": "has space"}, "puid"),
        ({"puid": "p" * 501}, "puid"),
        ({"incompatible_content_explanation": "y" * 2001}, "incompatible_content_explanation"),
        ({"end_date_visibility_restriction": "2038-01-02"}, "end_date_visibility_restriction"),
    ],
)
def test_the_validator_refuses_what_the_database_refuses(change: dict, problem: str) -> None:
    s = {**valid(), **change}
    assert any(e.startswith(problem) for e in validate(s)), validate(s)
