"""A test double of the EU DSA Transparency Database (TDB) API v1: its statement validation rules
(`validate_statement`) and an HTTP server (`FakeTDB`) that answers like the real one.

Written from docs/research/dsa-tdb-rules.md only (rules read from the TDB's Laravel source at
commit 69e80a0b, categories and keywords as of the July 2025 schema), independently of the code
that it tests. The rules are modelled as Laravel applies them: the global `TrimStrings` and
`ConvertEmptyStringsToNull` middleware first (recursively: strings trimmed, empty strings become
null), then each attribute's rules in order, with Laravel's semantics for missing and `null`
values (only `required*` rules run on a missing attribute; `nullable` skips the other rules on
`null`; a field that is neither is checked even when `null`), `exclude_*` rules dropping a field
before its other rules run, `in` checking every element of an array, and unknown keys dropped.
The quirks that the research file reports are kept: the literal string "null" passes the fields
whose rule is `in:null,...`; `category_addition: null` and `incompatible_content_illegal: null` are
refused; there is no cross-field date rule and no end-date lower bound; the batch endpoint's rule
differences (`content_id_ean` dropped, `source_identity` checked then nulled for
`SOURCE_VOLUNTARY`, `category_specification_other` nulled without `KEYWORD_OTHER`, no dedupe
except `territorial_scope`; `validate_statement(s, batch=True)` applies them); in-batch duplicate
PUIDs of a rejected batch marked as used.

What could not be implemented exactly, and why:

- Laravel's `url` rule (`Str::isUrl`) is a PCRE pattern using Unicode properties that Python's
  `re` lacks and a list of IANA schemes that the research file does not give: it is approximated
  by a similar regex that takes any syntactically valid scheme followed by `://` (\\pL\\pN as
  Unicode letters and digits, \\pS as ASCII symbols only).
- `after_or_equal` / `before_or_equal` on a value that already fails the strict `Y-m-d` format:
  PHP compares a leniently parsed date (`createFromFormat` with overflow, then `date_create`). The
  first is emulated; `date_create` is approximated by ISO 8601 parsing. Such a value is refused
  either way; only the number of messages for the field may differ.
- Messages: the custom ones quoted in the research file are used; the others are Laravel 12's
  defaults, with the raw key where Laravel shows a value (`:value` of `required_if`), since the
  application's translation files are not described. The wording of "required when contains
  OTHER" (`decision_visibility_other`, `content_type_other`) is assumed to be the plain
  "required" message. A nested field's name is displayed as Laravel's `Str::snake` makes it
  ("content id. e a n-13"), since no custom attribute names are described.
- 201 bodies: the research file gives the added fields (`uuid`, `id` on the single endpoint only,
  `puid`, `created_at`, `platform_name`, `permalink`, `self`) and says missing optional fields
  are `null` or `[]`, but not the full column list: every rule field is returned (arrays as
  `[]` when absent or null), and `content_id` is folded into `content_id_ean` on both endpoints.
  The order of `existing_puids` in a duplicate answer is not described: in-batch duplicates come
  first, then PUIDs already used, each once, in input order.
- Lock conflicts (case (c) of the duplicate answers, a 30 s per-PUID lock) are not modelled: the
  server handles statement requests one at a time, so a concurrent resend of a PUID is answered
  as an ordinary duplicate. The 2-day cache lifetime of "used" PUIDs is not modelled: they stay
  used for the server's life (`cached_puids` can be edited by a test).
- Rate limits and failures come from the knobs only (`rate_limit_first_n`, then
  `fail_5xx_first_n`, for POSTs to the two statement endpoints, before authentication); the real
  limits (200/s and 12,000/min per user, 100/min per IP) and the body-size limit (unknown) are
  not modelled. 403 (no permission, no platform) is not modelled.
- Transport: a body whose Content-Type is not JSON gets 415 and malformed JSON (or an empty body)
  gets 400; the real server would read empty input and answer 422 with "required" errors. A
  validation failure without `Accept: application/json` gets Laravel's 302 redirect (to the base
  URL), as the research file describes; 401 is always JSON (the real server's redirect-to-login
  path for non-JSON clients is not described). `GET /api/ping` needs no token.
- Arrays in free-text fields (`decision_facts`...) pass Laravel's rules, which have no `string`
  rule there; the real database insert would then fail: such a request gets a 500 and nothing is
  stored. A batch element that is not a JSON object is validated as an empty statement.
- A PUID's trailing newline is removed by `TrimStrings` before the `/D` regex runs, so
  `"abc\\n"` is accepted (and stored) as `"abc"`, as the real server does.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import threading
import uuid as uuidlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

__all__ = [
    "ACCOUNT_TYPES",
    "AUTOMATED_DECISIONS",
    "CATEGORIES",
    "CONTENT_TYPES",
    "COUNTRIES",
    "DECISION_ACCOUNT",
    "DECISION_GROUNDS",
    "DECISION_MONETARY",
    "DECISION_PROVISION",
    "DECISION_VISIBILITY",
    "KEYWORDS",
    "LANGUAGES",
    "REMOVED_CATEGORIES",
    "REMOVED_KEYWORDS",
    "SOURCE_TYPES",
    "FakeTDB",
    "LoggedRequest",
    "clean_input",
    "summarize",
    "validate_statement",
    "validated_statement",
]

# ---------------------------------------------------------------------------------------------
# Vocabularies (research file §1 and §3)


def _codes(text: str) -> tuple[str, ...]:
    return tuple(text.split())


DECISION_VISIBILITY = (
    "DECISION_VISIBILITY_CONTENT_REMOVED",
    "DECISION_VISIBILITY_CONTENT_DISABLED",
    "DECISION_VISIBILITY_CONTENT_DEMOTED",
    "DECISION_VISIBILITY_CONTENT_AGE_RESTRICTED",
    "DECISION_VISIBILITY_CONTENT_INTERACTION_RESTRICTED",
    "DECISION_VISIBILITY_CONTENT_LABELLED",
    "DECISION_VISIBILITY_OTHER",
)
DECISION_MONETARY = ("DECISION_MONETARY_SUSPENSION", "DECISION_MONETARY_TERMINATION", "DECISION_MONETARY_OTHER")
DECISION_PROVISION = (
    "DECISION_PROVISION_PARTIAL_SUSPENSION",
    "DECISION_PROVISION_TOTAL_SUSPENSION",
    "DECISION_PROVISION_PARTIAL_TERMINATION",
    "DECISION_PROVISION_TOTAL_TERMINATION",
)
DECISION_ACCOUNT = ("DECISION_ACCOUNT_SUSPENDED", "DECISION_ACCOUNT_TERMINATED")
ACCOUNT_TYPES = ("ACCOUNT_TYPE_BUSINESS", "ACCOUNT_TYPE_PRIVATE")
GROUND_ILLEGAL = "DECISION_GROUND_ILLEGAL_CONTENT"
GROUND_INCOMPATIBLE = "DECISION_GROUND_INCOMPATIBLE_CONTENT"
DECISION_GROUNDS = (GROUND_ILLEGAL, GROUND_INCOMPATIBLE)
CONTENT_TYPES = (
    "CONTENT_TYPE_APP",
    "CONTENT_TYPE_AUDIO",
    "CONTENT_TYPE_IMAGE",
    "CONTENT_TYPE_PRODUCT",
    "CONTENT_TYPE_SYNTHETIC_MEDIA",
    "CONTENT_TYPE_TEXT",
    "CONTENT_TYPE_VIDEO",
    "CONTENT_TYPE_OTHER",
)
SOURCE_VOLUNTARY = "SOURCE_VOLUNTARY"
SOURCE_TYPES = ("SOURCE_ARTICLE_16", "SOURCE_TRUSTED_FLAGGER", "SOURCE_TYPE_OTHER_NOTIFICATION", SOURCE_VOLUNTARY)
YES_NO = ("Yes", "No")
AUTOMATED_DECISIONS = ("AUTOMATED_DECISION_FULLY", "AUTOMATED_DECISION_PARTIALLY", "AUTOMATED_DECISION_NOT_AUTOMATED")
COUNTRIES = _codes("AT BE BG CY CZ DE DK EE ES FI FR GR HR HU IE IS IT LI LT LU LV MT NL NO PL PT RO SE SI SK")
LANGUAGES = _codes(
    """AB AA AF AK SQ AM AR AN HY AS AV AE AY AZ BM BA EU BE BN BH BI BS BR BG MY CA KM CH CE NY ZH CU
    CV KW CO CR HR CS DA DV NL DZ EN EO ET EE FO FJ FI FR FF GD GL LG KA DE KI EL KL GN GU HT HA HE
    HZ HI HO HU IS IO IG ID IA IE IU IK GA IT JA JV KN KR KS KK RW KV KG KO KJ KU KY LO LA LV LB LI
    LN LT LU MK MG MS ML MT GV MI MR MH RO MN NA NV ND NG NE SE NO NB NN II OC OJ OR OM OS PI PA PS
    FA PL PT QU RM RN RU SM SG SA SC SR SN SD SI SK SL SO ST NR ES SU SW SS SV TL TY TG TA TT TE TH
    BO TI TO TS TN TR TK TW UG UK UR UZ VE VI VO WA CY FY WO XH YI YO ZA ZU"""
)
CATEGORIES = (
    "STATEMENT_CATEGORY_ANIMAL_WELFARE",
    "STATEMENT_CATEGORY_CONSUMER_INFORMATION",
    "STATEMENT_CATEGORY_CYBER_VIOLENCE",
    "STATEMENT_CATEGORY_CYBER_VIOLENCE_AGAINST_WOMEN",
    "STATEMENT_CATEGORY_DATA_PROTECTION_AND_PRIVACY_VIOLATIONS",
    "STATEMENT_CATEGORY_ILLEGAL_OR_HARMFUL_SPEECH",
    "STATEMENT_CATEGORY_INTELLECTUAL_PROPERTY_INFRINGEMENTS",
    "STATEMENT_CATEGORY_NEGATIVE_EFFECTS_ON_CIVIC_DISCOURSE_OR_ELECTIONS",
    "STATEMENT_CATEGORY_NOT_SPECIFIED_NOTICE",
    "STATEMENT_CATEGORY_OTHER_VIOLATION_TC",
    "STATEMENT_CATEGORY_PROTECTION_OF_MINORS",
    "STATEMENT_CATEGORY_RISK_FOR_PUBLIC_SECURITY",
    "STATEMENT_CATEGORY_SCAMS_AND_FRAUD",
    "STATEMENT_CATEGORY_SELF_HARM",
    "STATEMENT_CATEGORY_UNSAFE_AND_PROHIBITED_PRODUCTS",
    "STATEMENT_CATEGORY_VIOLENCE",
)
REMOVED_CATEGORIES = (
    "STATEMENT_CATEGORY_PORNOGRAPHY_OR_SEXUALIZED_CONTENT",
    "STATEMENT_CATEGORY_SCOPE_OF_PLATFORM_SERVICE",
    "STATEMENT_CATEGORY_NON_CONSENSUAL_BEHAVIOUR",
    "STATEMENT_CATEGORY_UNSAFE_AND_ILLEGAL_PRODUCTS",
)
KEYWORD_OTHER = "KEYWORD_OTHER"
KEYWORDS = (
    "KEYWORD_ADULT_SEXUAL_MATERIAL",
    "KEYWORD_AGE_SPECIFIC_RESTRICTIONS",
    "KEYWORD_AGE_SPECIFIC_RESTRICTIONS_MINORS",
    "KEYWORD_ANIMAL_HARM",
    "KEYWORD_BIOMETRIC_DATA_BREACH",
    "KEYWORD_BULLYING_AGAINST_GIRLS",
    "KEYWORD_CHILD_SEXUAL_ABUSE_MATERIAL",
    "KEYWORD_CHILD_SEXUAL_ABUSE_MATERIAL_DEEPFAKE",
    "KEYWORD_CONTENT_PROMOTING_EATING_DISORDERS",
    "KEYWORD_COORDINATED_HARM",
    "KEYWORD_COPYRIGHT_INFRINGEMENT",
    "KEYWORD_CYBER_BULLYING_INTIMIDATION",
    "KEYWORD_CYBER_HARASSMENT",
    "KEYWORD_CYBER_HARASSMENT_AGAINST_WOMEN",
    "KEYWORD_CYBER_INCITEMENT",
    "KEYWORD_CYBER_STALKING",
    "KEYWORD_CYBER_STALKING_AGAINST_WOMEN",
    "KEYWORD_DATA_FALSIFICATION",
    "KEYWORD_DEFAMATION",
    "KEYWORD_DESIGN_INFRINGEMENT",
    "KEYWORD_DISCRIMINATION",
    "KEYWORD_FEMALE_GENDERED_DISINFORMATION",
    "KEYWORD_GEOGRAPHIC_INDICATIONS_INFRINGEMENT",
    "KEYWORD_GEOGRAPHICAL_REQUIREMENTS",
    "KEYWORD_GOODS_SERVICES_NOT_PERMITTED",
    "KEYWORD_GROOMING_SEXUAL_ENTICEMENT_MINORS",
    "KEYWORD_HATE_SPEECH",
    "KEYWORD_HIDDEN_ADVERTISEMENT",
    "KEYWORD_HUMAN_EXPLOITATION",
    "KEYWORD_HUMAN_TRAFFICKING",
    "KEYWORD_ILLEGAL_ORGANIZATIONS",
    "KEYWORD_IMPERSONATION_ACCOUNT_HIJACKING",
    "KEYWORD_INAUTHENTIC_ACCOUNTS",
    "KEYWORD_INAUTHENTIC_LISTINGS",
    "KEYWORD_INAUTHENTIC_USER_REVIEWS",
    "KEYWORD_INCITEMENT_AGAINST_WOMEN",
    "KEYWORD_INCITEMENT_VIOLENCE_HATRED",
    "KEYWORD_INSUFFICIENT_INFORMATION_ON_TRADERS",
    "KEYWORD_LANGUAGE_REQUIREMENTS",
    "KEYWORD_MISINFORMATION_DISINFORMATION",
    "KEYWORD_MISLEADING_INFO_CONSUMER_RIGHTS",
    "KEYWORD_MISLEADING_INFO_GOODS_SERVICES",
    "KEYWORD_MISSING_PROCESSING_GROUND",
    "KEYWORD_NON_CONSENSUAL_IMAGE_SHARING",
    "KEYWORD_NON_CONSENSUAL_IMAGE_SHARING_AGAINST_WOMEN",
    "KEYWORD_NON_CONSENSUAL_MATERIAL_DEEPFAKE",
    "KEYWORD_NON_CONSENSUAL_MATERIAL_DEEPFAKE_AGAINST_WOMEN",
    "KEYWORD_NONCOMPLIANCE_PRICING",
    "KEYWORD_NUDITY",
    "KEYWORD_PATENT_INFRINGEMENT",
    "KEYWORD_PHISHING",
    "KEYWORD_PROHIBITED_PRODUCTS",
    "KEYWORD_PYRAMID_SCHEMES",
    "KEYWORD_RIGHT_TO_BE_FORGOTTEN",
    "KEYWORD_RISK_ENVIRONMENTAL_DAMAGE",
    "KEYWORD_RISK_PUBLIC_HEALTH",
    "KEYWORD_SELF_MUTILATION",
    "KEYWORD_STALKING",
    "KEYWORD_SUICIDE",
    "KEYWORD_TERRORIST_CONTENT",
    "KEYWORD_TRADE_SECRET_INFRINGEMENT",
    "KEYWORD_TRADEMARK_INFRINGEMENT",
    "KEYWORD_TRAFFICKING_WOMEN_GIRLS",
    "KEYWORD_UNLAWFUL_SALE_ANIMALS",
    "KEYWORD_UNSAFE_CHALLENGES",
    "KEYWORD_UNSAFE_PRODUCTS",
    "KEYWORD_VIOLATION_EU_LAW",
    "KEYWORD_VIOLATION_NATIONAL_LAW",
    KEYWORD_OTHER,
)
REMOVED_KEYWORDS = (
    "KEYWORD_DANGEROUS_TOYS",  # still a constant in Statement.php, but not in KEYWORDS
    "KEYWORD_ONLINE_BULLYING_INTIMIDATION",
    "KEYWORD_INSUFFICIENT_INFORMATION_TRADERS",
    "KEYWORD_DISINFORMATION",
    "KEYWORD_NON_CONSENSUAL_ITEMS_DEEPFAKE",
    "KEYWORD_MISINFORMATION",
    "KEYWORD_FOREIGN_INFORMATION_MANIPULATION",
    "KEYWORD_REGULATED_GOODS_SERVICES",
    "KEYWORD_GENDER_BASED_VIOLENCE",
    "KEYWORD_IMAGE_BASED_SEXUAL_ABUSE",
)

assert len(CATEGORIES) == 16 and len(KEYWORDS) == 69 and len(COUNTRIES) == 30 and len(LANGUAGES) == 184

# ---------------------------------------------------------------------------------------------
# A small model of Laravel's validator


@dataclass(frozen=True)
class _Rule:
    name: str
    args: tuple[Any, ...] = ()


_IMPLICIT = frozenset({"required", "required_if", "required_if_contains", "required_without_all"})
_EXCLUDING = frozenset({"exclude_if", "exclude_unless", "exclude_unless_contains"})
_TRIM = re.compile(r"^[\s\ufeff\u200b\u200e]+|[\s\ufeff\u200b\u200e]+$")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_LOOSE_DATE = re.compile(r"([0-9]{1,4})-([0-9]{1,2})-([0-9]{1,2})")
_PUID = re.compile(r"[A-Za-z0-9_-]+")
_EAN13 = re.compile(r"[0-9]{13}")
_URL = re.compile(
    r"[a-z][a-z0-9+.\-]*://"  # scheme (Laravel: IANA schemes only)
    r"(?:(?:(?:[\w.\-]|%[0-9a-f]{2})+:)?(?:[\w.\-]|%[0-9a-f]{2})+@)?"  # basic auth
    r"(?:[\w\-.$+<=>^`|~]+[^\W_]\.?|\[[0-9a-f:.]+\])"  # domain or IPv4 (2+ characters), or [IPv6]
    r"(?::[0-9]+)?"  # port
    r"(?:/(?:[\w\-.~!$&'()*+,;=:@]|%[0-9a-f]{2})*)*"  # path
    r"(?:\?(?:[\w\-.~!$&'\[\]()*+,;=:@/?]|%[0-9a-f]{2})*)?"  # query
    r"(?:\#(?:[\w\-.~!$&'()*+,;=:@/?]|%[0-9a-f]{2})*)?",  # fragment
    re.IGNORECASE,
)

_MESSAGES = {
    "required": "The {a} field is required.",
    "required_if_contains": "The {a} field is required.",
    "required_if": "The {a} field is required when {other} is {value}.",
    "required_without_all": "The {a} field is required when none of {values} are present.",
    "array": "The {a} field must be an array.",
    "string": "The {a} field must be a string.",
    "in": "The selected {a} is invalid.",
    "max.string": "The {a} field must not be greater than {max} characters.",
    "max.array": "The {a} field must not have more than {max} items.",
    "between.string": "The {a} field must be between {min} and {max} characters.",
    "between.array": "The {a} field must have between {min} and {max} items.",
    "url": "The {a} field must be a valid URL.",
    "regex": "The {a} field format is invalid.",
    "date_format": "The {a} field must match the format {format}.",
    "after_or_equal": "The {a} field must be a date after or equal to {date}.",
    "before_or_equal": "The {a} field must be a date before or equal to {date}.",
}

_END_DATES = (
    "end_date_visibility_restriction",
    "end_date_monetary_restriction",
    "end_date_service_restriction",
    "end_date_account_restriction",
)
_YMD = "The {a} does not match the format YYYY-MM-DD."
# The application's custom messages quoted by the research file (§2.1).
_CUSTOM: dict[tuple[str, str], str] = {
    ("content_date", "date_format"): _YMD,
    ("application_date", "date_format"): _YMD,
    **{(f, "date_format"): _YMD for f in _END_DATES},
    (
        "illegal_content_legal_ground",
        "required_if",
    ): "The {a} field is required when decision ground is illegal content.",
    (
        "illegal_content_explanation",
        "required_if",
    ): "The {a} field is required when decision ground is illegal content.",
    ("incompatible_content_ground", "required_if"): (
        "The {a} field is required when decision ground is incompatible content."
    ),
    ("incompatible_content_explanation", "required_if"): (
        "The {a} field is required when decision ground is incompatible content."
    ),
    ("puid", "regex"): "The puid format is invalid.",
}

_Rules = list[tuple[str, list[_Rule]]]


def _r(name: str, *args: Any) -> _Rule:
    return _Rule(name, args)


def _in(values: tuple[str, ...], null: bool = False) -> _Rule:
    """Laravel's `in:`; `in(X, true)` in the TDB's code puts the literal "null" first."""
    return _Rule("in", (frozenset((("null",) if null else ()) + values),))


_DECISIONS = ("decision_visibility", "decision_monetary", "decision_provision", "decision_account")
_REQUIRED, _NULLABLE, _ARRAY, _STRING = _r("required"), _r("nullable"), _r("array"), _r("string")


def _without_all(field: str) -> _Rule:
    """`required_without_all:` the other three restriction decisions (§1.1)."""
    return _Rule("required_without_all", (tuple(f for f in _DECISIONS if f != field),))


def _only_if(field: str, value: str) -> list[_Rule]:
    """`required_if:field,value` + `exclude_unless:field,value`."""
    return [_r("required_if", field, value), _r("exclude_unless", field, value)]


def _only_if_contains(field: str, value: str) -> list[_Rule]:
    """Required when the array `field` contains `value`, excluded otherwise."""
    return [_r("required_if_contains", field, value), _r("exclude_unless_contains", field, value)]


def _date(minimum: str | None) -> list[_Rule]:
    """`date_format:Y-m-d` up to 2038-01-01: required from `minimum`, or optional (`nullable`)."""
    if minimum is None:
        return [_r("date_format"), _NULLABLE, _r("before_or_equal", "2038-01-01")]
    return [_REQUIRED, _r("date_format"), _r("after_or_equal", minimum), _r("before_or_equal", "2038-01-01")]


_M500, _M2000 = _r("max", 500), _r("max", 2000)


def _statement_rules(batch: bool) -> _Rules:
    """The rules of `StatementStoreRequest` (single) or `GroupedSubmissionsService::multi_rules()`
    (batch), in the research file's order (§1)."""
    ean = [_STRING, _r("regex", _EAN13)]
    vis_other, mon_other, ct_other = "DECISION_VISIBILITY_OTHER", "DECISION_MONETARY_OTHER", "CONTENT_TYPE_OTHER"
    rules: _Rules = [
        (
            "decision_visibility",
            [_ARRAY, _in(DECISION_VISIBILITY, True), _without_all("decision_visibility"), _NULLABLE],
        ),
        ("decision_visibility_other", [*_only_if_contains("decision_visibility", vis_other), _M500]),
        ("decision_monetary", [_in(DECISION_MONETARY, True), _without_all("decision_monetary"), _NULLABLE]),
        ("decision_monetary_other", [*_only_if("decision_monetary", mon_other), _M500]),
        ("decision_provision", [_in(DECISION_PROVISION, True), _without_all("decision_provision"), _NULLABLE]),
        ("decision_account", [_in(DECISION_ACCOUNT, True), _without_all("decision_account"), _NULLABLE]),
        *[(f, _date(None)) for f in _END_DATES],
        ("account_type", [_in(ACCOUNT_TYPES, True), _NULLABLE]),
        ("decision_ground", [_REQUIRED, _in(DECISION_GROUNDS)]),
        ("decision_ground_reference_url", [_r("url"), _NULLABLE, _M500]),
        ("illegal_content_legal_ground", [*_only_if("decision_ground", GROUND_ILLEGAL), _M500]),
        ("illegal_content_explanation", [*_only_if("decision_ground", GROUND_ILLEGAL), _M2000]),
        ("incompatible_content_ground", [*_only_if("decision_ground", GROUND_INCOMPATIBLE), _M500]),
        ("incompatible_content_explanation", [*_only_if("decision_ground", GROUND_INCOMPATIBLE), _M2000]),
        ("incompatible_content_illegal", [_in(YES_NO), _r("exclude_unless", "decision_ground", GROUND_INCOMPATIBLE)]),
        ("content_type", [_REQUIRED, _ARRAY, _in(CONTENT_TYPES)]),
        ("content_type_other", [*_only_if_contains("content_type", ct_other), _M500]),
        ("content_date", _date("2000-01-01")),
        ("application_date", _date("2020-01-01")),
        ("content_language", [_in(LANGUAGES), _NULLABLE]),
        ("content_id", [_ARRAY, _NULLABLE]),
        ("content_id.EAN-13", ean),
        *([] if batch else [("content_id_ean", [_NULLABLE, *ean])]),
        ("category", [_REQUIRED, _in(CATEGORIES)]),
        ("category_addition", [_ARRAY, _in(CATEGORIES)]),
        ("category_specification", [_ARRAY, _in(KEYWORDS, True), _NULLABLE]),
        ("category_specification_other", [_M500]),
        ("decision_facts", [_REQUIRED, _r("max", 5000)]),
        ("source_type", [_REQUIRED, _in(SOURCE_TYPES)]),
        (
            "source_identity",
            [_M500, _NULLABLE] if batch else [_r("exclude_if", "source_type", SOURCE_VOLUNTARY), _M500],
        ),
        ("automated_detection", [_REQUIRED, _in(YES_NO)]),
        ("automated_decision", [_REQUIRED, _in(AUTOMATED_DECISIONS)]),
        ("territorial_scope", [_ARRAY, _NULLABLE, _in(COUNTRIES)]),
        ("puid", [_REQUIRED, _M500, _r("regex", _PUID)]),
    ]
    return rules


