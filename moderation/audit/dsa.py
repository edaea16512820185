"""Statements of reasons for the EU DSA Transparency Database: one per submission with a
restrictive decision (block or restrict), built from the decision, its policy's DSA mapping and
dates, free of personal data (no uploader, caption, OCR text or moderator's words), and checked
against the database's own validation rules (`validate`, from docs/research/dsa-tdb-rules.md)
before anything leaves. The vocabulary is pinned in `moderation.policy.dsa_vocab`."""

from __future__ import annotations

import hashlib
import re
from datetime import date, datetime
from typing import Any

from moderation.db.tables import as_utc
from moderation.policy import Policy
from moderation.policy.dsa_vocab import CATEGORIES, EEA, KEYWORDS, SCHEMA_VERSION, VISIBILITY, territories

PUID = re.compile(r"^[a-zA-Z0-9_-]+\Z")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}\Z")
RESTRICTIVE = ("block", "restrict")
SOURCE = {
    "SOURCE_VOLUNTARY": "SOURCE_VOLUNTARY",
    "SOURCE_ARTICLE_16": "SOURCE_ARTICLE_16",
    "SOURCE_TRUSTED_NOTIFIER": "SOURCE_TRUSTED_FLAGGER",
}
VISIBILITY_VALUES = frozenset(VISIBILITY.values()) | {"DECISION_VISIBILITY_OTHER"}
CONTENT_TYPES = frozenset(
    f"CONTENT_TYPE_{t}" for t in ("APP", "AUDIO", "IMAGE", "PRODUCT", "SYNTHETIC_MEDIA", "TEXT", "VIDEO", "OTHER")
)
AUTOMATED_DECISIONS = frozenset(
    {"AUTOMATED_DECISION_FULLY", "AUTOMATED_DECISION_PARTIALLY", "AUTOMATED_DECISION_NOT_AUTOMATED"}
)
SOURCE_TYPES = frozenset(
    {"SOURCE_ARTICLE_16", "SOURCE_TRUSTED_FLAGGER", "SOURCE_TYPE_OTHER_NOTIFICATION", "SOURCE_VOLUNTARY"}
)
STATEMENT_CATEGORIES = frozenset(f"STATEMENT_CATEGORY_{c}" for c in CATEGORIES)
KEYWORD_VALUES = frozenset(f"KEYWORD_{k}" for k in KEYWORDS)
DECISIONS = ("decision_visibility", "decision_monetary", "decision_provision", "decision_account")


def puid_for(external_id: str | None, submission_id: str) -> str:
    """The statement's platform id: the platform's own id when the database accepts it as is
    (`^[a-zA-Z0-9-_]+$`, at most 500), else a deterministic `sha256-…` of it, else our id."""
    if external_id and PUID.match(external_id) and len(external_id) <= 500:
        return external_id
    if external_id:
        return "sha256-" + hashlib.sha256(external_id.encode()).hexdigest()
    return submission_id


def _day(value: datetime) -> str:
    return as_utc(value).date().isoformat()


def automation(decision: Any, flagged_by_machine: bool) -> tuple[str, str]:
    """(automated_detection, automated_decision) of a decision."""
    if decision.automated:
        return "Yes", "AUTOMATED_DECISION_FULLY"
    if flagged_by_machine and not any(r.get("code") == "appeal" for r in decision.reasons or []):
        return "Yes", "AUTOMATED_DECISION_PARTIALLY"
    return ("Yes" if flagged_by_machine else "No"), "AUTOMATED_DECISION_NOT_AUTOMATED"


