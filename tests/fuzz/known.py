"""Bugs the fuzz suites found: their reproducers (files in `regressions/`) and a recogniser of each
kind of input, so that a long run can look past a known bug for new ones.

Each reproducer is also an explicit `@example` of the suite that found it, so the suite fails
while the bug exists. With `FUZZ_SKIP_KNOWN=1`, generated inputs *and* those examples that a
recogniser matches are discarded (`hypothesis.reject`): use it only to explore, never in CI.
"""

from __future__ import annotations

import gzip
import os
import re
import struct
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from hypothesis import reject

REGRESSIONS = Path(__file__).parent / "regressions"
SKIP = os.environ.get("FUZZ_SKIP_KNOWN", "").lower() in ("1", "true", "yes")

CSV_FIELD_LIMIT = 131_072  # the csv module's default field_size_limit
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def regression(name: str) -> bytes:
    """The bytes of a reproducer (gunzipped when stored compressed)."""
    data = (REGRESSIONS / name).read_bytes()
    return gzip.decompress(data) if name.endswith(".gz") else data


def nesting_depth(body: bytes) -> int:
    """How deep JSON brackets nest (strings not skipped: an over-estimate is fine here)."""
    depth = deepest = 0
    for byte in body:
        if byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif byte in b"]}":
            depth = max(0, depth - 1)
    return deepest


def deep_json(body: bytes) -> bool:
    """gateway-deep-nesting.json: JSON past the parser's recursion limit (about 1,000 levels)
    raises RecursionError out of `Gateway.handle`."""
    return nesting_depth(body) >= 900


_SURROGATE = re.compile(r"[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def lone_surrogate(value: Any) -> bool:
    """gateway-lone-surrogate.json, api-bank-description-surrogate.json: a string holding a lone
    surrogate (a JSON `\\ud800` escape decodes to one) passes `check_text` and then fails to
    encode as UTF-8 (audit chain hash, database driver): UnicodeEncodeError, not a 4xx. For bytes,
    any `\\uD8xx`-`\\uDFxx` escape in the body (valid pairs included: an over-estimate is fine)."""
    if isinstance(value, bytes):
        return _SURROGATE_ESCAPE.search(value) is not None
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, list):
        return any(lone_surrogate(v) for v in value)
    if isinstance(value, dict):
        return any(lone_surrogate(k) or lone_surrogate(v) for k, v in value.items())
    return False


def nul_echoed(value: Any) -> bool:
    """gateway-nul-field-name.json, gateway-nul-blob-name.json: a rejection's message repeats an
    unknown field's name or the blob name, NUL included, and PostgreSQL refuses NUL in the
    dead letter's text (ValueError from the driver, not a 4xx). For bytes, any `\\u0000`."""
    if isinstance(value, bytes):
        return b"\\u0000" in value
    if isinstance(value, dict):
        blob = value.get("blob_sha256")
        return any("\x00" in k for k in value) or (isinstance(blob, str) and "\x00" in blob)
    return False


def pillow_struct_error(data: bytes) -> bool:
    """decoder-gif-truncated-descriptor.gif: Pillow's plugins read truncated headers with
    `struct.unpack_from` and raise `struct.error` (the GIF plugin on a file that ends inside the
    next frame's descriptor, while `is_animated` looks for a second frame), which `inspect_image`
    does not turn into IMAGE_CORRUPT: a 500 from the API."""
    return _decode_raises_struct_error(data) if SKIP else False


def _decode_raises_struct_error(data: bytes) -> bool:
    from moderation.intake.images import Limits, inspect_image

    limits = Limits(max_bytes=20 << 20, max_pixels=50_000_000, max_frames=500, max_total_pixels=400_000_000)
    try:
        inspect_image(data, limits)
    except struct.error:
        return True
    except Exception:
        return False
    return False


def nul_in_path(name: str) -> bool:
    """api-bank-name-nul.txt: a bank name with NUL in the path (`/v1/banks/%00/hashes`, and every
    route under /v1/banks/{name}) reaches the database driver, which raises ValueError: a 500."""
    return "\x00" in name or "\x00" in unquote(name) or "%00" in name


def long_csv_line(text: str) -> bool:
    """csv-first-line-over-field-limit.csv.gz: a line longer than the csv field limit raises
    `_csv.Error` out of `parse_hash_list` (a 500 from the API)."""
    return any(len(line) > CSV_FIELD_LIMIT for line in text.splitlines())


def formula_label(labels: list[str]) -> bool:
    """csv-export-formula.csv: a label that starts a formula is exported as it was imported."""
    return any(label.strip().startswith(FORMULA_START) for label in labels)


def skip_known(is_known: bool) -> None:
    """Discard the example when it is a known bug's input and FUZZ_SKIP_KNOWN is set."""
    if SKIP and is_known:
        reject()