_SINGLE_RULES = _statement_rules(batch=False)
_BATCH_RULES = _statement_rules(batch=True)
_STATEMENTS_RULES: _Rules = [("statements", [_REQUIRED, _ARRAY, _r("between", 1, 100)])]
_ARRAY_FIELDS = (
    "decision_visibility",
    "content_type",
    "category_addition",
    "category_specification",
    "territorial_scope",
)
_TEXT_FIELDS = (
    "decision_visibility_other",
    "decision_monetary_other",
    "illegal_content_legal_ground",
    "illegal_content_explanation",
    "incompatible_content_ground",
    "incompatible_content_explanation",
    "content_type_other",
    "category_specification_other",
    "decision_facts",
    "source_identity",
)


def clean_input(value: Any) -> Any:
    """Laravel's `TrimStrings` then `ConvertEmptyStringsToNull`, applied to nested arrays too."""
    if isinstance(value, str):
        return _TRIM.sub("", value) or None
    if isinstance(value, list):
        return [clean_input(v) for v in value]
    if isinstance(value, dict):
        return {k: clean_input(v) for k, v in value.items()}
    return value


def _php_str(value: Any) -> str:
    """PHP's `(string)` cast of a JSON scalar."""
    if value is None or value is False:
        return ""
    if value is True:
        return "1"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value).upper()
    return str(value)


