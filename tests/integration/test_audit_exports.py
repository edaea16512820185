"""Auditors' API: the timeline of one submission, decision search, and exports (CSV with
formula cells neutralised, JSON Lines, DSA statements of reasons that pass the Transparency
Database's rules as implemented independently in tests/support/tdb_server.py)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
from sqlalchemy import update

from moderation.db.tables import submissions
from tests.support.http import auth
from tests.support.review import decide, review_keys, seed_tasks
from tests.support.tdb_server import validate_statement

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def staff(ctx: Any) -> dict[str, str]:
    return review_keys(ctx, "auditco")


def override(client: Any, staff: dict[str, str], sid: str, action: str = "block") -> None:
    tasks = client.get("/v1/review/tasks", headers=auth(staff["mod1"]), params={"limit": 500}).json()["tasks"]
    task = next(t for t in tasks if t["submission_id"] == sid)
    claimed = client.post(f"/v1/review/tasks/{task['id']}/claim", headers=auth(staff["mod1"])).json()
    assert (
        decide(client, staff["mod1"], claimed, action=action, categories=["hate"], reason="slur in caption").status_code
        == 200
    )


def test_timeline_shows_the_automated_and_the_human_decision_in_order(client, staff, ctx) -> None:
    (sid,) = seed_tasks(ctx, "auditco", [{"hate": 0.6}])
    override(client, staff, sid)
    r = client.get(f"/v1/audit/submissions/{sid}/timeline", headers=auth(staff["auditor"]))
    assert r.status_code == 200
    events = r.json()["events"]
    actions = [e["action"] for e in events]
    assert actions.index("decided") < actions.index("routed_to_review") < actions.index("claimed")
    assert actions.index("claimed") < actions.index("reviewed")  # who held it, then what they decided
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    assert all(len(e["row_hash"]) == 64 for e in events)
    other = review_keys(ctx, "auditco-other")
    assert client.get(f"/v1/audit/submissions/{sid}/timeline", headers=auth(other["auditor"])).status_code == 404
    assert client.get(f"/v1/audit/submissions/{sid}/timeline", headers=auth(staff["mod1"])).status_code == 403


def test_decision_search_filters(client, staff, ctx) -> None:
    a, b = seed_tasks(ctx, "auditco", [{"spam": 0.99}, {"hate": 0.61}])
    override(client, staff, b, action="restrict")
    h = auth(staff["auditor"])

    def found(**params: Any) -> set[str]:
        out: set[str] = set()
        after = 0
        while True:
            r = client.get("/v1/audit/decisions", headers=h, params={**params, "after_id": after, "limit": 50})
            assert r.status_code == 200, r.text
            body = r.json()
            out |= {d["submission_id"] for d in body["decisions"]}
            if body["next_after_id"] is None:
                return out
            after = body["next_after_id"]

    assert {a, b} <= found()
    assert a in found(action="block") and b not in found(action="block")
    assert b in found(automated=False) and a not in found(automated=False)
    assert b in found(category="hate") and a not in found(category="hate")
    assert b in found(reviewer=staff["mod1"].split("_")[1])
    for bad in ({"action": "nope"}, {"category": "\x00"}, {"reviewer": "x\x00"}):
        r = client.get("/v1/audit/decisions", headers=h, params=bad)
        assert r.status_code == 422, (bad, r.text)


def test_exports_stream_every_format(client, staff, ctx) -> None:
    (evil,) = seed_tasks(ctx, "auditco", [{"scam_fraud": 0.95}])
    with ctx.engine.begin() as conn:  # a platform id that a spreadsheet would run
        conn.execute(update(submissions).where(submissions.c.id == evil).values(external_id='=HYPERLINK("http://x")'))
    h = auth(staff["auditor"])
    r = client.get("/v1/audit/export", headers=h, params={"format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert rows and {row["puid"] for row in rows if row["submission_id"] == evil} == {'\'=HYPERLINK("http://x")'}
    r = client.get("/v1/audit/export", headers=h, params={"format": "jsonl"})
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert len(lines) == len(rows) and {x["submission_id"] for x in lines} == {row["submission_id"] for row in rows}

    r = client.get("/v1/audit/export", headers=h, params={"format": "dsa"})
    assert r.status_code == 200 and r.headers["x-dsa-schema"]
    statements = [json.loads(line) for line in r.text.splitlines()]
    assert statements
    by_sub = {s["submission_id"]: s for s in statements}
    assert len(by_sub) == len(statements)  # one statement per submission
    for s in statements:
        sent = {k: v for k, v in s.items() if k not in ("schema_version", "decision_id", "submission_id")}
        assert validate_statement(sent) == {}, s
    assert by_sub[evil]["puid"].startswith("sha256-")  # the platform's id has characters the database refuses
    events = client.get("/v1/audit/events", headers=h, params={"action": "exported", "limit": 1000}).json()["events"]
    assert {e["facts"]["format"] for e in events} >= {"csv", "jsonl", "dsa"}
    assert client.get("/v1/audit/export", headers=auth(staff["mod1"]), params={"format": "csv"}).status_code == 403
