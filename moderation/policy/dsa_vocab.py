"""The EU DSA Transparency Database's vocabulary, pinned: its API v1 with the statement
categories and keywords in force since 1 July 2025 (the February 2025 change removed
PORNOGRAPHY_OR_SEXUALIZED_CONTENT, SCOPE_OF_PLATFORM_SERVICE, NON_CONSENSUAL_BEHAVIOUR and
UNSAFE_AND_ILLEGAL_PRODUCTS). Read from the database's own validation code; see
docs/research/dsa-tdb-rules.md. Policies are validated against it at load time, and every
exported statement against the rules in `moderation.audit.dsa`."""

from __future__ import annotations

SCHEMA_VERSION = "tdb-api-v1+categories-2025-07"

# STATEMENT_CATEGORY_ + these (the policy files name them without the prefix).
CATEGORIES = (
    "ANIMAL_WELFARE",
    "CONSUMER_INFORMATION",
    "CYBER_VIOLENCE",
    "CYBER_VIOLENCE_AGAINST_WOMEN",
    "DATA_PROTECTION_AND_PRIVACY_VIOLATIONS",
    "ILLEGAL_OR_HARMFUL_SPEECH",
    "INTELLECTUAL_PROPERTY_INFRINGEMENTS",
    "NEGATIVE_EFFECTS_ON_CIVIC_DISCOURSE_OR_ELECTIONS",
    "NOT_SPECIFIED_NOTICE",
    "OTHER_VIOLATION_TC",
    "PROTECTION_OF_MINORS",
    "RISK_FOR_PUBLIC_SECURITY",
    "SCAMS_AND_FRAUD",
    "SELF_HARM",
    "UNSAFE_AND_PROHIBITED_PRODUCTS",
    "VIOLENCE",
)
REMOVED_CATEGORIES = {
    "PORNOGRAPHY_OR_SEXUALIZED_CONTENT": "OTHER_VIOLATION_TC with keyword ADULT_SEXUAL_MATERIAL or NUDITY",
    "SCOPE_OF_PLATFORM_SERVICE": "OTHER_VIOLATION_TC",
    "NON_CONSENSUAL_BEHAVIOUR": "CYBER_VIOLENCE with keyword NON_CONSENSUAL_IMAGE_SHARING",
    "UNSAFE_AND_ILLEGAL_PRODUCTS": "UNSAFE_AND_PROHIBITED_PRODUCTS",
}