def statement(sub: Any, decision: Any, policy: Policy | None, flagged_by_machine: bool) -> dict[str, Any] | None:
    """The statement of reasons of a restrictive `decision` of `sub` (None for any other action)."""
    if decision.action not in RESTRICTIVE:
        return None
    scores = {k: float(v) for k, v in (decision.categories or {}).items() if isinstance(v, int | float)}
    rules = policy.categories if policy else {}
    ranked = sorted((c for c in scores if c in rules), key=lambda c: -scores[c])
    top = ranked[0] if ranked else None
    rule = rules.get(top) if top else None
    visibility = (
        (policy.visibility.block if decision.action == "block" else policy.visibility.restrict)
        if policy
        else ("REMOVED" if decision.action == "block" else "AGE_RESTRICTED")
    )
    detection, decided = automation(decision, flagged_by_machine)
    who = "automatically" if decision.automated else "by a moderator"
    if rule is not None and top is not None:
        threshold = rule.block_at if decision.action == "block" else (rule.restrict_at or rule.review_at)
        facts = (
            f"The image was {'removed' if decision.action == 'block' else 'restricted'} {who} under policy "
            f"'{decision.policy_id}' (version {decision.policy_version}), clause {rule.dsa.clause}: "
            f"category {top} scored {scores[top]:.2f} against a threshold of {threshold:.2f}."
        )
        category = rule.dsa.category
        keywords = [f"KEYWORD_{k}" for k in rule.dsa.keywords]
        ground = rule.dsa.ground
        clause, legal = rule.dsa.clause, rule.dsa.legal_ground
    else:  # a bank match or a category the policy no longer names
        facts = f"The image was {decision.action}ed {who} under policy '{decision.policy_id}'."
        category, keywords, ground, clause, legal = (
            "OTHER_VIOLATION_TC",
            [],
            "incompatible_content",
            "Terms of service",
            None,
        )
    explanation = facts[:2000]
    out: dict[str, Any] = {
        "decision_visibility": [VISIBILITY[visibility]],
        "decision_ground": "DECISION_GROUND_ILLEGAL_CONTENT"
        if ground == "illegal_content"
        else ("DECISION_GROUND_INCOMPATIBLE_CONTENT"),
        "content_type": ["CONTENT_TYPE_IMAGE"],
        "category": f"STATEMENT_CATEGORY_{category}",
        "content_date": _day(sub.created_at),
        "application_date": _day(decision.decided_at),
        "decision_facts": facts[:5000],
        "source_type": SOURCE.get(policy.source_type if policy else "SOURCE_VOLUNTARY", "SOURCE_VOLUNTARY"),
        "automated_detection": detection,
        "automated_decision": decided,
        "territorial_scope": territories(policy.territorial_scope if policy else ["EU"]),
        "puid": puid_for(sub.external_id, sub.id),
    }
    if keywords:
        out["category_specification"] = keywords
    if ground == "illegal_content":
        out["illegal_content_legal_ground"] = (legal or clause)[:500]
        out["illegal_content_explanation"] = explanation
    else:
        out["incompatible_content_ground"] = clause[:500]
        out["incompatible_content_explanation"] = explanation
    return out


def with_schema(s: dict[str, Any]) -> dict[str, Any]:
    """A statement as exported: the pinned schema version beside it (the database drops keys it
    does not know; `submit-dsa` sends the statement without it)."""
    return {**s, "schema_version": SCHEMA_VERSION}


def _date_in(value: Any, lo: date, hi: date) -> bool:
    if not isinstance(value, str) or not _DATE.match(value):
        return False
    try:
        d = date.fromisoformat(value)
    except ValueError:
        return False
    return lo <= d <= hi