def _is_array(value: Any) -> bool:
    return isinstance(value, list | dict)


def _elements(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return list(value.values())
    return list(value) if isinstance(value, list) else []


def _is_numeric(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _filled(value: Any) -> bool:
    """Laravel's `validateRequired`."""
    if value is None:
        return False
    if isinstance(value, str):
        return value.strip() != ""
    if _is_array(value):
        return len(value) > 0
    return True


def _get(data: Any, attribute: str) -> tuple[bool, Any]:
    """Laravel's dot-notation lookup: (present, value)."""
    current = data
    for part in attribute.split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return False, None
    return True, current


def _set(target: dict[str, Any], attribute: str, value: Any) -> None:
    parts = attribute.split(".")
    for part in parts[:-1]:
        target = target.setdefault(part, {})
    target[parts[-1]] = value


def _display(attribute: str) -> str:
    """Laravel's displayable attribute: `str_replace('_', ' ', Str::snake($attribute))`."""
    words = re.sub(r"\s+", "", " ".join(w[:1].upper() + w[1:] for w in attribute.split(" ")))
    return re.sub(r"(.)(?=[A-Z])", r"\1_", words).lower().replace("_", " ")


def _loose_date(value: Any) -> dt.datetime | None:
    """PHP's `createFromFormat('!Y-m-d')` (with overflow), else `date_create` (approximated)."""
    if not (isinstance(value, str) or _is_numeric(value)):
        return None
    text = _php_str(value)
    match = _LOOSE_DATE.fullmatch(text)
    try:
        if match:
            year, month, day = (int(g) for g in match.groups())
            months = year * 12 + month - 1
            return dt.datetime(months // 12, months % 12 + 1, 1) + dt.timedelta(days=day - 1)
        parsed = dt.datetime.fromisoformat(text)
    except (ValueError, OverflowError):
        return None
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(dt.UTC).replace(tzinfo=None)
    return parsed


def _strict_date(value: Any) -> bool:
    """`date_format:Y-m-d`: parses and formats back to the same string."""
    if not isinstance(value, str) or not _DATE.fullmatch(value):
        return False
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _size(value: Any) -> int:
    return len(value) if _is_array(value) else len(_php_str(value))


def _passes(rule: _Rule, value: Any, data: dict[str, Any], array_rule: bool) -> bool:
    name, args = rule.name, rule.args
    if name in ("required", "required_if_contains", "required_if", "required_without_all"):
        if name == "required_if_contains":
            needed = args[1] in _elements(_get(data, args[0])[1])
        elif name == "required_if":
            other = _get(data, args[0])[1]
            needed = isinstance(other, str) and other == args[1]
        elif name == "required_without_all":
            needed = not any(_filled(_get(data, f)[1]) for f in args[0])
        else:
            needed = True
        return not needed or _filled(value)
    if name == "array":
        return _is_array(value)
    if name == "string":
        return isinstance(value, str)
    if name == "in":  # with `array`, every element; else a scalar only
        if _is_array(value) and array_rule:
            items = _elements(value)
            return not any(_is_array(v) for v in items) and all(_php_str(v) in args[0] for v in items)
        return not _is_array(value) and _php_str(value) in args[0]
    if name == "max":
        return bool(_size(value) <= args[0])
    if name == "between":
        return bool(args[0] <= _size(value) <= args[1])
    if name == "url":
        return isinstance(value, str) and _URL.fullmatch(value) is not None
    if name == "regex":
        return (isinstance(value, str) or _is_numeric(value)) and args[0].fullmatch(_php_str(value)) is not None
    if name == "date_format":
        return _strict_date(value)
    if name in ("after_or_equal", "before_or_equal"):
        first, bound = _loose_date(value), dt.datetime.fromisoformat(args[0])
        if first is None:
            return False
        return first >= bound if name == "after_or_equal" else first <= bound
    raise AssertionError(f"unknown rule {name}")


def _excluded(rule: _Rule, data: dict[str, Any]) -> bool:
    other = _get(data, rule.args[0])[1]
    if rule.name == "exclude_unless_contains":
        return rule.args[1] not in _elements(other)
    matches = isinstance(other, str) and other == rule.args[1]
    return matches if rule.name == "exclude_if" else not matches


def _message(attribute: str, rule: _Rule, rules: list[_Rule], data: dict[str, Any]) -> str:
    template = _CUSTOM.get((attribute, rule.name))
    if template is None:
        key = rule.name
        if key in ("max", "between"):
            key += ".array" if any(r.name == "array" for r in rules) else ".string"
        template = _MESSAGES[key]
    fields: dict[str, Any] = {"a": _display(attribute), "format": "Y-m-d"}
    if rule.name == "required_if":
        fields |= {"other": _display(rule.args[0]), "value": _php_str(_get(data, rule.args[0])[1])}
    elif rule.name == "required_without_all":
        fields["values"] = " / ".join(_display(f) for f in rule.args[0])
    elif rule.name == "max":
        fields["max"] = rule.args[0]
    elif rule.name == "between":
        fields |= {"min": rule.args[0], "max": rule.args[1]}
    elif rule.name in ("after_or_equal", "before_or_equal"):
        fields["date"] = rule.args[0]
    return template.format(**fields)


def _validate(data: dict[str, Any], rules: _Rules) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """Runs `rules` over `data` (already cleaned): (errors, validated data)."""
    errors: dict[str, list[str]] = {}
    kept: list[str] = []
    for attribute, attribute_rules in rules:
        if any(r.name in _EXCLUDING and _excluded(r, data) for r in attribute_rules):
            continue
        kept.append(attribute)
        present, value = _get(data, attribute)
        nullable = any(r.name == "nullable" for r in attribute_rules)
        array_rule = any(r.name == "array" for r in attribute_rules)
        for rule in attribute_rules:
            if rule.name == "nullable" or rule.name in _EXCLUDING:
                continue
            implicit = rule.name in _IMPLICIT
            if not implicit and (not present or (nullable and value is None)):
                continue
            if not _passes(rule, value, data, array_rule):
                errors.setdefault(attribute, []).append(_message(attribute, rule, attribute_rules, data))
                if implicit:  # Laravel stops at a failed "required" rule
                    break
    validated: dict[str, Any] = {}
    names = [a for a, _ in rules]
    for attribute in kept:
        present, value = _get(data, attribute)
        # `excludeUnvalidatedArrayKeys`: an array with rules on its keys keeps only those keys.
        if any(n.startswith(attribute + ".") for n in names) and value is not None:
            continue
        if present:
            _set(validated, attribute, value)
    return errors, validated


def validated_statement(s: dict[str, Any], batch: bool = False) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """`validate_statement`, plus the data the server keeps (cleaned, unknown and excluded keys
    dropped)."""
    data = clean_input(s)
    return _validate(data if isinstance(data, dict) else {}, _BATCH_RULES if batch else _SINGLE_RULES)


def validate_statement(s: dict[str, Any], batch: bool = False) -> dict[str, list[str]]:
    """The TDB's errors for one statement (field -> messages); empty when it passes. `s` is taken
    as sent (it is trimmed here, as the server's middleware does). `batch` applies the rules of an
    element of `POST /api/v1/statements` instead of those of `POST /api/v1/statement`."""
    return validated_statement(s, batch)[0]


def summarize(errors: dict[str, list[str]]) -> str:
    """Laravel's `ValidationException::summarize`: the first message and how many more."""
    messages = [m for ms in errors.values() for m in ms]
    if not messages:
        return "The given data was invalid."
    more = len(messages) - 1
    return messages[0] + (f" (and {more} more {'error' if more == 1 else 'errors'})" if more else "")


# ---------------------------------------------------------------------------------------------
# The HTTP server


class LoggedRequest(NamedTuple):
    endpoint: str  # the request path, e.g. "/api/v1/statements"
    statements: int  # 1 for POST /api/v1/statement, the batch's length, 0 otherwise
    status: int


@dataclass
class _Response:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


def _json(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> _Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return _Response(status, body, (("Content-Type", "application/json"), *headers))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _expects_json(headers: dict[str, str]) -> bool:
    """Laravel's `Request::expectsJson()`: the preferred Accept type is JSON, or an XHR that
    accepts anything."""
    types: list[tuple[float, int, str]] = []
    for i, part in enumerate(headers.get("accept", "").split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        if not media:
            continue
        q = 1.0
        for p in params:
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        types.append((-q, i, media.lower()))
    first = min(types)[2] if types else None
    if first is not None and ("/json" in first or "+json" in first):
        return True
    xhr = headers.get("x-requested-with", "") == "XMLHttpRequest"
    return xhr and first in (None, "*/*", "*")


def _storage_item(validated: dict[str, Any], batch: bool) -> dict[str, Any]:
    """The statement as the server stores and returns it, before the server-set fields."""
    out: dict[str, Any] = {}
    for attribute, _ in _SINGLE_RULES:
        if "." in attribute or attribute == "content_id":
            continue
        value = validated.get(attribute)
        if attribute in _ARRAY_FIELDS:
            value = _elements(value)
        out[attribute] = value
    content_id = validated.get("content_id")
    ean = content_id.get("EAN-13") if isinstance(content_id, dict) else None
    if batch or out["content_id_ean"] is None:
        out["content_id_ean"] = ean
    if batch:
        out["territorial_scope"] = sorted(set(out["territorial_scope"]))
        if out["source_type"] == SOURCE_VOLUNTARY:
            out["source_identity"] = None
        if KEYWORD_OTHER not in out["category_specification"]:
            out["category_specification_other"] = None
    else:
        for attribute in ("decision_visibility", "content_type", "category_specification", "territorial_scope"):
            out[attribute] = sorted(set(out[attribute]))
        out["category_addition"] = sorted(set(out["category_addition"]) - {out["category"]})
    return out


class FakeTDB:
    """The Transparency Database API on 127.0.0.1 (random port), for integration tests.

    `url` is the base URL and `token` the bearer token it requires (`headers` gives a client's
    headers). `stored` maps each stored PUID to the statement as returned at creation;
    `cached_puids` holds PUIDs marked as used without a statement (the duplicate-batch gotcha);
    `requests` logs every request. Knobs, readable and settable at any time: the next
    `rate_limit_first_n` POSTs (counting the 429s already served) get 429, then the next
    `fail_5xx_first_n` get 503."""

    def __init__(self, token: str | None = None, platform_name: str = "Fake platform") -> None:
        self.token = token or secrets.token_urlsafe(24)
        self.platform_name = platform_name
        self.stored: dict[str, dict[str, Any]] = {}
        self.cached_puids: set[str] = set()
        self.requests: list[LoggedRequest] = []
        self.rate_limit_first_n = 0
        self.fail_5xx_first_n = 0
        self.served_429 = 0
        self.served_503 = 0
        self._lock = threading.Lock()
        self._next_id = 1
        self._server = _Server(self)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread: threading.Thread | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }

    def start(self) -> FakeTDB:
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name="fake-tdb", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> FakeTDB:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def is_used(self, puid: str) -> bool:
        """What `existing-puid` answers: stored, or marked as used in the cache."""
        with self._lock:
            return puid in self.stored or puid in self.cached_puids

    # -- request handling --------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes) -> _Response:
        """Answers one request (`headers` with lower-case names) and logs it."""
        path = urlsplit(target).path
        if len(path) > 1:
            path = path.rstrip("/")
        response = self._route(method, path, headers, body)
        count = 0
        if method == "POST" and path == "/api/v1/statement":
            count = 1
        elif method == "POST" and path == "/api/v1/statements":
            try:
                statements = json.loads(body).get("statements")
                count = len(statements) if _is_array(statements) else 0
            except (ValueError, AttributeError):
                count = 0
        with self._lock:
            self.requests.append(LoggedRequest(path, count, response.status))
        return response

    def _authorized(self, headers: dict[str, str]) -> bool:
        """Sanctum's `bearerToken()`: what follows the last "Bearer ", up to a comma."""
        header = headers.get("authorization", "")
        position = header.rfind("Bearer ")
        if position < 0:
            return False
        given = header[position + 7 :].split(",", 1)[0]
        return secrets.compare_digest(given.encode(), self.token.encode())

    def _route(self, method: str, path: str, headers: dict[str, str], body: bytes) -> _Response:
        unauthenticated = _json(401, {"message": "Unauthenticated."})
        not_allowed = _json(405, {"message": f"The {method} method is not supported for route {path.lstrip('/')}."})
        if path == "/api/ping":
            return _json(200, {"you_say": "ping", "i_say": "pong"}) if method == "GET" else not_allowed
        prefix = "/api/v1/statement/existing-puid/"
        if path.startswith(prefix) and len(path) > len(prefix):
            if method != "GET":
                return not_allowed
            if not self._authorized(headers):
                return unauthenticated
            puid = unquote(path[len(prefix) :])
            if self.is_used(puid):
                return _json(302, {"message": "statement of reason found", "puid": puid})
            return _json(404, {"message": "statement of reason not found", "puid": puid})
        if path not in ("/api/v1/statement", "/api/v1/statements"):
            return _json(404, {"message": f"The route {path.lstrip('/')} could not be found."})
        if method != "POST":
            return not_allowed
        with self._lock:
            if self.served_429 < self.rate_limit_first_n:
                self.served_429 += 1
                reset = str(int(dt.datetime.now(dt.UTC).timestamp()) + 1)
                limits = (("X-RateLimit-Limit", "200"), ("X-RateLimit-Remaining", "0"), ("X-RateLimit-Reset", reset))
                text = b"Limit Reached. Please do not overload the API"
                return _Response(
                    429, text, (("Content-Type", "text/plain; charset=UTF-8"), ("Retry-After", "1"), *limits)
                )
            if self.served_503 < self.fail_5xx_first_n:
                self.served_503 += 1
                return _json(503, {"message": "Service Unavailable"})
        if not self._authorized(headers):
            return unauthenticated
        content_type = headers.get("content-type", "")
        if "/json" not in content_type and "+json" not in content_type:
            return _json(415, {"message": "The request body must be JSON (Content-Type: application/json)."})
        try:
            payload = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
        except ValueError:
            return _json(400, {"message": "Malformed JSON body."})
        data = clean_input(payload)
        data = data if isinstance(data, dict) else {}
        if path == "/api/v1/statement":
            return self._one(data, _expects_json(headers))
        return self._many(data, _expects_json(headers))

    def _invalid(self, errors: dict[str, list[str]], expects_json: bool) -> _Response:
        """A failed FormRequest: 422 JSON, or Laravel's redirect back for a non-JSON client."""
        if not expects_json:
            return _Response(302, b"", (("Location", self.url + "/"), ("Content-Type", "text/html; charset=UTF-8")))
        return _json(422, {"message": summarize(errors), "errors": errors})

    def _server_fields(self, item: dict[str, Any], with_id: bool) -> dict[str, Any]:
        uuid = str(uuidlib.uuid4())
        extra: dict[str, Any] = {"uuid": uuid}
        if with_id:
            extra["id"] = self._next_id
            self._next_id += 1
        extra |= {
            "puid": _php_str(item["puid"]),
            "created_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
            "platform_name": self.platform_name,
            "permalink": f"{self.url}/statement/{uuid}",
            "self": f"{self.url}/api/v1/statement/{uuid}",
        }
        return item | extra

    def _one(self, data: dict[str, Any], expects_json: bool) -> _Response:
        errors, validated = _validate(data, _SINGLE_RULES)
        if errors:
            return self._invalid(errors, expects_json)
        if _unstorable(validated):
            return _json(500, {"message": "Server Error"})
        puid = _php_str(validated["puid"])
        with self._lock:
            if puid in self.stored or puid in self.cached_puids:
                message = "The identifier given is not unique within this platform."
                return _json(422, {"message": message, "errors": {"puid": [message]}, "existing": {"puid": puid}})
            item = self._server_fields(_storage_item(validated, batch=False), with_id=True)
            self.stored[puid] = item
        return _json(201, item)

    def _many(self, data: dict[str, Any], expects_json: bool) -> _Response:
        errors, _ = _validate(data, _STATEMENTS_RULES)
        if errors:
            return self._invalid(errors, expects_json)
        per_statement: dict[str, dict[str, list[str]]] = {}
        all_validated: list[dict[str, Any]] = []
        for i, statement in enumerate(_elements(data["statements"])):
            statement_errors, validated = _validate(statement if isinstance(statement, dict) else {}, _BATCH_RULES)
            if statement_errors:
                per_statement[f"statement_{i}"] = statement_errors
            all_validated.append(validated)
        if per_statement:
            return _json(422, {"errors": per_statement})
        if any(_unstorable(v) for v in all_validated):
            return _json(500, {"message": "Server Error"})
        puids = [_php_str(v["puid"]) for v in all_validated]
        with self._lock:
            seen: set[str] = set()
            reported: list[str] = []
            for puid in puids:
                if puid in seen and puid not in reported:
                    reported.append(puid)
                seen.add(puid)
            reported += [
                p for p in dict.fromkeys(puids) if p not in reported and p in self.stored.keys() | self.cached_puids
            ]
            if reported:
                # `refreshPuidsInCache()` on the reported PUIDs: in-batch duplicates become "used".
                self.cached_puids.update(p for p in reported if p not in self.stored)
                message = "The platform identifier(s) are not all unique within this call."
                return _json(422, {"message": message, "errors": {"puid": [message], "existing_puids": reported}})
            items = [self._server_fields(_storage_item(v, batch=True), with_id=False) for v in all_validated]
            for item in items:
                self.stored[item["puid"]] = item
        return _json(201, {"statements": items})


def _unstorable(validated: dict[str, Any]) -> bool:
    """An array in a text column passes the rules but makes the database insert fail."""
    return any(_is_array(validated.get(f)) for f in _TEXT_FIELDS)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, as a client's connection pool expects
    timeout = 30  # idle keep-alive connections end, so handler threads do not outlive the tests

    def _body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _serve(self) -> None:
        try:
            body = self._body()
        except ValueError:
            body = None
        if body is None:
            response = _json(400, {"message": "Bad request body."})
            self.close_connection = True
        else:
            headers = {k.lower(): v for k, v in self.headers.items()}
            response = self.server.fake.handle(self.command, self.path, headers, body)
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeTDB) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake


if __name__ == "__main__":  # python -m tests.support.tdb_server: serve until interrupted
    with FakeTDB() as tdb:
        print(f"url={tdb.url} token={tdb.token}", flush=True)
        threading.Event().wait()