# KEYWORD_ + these (category_specification).
KEYWORDS = frozenset(
    {
        "ADULT_SEXUAL_MATERIAL",
        "AGE_SPECIFIC_RESTRICTIONS",
        "AGE_SPECIFIC_RESTRICTIONS_MINORS",
        "ANIMAL_HARM",
        "BIOMETRIC_DATA_BREACH",
        "BULLYING_AGAINST_GIRLS",
        "CHILD_SEXUAL_ABUSE_MATERIAL",
        "CHILD_SEXUAL_ABUSE_MATERIAL_DEEPFAKE",
        "CONTENT_PROMOTING_EATING_DISORDERS",
        "COORDINATED_HARM",
        "COPYRIGHT_INFRINGEMENT",
        "CYBER_BULLYING_INTIMIDATION",
        "CYBER_HARASSMENT",
        "CYBER_HARASSMENT_AGAINST_WOMEN",
        "CYBER_INCITEMENT",
        "CYBER_STALKING",
        "CYBER_STALKING_AGAINST_WOMEN",
        "DATA_FALSIFICATION",
        "DEFAMATION",
        "DESIGN_INFRINGEMENT",
        "DISCRIMINATION",
        "FEMALE_GENDERED_DISINFORMATION",
        "GEOGRAPHIC_INDICATIONS_INFRINGEMENT",
        "GEOGRAPHICAL_REQUIREMENTS",
        "GOODS_SERVICES_NOT_PERMITTED",
        "GROOMING_SEXUAL_ENTICEMENT_MINORS",
        "HATE_SPEECH",
        "HIDDEN_ADVERTISEMENT",
        "HUMAN_EXPLOITATION",
        "HUMAN_TRAFFICKING",
        "ILLEGAL_ORGANIZATIONS",
        "IMPERSONATION_ACCOUNT_HIJACKING",
        "INAUTHENTIC_ACCOUNTS",
        "INAUTHENTIC_LISTINGS",
        "INAUTHENTIC_USER_REVIEWS",
        "INCITEMENT_AGAINST_WOMEN",
        "INCITEMENT_VIOLENCE_HATRED",
        "INSUFFICIENT_INFORMATION_ON_TRADERS",
        "LANGUAGE_REQUIREMENTS",
        "MISINFORMATION_DISINFORMATION",
        "MISLEADING_INFO_CONSUMER_RIGHTS",
        "MISLEADING_INFO_GOODS_SERVICES",
        "MISSING_PROCESSING_GROUND",
        "NON_CONSENSUAL_IMAGE_SHARING",
        "NON_CONSENSUAL_IMAGE_SHARING_AGAINST_WOMEN",
        "NON_CONSENSUAL_MATERIAL_DEEPFAKE",
        "NON_CONSENSUAL_MATERIAL_DEEPFAKE_AGAINST_WOMEN",
        "NONCOMPLIANCE_PRICING",
        "NUDITY",
        "PATENT_INFRINGEMENT",
        "PHISHING",
        "PROHIBITED_PRODUCTS",
        "PYRAMID_SCHEMES",
        "RIGHT_TO_BE_FORGOTTEN",
        "RISK_ENVIRONMENTAL_DAMAGE",
        "RISK_PUBLIC_HEALTH",
        "SELF_MUTILATION",
        "STALKING",
        "SUICIDE",
        "TERRORIST_CONTENT",
        "TRADE_SECRET_INFRINGEMENT",
        "TRADEMARK_INFRINGEMENT",
        "TRAFFICKING_WOMEN_GIRLS",
        "UNLAWFUL_SALE_ANIMALS",
        "UNSAFE_CHALLENGES",
        "UNSAFE_PRODUCTS",
        "VIOLATION_EU_LAW",
        "VIOLATION_NATIONAL_LAW",
        "OTHER",
    }
)

# territorial_scope: ISO 3166-1 alpha-2 (Greece is GR, not EL).
EU = [
    "AT",
    "BE",
    "BG",
    "CY",
    "CZ",
    "DE",
    "DK",
    "EE",
    "ES",
    "FI",
    "FR",
    "GR",
    "HR",
    "HU",
    "IE",
    "IT",
    "LT",
    "LU",
    "LV",
    "MT",
    "NL",
    "PL",
    "PT",
    "RO",
    "SE",
    "SI",
    "SK",
]
EEA = (*EU, "IS", "LI", "NO")

# A policy's `visibility` words -> decision_visibility values.
VISIBILITY = {
    "REMOVED": "DECISION_VISIBILITY_CONTENT_REMOVED",
    "DISABLED": "DECISION_VISIBILITY_CONTENT_DISABLED",
    "DEMOTED": "DECISION_VISIBILITY_CONTENT_DEMOTED",
    "AGE_RESTRICTED": "DECISION_VISIBILITY_CONTENT_AGE_RESTRICTED",
    "INTERACTION_RESTRICTED": "DECISION_VISIBILITY_CONTENT_INTERACTION_RESTRICTED",
    "LABELLED": "DECISION_VISIBILITY_CONTENT_LABELLED",
}


def territories(scope: list[str]) -> list[str]:
    """A policy's territorial scope as the database's codes: `EU` and `EEA` expand to their
    member states, `EL` is Greece's `GR`; anything else must be one of the EEA codes."""
    out: set[str] = set()
    for code in scope:
        c = code.strip().upper()
        if c == "EU":
            out.update(EU)
        elif c == "EEA":
            out.update(EEA)
        else:
            out.add("GR" if c == "EL" else c)
    return sorted(out)