def validate(s: dict[str, Any]) -> list[str]:
    """What the Transparency Database would refuse in statement `s` (empty: it passes). The rules
    of its API v1 (docs/research/dsa-tdb-rules.md), plus ours: content before decision, and no
    end date before the decision."""
    errors: list[str] = []

    def text(name: str, limit: int, required: bool = False) -> None:
        v = s.get(name)
        if v is None or (isinstance(v, str) and not v.strip()):
            if required:
                errors.append(f"{name}: required")
            return
        if not isinstance(v, str):
            errors.append(f"{name}: must be a string")
        elif len(v.strip()) > limit:
            errors.append(f"{name}: longer than {limit} characters")

    decisions = [
        s.get(k) for k in ("decision_visibility", "decision_monetary", "decision_provision", "decision_account")
    ]
    if not any(decisions):
        errors.append("one of decision_visibility, decision_monetary, decision_provision, decision_account is required")
    vis = s.get("decision_visibility")
    if vis is not None:
        if not isinstance(vis, list) or any(v not in VISIBILITY_VALUES for v in vis):
            errors.append("decision_visibility: an array of DECISION_VISIBILITY_* values")
        elif "DECISION_VISIBILITY_OTHER" in vis:
            text("decision_visibility_other", 500, required=True)
    ground = s.get("decision_ground")
    if ground == "DECISION_GROUND_ILLEGAL_CONTENT":
        text("illegal_content_legal_ground", 500, required=True)
        text("illegal_content_explanation", 2000, required=True)
    elif ground == "DECISION_GROUND_INCOMPATIBLE_CONTENT":
        text("incompatible_content_ground", 500, required=True)
        text("incompatible_content_explanation", 2000, required=True)
        if "incompatible_content_illegal" in s and s["incompatible_content_illegal"] not in ("Yes", "No"):
            errors.append("incompatible_content_illegal: Yes or No")
    else:
        errors.append("decision_ground: DECISION_GROUND_ILLEGAL_CONTENT or DECISION_GROUND_INCOMPATIBLE_CONTENT")
    ct = s.get("content_type")
    if not isinstance(ct, list) or not ct or any(c not in CONTENT_TYPES for c in ct):
        errors.append("content_type: a non-empty array of CONTENT_TYPE_* values")
    elif "CONTENT_TYPE_OTHER" in ct:
        text("content_type_other", 500, required=True)
    if s.get("category") not in STATEMENT_CATEGORIES:
        errors.append(f"category: not a current STATEMENT_CATEGORY_*: {s.get('category')!r}")
    add = s.get("category_addition")
    if add is not None and (
        not isinstance(add, list) or any(a not in {f"STATEMENT_CATEGORY_{c}" for c in CATEGORIES} for a in add)
    ):
        errors.append("category_addition: an array of current STATEMENT_CATEGORY_* values")
    spec = s.get("category_specification")
    if spec is not None and (
        not isinstance(spec, list) or any(k not in {f"KEYWORD_{w}" for w in KEYWORDS} for k in spec)
    ):
        errors.append("category_specification: an array of current KEYWORD_* values")
    text("category_specification_other", 500)
    if not _date_in(s.get("content_date"), date(2000, 1, 1), date(2038, 1, 1)):
        errors.append("content_date: YYYY-MM-DD between 2000-01-01 and 2038-01-01")
    if not _date_in(s.get("application_date"), date(2020, 1, 1), date(2038, 1, 1)):
        errors.append("application_date: YYYY-MM-DD between 2020-01-01 and 2038-01-01")
    elif (
        _date_in(s.get("content_date"), date(2000, 1, 1), date(2038, 1, 1))
        and s["content_date"] > s["application_date"]
    ):
        errors.append("content_date: after application_date")
    text("decision_facts", 5000, required=True)
    if s.get("source_type") not in SOURCE_TYPES:
        errors.append("source_type: not a SOURCE_* value")
    text("source_identity", 500)
    if s.get("automated_detection") not in ("Yes", "No"):
        errors.append("automated_detection: Yes or No")
    if s.get("automated_decision") not in AUTOMATED_DECISIONS:
        errors.append("automated_decision: not an AUTOMATED_DECISION_* value")
    scope = s.get("territorial_scope")
    if scope is not None and (not isinstance(scope, list) or any(c not in EEA for c in scope)):
        errors.append("territorial_scope: an array of EEA country codes (Greece is GR)")
    puid = s.get("puid")
    if not isinstance(puid, str) or not PUID.match(puid.strip() or "-!") or len(puid.strip()) > 500:
        errors.append("puid: 1-500 of a-z, A-Z, 0-9, '-', '_'")
    for name in (
        "end_date_visibility_restriction",
        "end_date_monetary_restriction",
        "end_date_service_restriction",
        "end_date_account_restriction",
    ):
        if s.get(name) is not None and not _date_in(s[name], date(1, 1, 1), date(2038, 1, 1)):
            errors.append(f"{name}: YYYY-MM-DD no later than 2038-01-01")
    return errors
