"""The README's error table is the error catalogue: integrators rely on these codes."""

from __future__ import annotations

import re
from pathlib import Path

from moderation.errors import CATALOGUE, ModerationError

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_error_table_matches_the_catalogue() -> None:
    text = README.read_text()
    table = text.split("<!-- error-codes:start -->")[1].split("<!-- error-codes:end -->")[0]
    rows = re.findall(r"^\| `([A-Z_]+)` \| (\d{3}) \| (.+?) \|$", table, flags=re.M)
    assert [(code, int(status), meaning) for code, status, meaning in rows] == [
        (code, status, meaning) for code, (status, meaning) in CATALOGUE.items()
    ]


def test_error_shape_and_finality() -> None:
    err = ModerationError("IMAGE_TOO_LARGE", limit=5)
    assert err.to_json() == {
        "error": {"code": "IMAGE_TOO_LARGE", "message": CATALOGUE["IMAGE_TOO_LARGE"][1], "details": {"limit": 5}}
    }
    assert err.http_status == 413 and err.final
    assert not ModerationError("SERVICE_UNAVAILABLE").final


def test_unknown_codes_are_refused() -> None:
    import pytest

    with pytest.raises(KeyError):
        ModerationError("NOT_A_CODE")
