"""Fuzzing bank hash-list imports: `parse_hash_list` on any text, and `POST /v1/banks/{name}/hashes`
on any bytes (BOMs, quotes, huge lines and cells, odd columns and delimiters, non-hex and
wrong-length hashes, formula-like cells, non-UTF-8). The parser returns entries or raises a 4xx
ModerationError; the API answers 201 `{added}` or a 4xx in the one error shape, never a 5xx.
"""

from __future__ import annotations

import csv
import io
import json
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from moderation.banks import parse_hash_list
from moderation.errors import CATALOGUE, ModerationError
from tests.fuzz import known, strategies
from tests.fuzz.known import regression, skip_known
from tests.fuzz.meter import MIB, Bundle, Meter, replay_is_flat
from tests.support.http import auth

HEX64 = set("0123456789abcdef")
# Found by this suite (known.long_csv_line): a first line longer than the csv module's field
# limit (131,072 characters) raised _csv.Error outside the parser's guard: a 500 from the API.
LONG_FIRST_LINE = regression("csv-first-line-over-field-limit.csv.gz")
# Found by this suite (known.formula_label): labels are exported as imported, formulas included.
FORMULA_LABEL = list(csv.reader(io.StringIO(regression("csv-export-formula.csv").decode())))[1][1]


@pytest.fixture(scope="module")
def meter() -> Iterator[Meter]:
    m = Meter("bank-csv", item_rss_bound=256 * MIB, retained_rss_bound=None)  # see test_replaying_...
    yield m
    m.finish()


REPLAY: list[str] = []


def check_parse(text: str, meter: Meter) -> None:
    skip_known(known.long_csv_line(text))
    if len(REPLAY) < 400:
        REPLAY.append(text)
    with meter.item(f"({len(text)} characters)"):
        try:
            entries = parse_hash_list(text)
        except ModerationError as exc:
            assert exc.final and exc.code in CATALOGUE, exc.code
            label = exc.code
        else:
            for e in entries:
                assert e["pdq"] is not None or e["sha256"] is not None
                for name in ("pdq", "sha256"):
                    assert e[name] is None or (len(e[name]) == 64 and set(e[name]) <= HEX64), e
            label = "parsed" if entries else "parsed:header only"
    meter.outcome(label)


@given(text=strategies.hash_list())
@example(text=LONG_FIRST_LINE.decode())
@example(text="pdq\n" + "0" * 140_000)
def test_parse_hash_list_returns_entries_or_a_4xx(text: str, meter: Meter) -> None:
    check_parse(text, meter)


@given(text=st.text(max_size=2000))
def test_parse_hash_list_on_any_text(text: str, meter: Meter) -> None:
    check_parse(text, meter)


def test_replaying_the_lists_grows_no_memory() -> None:
    """The lists above, parsed again: RSS flat (the suite's own growth is Hypothesis')."""
    replay_is_flat(REPLAY, parse_hash_list)


@pytest.fixture(scope="module")
def env(fuzz_ctx: Any, fuzz_client: Any, keys: dict[str, str]) -> Iterator[Bundle]:
    bank = f"fuzz-{secrets.token_hex(3)}"
    r = fuzz_client.post("/v1/banks", headers=auth(keys["admin"]), json={"name": bank, "kind": "bad"})
    assert r.status_code == 201, r.text
    meter = Meter("bank-csv-api", item_rss_bound=256 * MIB, retained_rss_bound=256 * MIB)
    yield Bundle(client=fuzz_client, admin=keys["admin"], submitter=keys["submitter"], bank=bank, meter=meter)
    meter.finish()


body_bytes = st.one_of(
    st.builds(
        lambda text, how: strategies.encode_text(text, how),
        strategies.hash_list(),
        st.sampled_from(["utf-8", "utf-8", "utf-8", "latin-1", "broken"]),
    ),
    st.sampled_from(["utf-16", "utf-32", "utf-8-sig"]).map(lambda enc: ("pdq\n" + "ab" * 32 + "\n").encode(enc)),
    st.binary(max_size=1024),
)


@pytest.mark.services
@given(
    body=body_bytes,
    bank=st.sampled_from(["<bank>"] * 6 + ["no-such-bank", "..", "a" * 300, "%00", "\u00e9", "\x00", "a\x00b"]),
    filename=st.sampled_from(["hashes.csv", "", "../x.tsv", "a\x00.csv"]),
    role=st.sampled_from(["admin"] * 5 + ["submitter"]),
)
@example(body=LONG_FIRST_LINE, bank="<bank>", filename="hashes.csv", role="admin")
# Found by this suite (known.nul_in_path): a NUL in the bank name reached the driver: a 500.
@example(body=b"pdq\n" + b"0" * 64, bank="\x00", filename="hashes.csv", role="admin")
def test_hash_list_import_answers_201_or_a_4xx(body: bytes, bank: str, filename: str, role: str, env: Bundle) -> None:
    skip_known(known.long_csv_line(body.decode("utf-8", "replace")) or known.nul_in_path(bank))
    name = env.bank if bank == "<bank>" else bank
    key = env.admin if role == "admin" else env.submitter
    with env.meter.item(f"({len(body)} bytes)"):
        r = env.client.post(
            f"/v1/banks/{quote(name, safe='')}/hashes", headers=auth(key), files={"file": (filename, body, "text/csv")}
        )
    assert r.status_code < 500, f"{r.status_code}: {r.text[:300]}"
    answer = r.json()
    if r.status_code == 201:
        assert set(answer) == {"added"} and answer["added"] >= 0, answer
    else:
        assert 400 <= r.status_code < 500 and set(answer) == {"error"}, answer
        code = answer["error"]["code"]
        assert code in CATALOGUE and CATALOGUE[code][0] < 500 and isinstance(answer["error"]["message"], str)
    env.meter.outcome(str(r.status_code) + ("" if r.status_code == 201 else ":" + answer["error"]["code"]))


@pytest.mark.services
@given(labels=st.lists(st.sampled_from(strategies.FORMULAS) | strategies.odd_text, min_size=1, max_size=5))
@example(labels=[FORMULA_LABEL])
def test_exported_hash_lists_neutralise_formulas(labels: list[str], env: Bundle, fuzz_ctx: Any) -> None:
    """What an import accepts comes back out of `moderation bank export`, which analysts open in
    a spreadsheet: a cell must never start a formula (issue 10, finding 12; OWASP CSV injection)."""
    from moderation.banks import export_hash_list

    skip_known(known.formula_label(labels))
    rows = [[secrets.token_hex(32), label] for label in labels]
    buf = io.StringIO()
    csv.writer(buf).writerows([["pdq", "label"], *rows])
    r = env.client.post(
        f"/v1/banks/{env.bank}/hashes",
        headers=auth(env.admin),
        files={"file": ("h.csv", buf.getvalue().encode("utf-8", "surrogatepass"))},
    )
    assert r.status_code < 500, r.text
    if r.status_code != 201:
        return  # a label the import refuses (control characters, too long) is never exported
    with fuzz_ctx.engine.connect() as conn:
        exported = list(csv.reader(io.StringIO(export_hash_list(conn, "acme", env.bank))))
    ours = {pdq for pdq, _ in rows}
    for cells in exported[1:]:
        if cells[0] not in ours:
            continue  # the suite's other imports share the bank
        for cell in cells:
            assert not cell.startswith(known.FORMULA_START), f"exported cell {cell[:40]!r} starts a formula"


bank_json = st.fixed_dictionaries(
    {"name": st.one_of(st.uuids().map(lambda u: f"b-{u}"), strategies.odd_text)},
    optional={
        "kind": st.sampled_from(["bad", "good", "BAD", ""]) | strategies.json_value,
        "category": st.sampled_from(["sexual", "hate", "", "none"]) | strategies.json_value,
        "description": st.one_of(strategies.plain_text, strategies.any_text, strategies.json_value),
    },
)


@pytest.mark.services
@given(bank=bank_json, ascii_only=st.booleans())
# Found by this suite (known.lone_surrogate): a `\\udfff` escape in the description was a 500.
@example(bank=json.loads(regression("api-bank-description-surrogate.json")), ascii_only=True)
def test_bank_create_answers_201_or_a_4xx(bank: dict[str, Any], ascii_only: bool, env: Bundle) -> None:
    """The bank an import goes to, created from JSON of any shape."""
    skip_known(ascii_only and known.lone_surrogate(bank))
    body = strategies.message_body(bank, ascii_only)
    headers = {**auth(env.admin), "Content-Type": "application/json"}
    with env.meter.item(f"({len(body)} bytes)"):
        r = env.client.post("/v1/banks", headers=headers, content=body)
    assert r.status_code < 500, f"{r.status_code}: {r.text[:300]}"
    answer = r.json()
    if r.status_code != 201:
        assert 400 <= r.status_code < 500 and answer["error"]["code"] in CATALOGUE, answer
    env.meter.outcome(str(r.status_code) + ("" if r.status_code == 201 else ":" + answer["error"]["code"]))
