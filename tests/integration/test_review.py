"""Human review through the API, on the real PostgreSQL, Redis and a real Celery worker: claims
and leases, the case, safe and original images, decisions that supersede the automated one,
escalations, the restricted queue, appeals with their conflict-of-interest rule, golden items,
the exposure budget and SLA ageing; the audit chain verifies after each flow."""

from __future__ import annotations

import io
import json
from datetime import timedelta
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select, update

from moderation.db.tables import decisions, review_tasks, utcnow
from moderation.review import leases
from moderation.review.listing import age_overdue, backlog
from moderation.review.media import record_reveal
from moderation.review.reviewer import Reviewer
from moderation.review.serve import serve_next
from tests.support.http import auth, submit, wait_final
from tests.support.images import picture
from tests.support.receivers import Receiver, callbacks_worker
from tests.support.review import decide, key_id, next_task, review_keys, seed_tasks
from tests.support.waiting import wait_until

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def staff(ctx: Any) -> dict[str, str]:
    return review_keys(ctx, "reviewco")


def events(client: Any, staff: dict[str, str], sid: str) -> list[dict[str, Any]]:
    r = client.get("/v1/audit/events", params={"submission_id": sid, "limit": "1000"}, headers=auth(staff["auditor"]))
    assert r.status_code == 200, r.text
    return list(r.json()["events"])


def chain_ok(client: Any, staff: dict[str, str]) -> None:
    verify = client.get("/v1/audit/verify", headers=auth(staff["auditor"])).json()
    assert verify["ok"] is True and verify["first_break"] is None, verify


def in_review(client: Any, staff: dict[str, str], seed: int, caption: str, **fields: str) -> str:
    body = submit(
        client, staff["submitter"], picture(seed), policy="test-cascade", caption=caption, uploader_id="u-42", **fields
    )
    final = wait_final(client, staff["submitter"], body["id"])
    assert final["status"] == "in_review", final
    return str(body["id"])


def claim_of(client: Any, key: str, sid: str) -> dict[str, Any]:
    """The caller claims the open task of `sid` (found in the list)."""
    tasks = client.get("/v1/review/tasks", headers=auth(key), params={"status": "open", "limit": 500}).json()["tasks"]
    task = next(t for t in tasks if t["submission_id"] == sid)
    r = client.post(f"/v1/review/tasks/{task['id']}/claim", headers=auth(key))
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_review_flow_safe_image_reveal_override_with_reason(client, staff, worker, ctx) -> None:
    original = picture(7001, size=(640, 480))
    body = submit(
        client, staff["submitter"], original, policy="test-cascade", caption="violence_gore=0.62", uploader_id="u-1"
    )
    sid = body["id"]
    assert wait_final(client, staff["submitter"], sid)["status"] == "in_review"
    task = claim_of(client, staff["mod1"], sid)
    assert task["status"] == "claimed" and task["claimed_by"] == key_id(staff["mod1"])
    assert task["kind"] == "review" and task["claim"]["token"] and task["due_at"] > task["created_at"]

    # Another moderator cannot take it, nor see its original.
    assert client.post(f"/v1/review/tasks/{task['id']}/claim", headers=auth(staff["mod2"])).json()["error"]["code"] == (
        "ALREADY_CLAIMED"
    )
    r = client.get(f"/v1/review/tasks/{task['id']}/image", params={"variant": "original"}, headers=auth(staff["mod2"]))
    assert r.status_code == 409 and r.json()["error"]["code"] == "CLAIM_REQUIRED"

    case = client.get(f"/v1/review/tasks/{task['id']}", headers=auth(staff["mod1"])).json()
    assert case["submission"]["uploader_id"] == "u-1" and case["submission"]["width"] == 640
    caption_finding = next(f for f in case["findings"] if f["stage"] == "caption")
    mark = caption_finding["scores"]["violence_gore"]
    assert mark["score"] == pytest.approx(0.62) and mark["review_at"] is not None and mark["block_at"] is not None
    assert case["automated_decision"]["action"] == "review"
    assert case["policy"]["clauses"]["violence_gore"]
    assert case["images"]["safe"].endswith("variant=safe")

    safe = client.get(f"/v1/review/tasks/{task['id']}/image", headers=auth(staff["mod1"]))
    assert safe.status_code == 200 and safe.headers["content-type"] == "image/jpeg"
    assert "no-store" in safe.headers["cache-control"]
    assert safe.content != original and original not in safe.content
    im = Image.open(io.BytesIO(safe.content))
    assert im.mode == "L" and max(im.size) <= ctx.settings.review_safe_side
    assert not any(e["action"] == "media_revealed" for e in events(client, staff, sid))

    revealed = client.get(
        f"/v1/review/tasks/{task['id']}/image", params={"variant": "original"}, headers=auth(staff["mod1"])
    )
    assert revealed.status_code == 200 and revealed.content == original
    reveal = [e for e in events(client, staff, sid) if e["action"] == "media_revealed"]
    assert len(reveal) == 1 and reveal[0]["actor"] == key_id(staff["mod1"])
    assert reveal[0]["facts"]["review_task_id"] == task["id"] and reveal[0]["facts"]["graphic"] is True

    refused = decide(client, staff["mod1"], task, action="block", categories=["violence_gore"])
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "REASON_REQUIRED"
    wrong = decide(client, staff["mod1"], task, claim_token="not-the-token", action="block", reason="x")
    assert wrong.status_code == 409 and wrong.json()["error"]["code"] == "CLAIM_REQUIRED"
    done = decide(client, staff["mod1"], task, action="block", categories=["violence_gore"], reason="Graphic injury")
    assert done.status_code == 200, done.text
    assert done.json()["task"]["status"] == "done"
    again = decide(client, staff["mod1"], task, action="allow", reason="changed my mind")
    assert again.status_code == 409 and again.json()["error"]["code"] == "TASK_CLOSED"

    status = client.get(f"/v1/submissions/{sid}", headers=auth(staff["submitter"])).json()
    assert status["status"] == "reviewed"
    assert status["decision"]["action"] == "block" and status["decision"]["automated"] is False
    assert status["decision"]["reviewer"] == key_id(staff["mod1"]) and status["decision"]["decided_at"]
    assert [d["automated"] for d in status["history"]] == [True, False]
    assert status["history"][0]["action"] == "review"
    reviewed = [e for e in events(client, staff, sid) if e["action"] == "reviewed"]
    assert len(reviewed) == 1 and reviewed[0]["automated"] is False
    facts = reviewed[0]["facts"]
    assert facts["automated_detection"] is True
    assert facts["automated_decision"] == "AUTOMATED_DECISION_PARTIALLY"
    assert facts["decision_facts"] == "Graphic injury" and facts["category"] == "VIOLENCE"
    assert facts["reviewer"]["key_id"] == key_id(staff["mod1"])
    chain_ok(client, staff)


def test_agreeing_with_a_qa_sample_needs_no_reason_and_golden_items_record_agreement(client, staff, ctx) -> None:
    sid = seed_tasks(ctx, "reviewco", [{"hate": 0.95}])[0]  # blocked; made a QA task below
    with ctx.engine.begin() as conn:
        auto = conn.execute(select(decisions).where(decisions.c.submission_id == sid)).one()
        assert auto.action == "block"
    # Golden: mark it; then serve golden items for certain and answer one wrongly.
    r = client.post(
        "/v1/review/golden", headers=auth(staff["admin"]), json={"submission_id": sid, "expected_action": "block"}
    )
    assert r.status_code == 201, r.text
    assert (
        client.post(
            "/v1/review/golden", headers=auth(staff["mod1"]), json={"submission_id": sid, "expected_action": "block"}
        ).status_code
        == 403
    )
    mod2 = Reviewer(key_id(staff["mod2"]), "reviewco", frozenset({"moderator"}))
    with ctx.engine.begin() as conn:
        served = serve_next(conn, mod2, utcnow(), lease_s=600, golden_rate=1.0, budget=0)
    assert served is not None and served["submission_id"] == sid
    assert served["kind"] == "review" and served["reason"] == "review"  # looks like any task
    case = client.get(f"/v1/review/tasks/{served['id']}", headers=auth(staff["mod2"])).json()
    assert case["human_decisions"] == []
    answered = decide(client, staff["mod2"], served, action="allow", reason="looks fine")
    assert answered.status_code == 200, answered.text
    status = client.get(f"/v1/submissions/{sid}", headers=auth(staff["submitter"])).json()
    assert status["decision"]["action"] == "block" and status["decision"]["automated"] is True  # unchanged
    agreement = client.get("/v1/review/golden/agreement", headers=auth(staff["auditor"])).json()["moderators"]
    mine = next(m for m in agreement if m["moderator"] == key_id(staff["mod2"]))
    assert mine["answered"] == 1 and mine["agreed"] == 0
    with ctx.engine.begin() as conn:  # never the same golden item twice to one moderator
        assert serve_next(conn, mod2, utcnow(), lease_s=600, golden_rate=1.0, budget=0, queue="nothing-here") is None
        assert leases.next_task(conn, mod2, utcnow(), 600, queue="nothing-here") is None
    chain_ok(client, staff)


def test_escalation_moves_to_seniors_and_restricted_tasks_exist_only_for_restricted_reviewers(
    client, staff, ctx
) -> None:
    esc_sid, cs_sid = seed_tasks(ctx, "reviewco", [{"harassment": 0.6}, {"child_safety": 0.5}])
    task = claim_of(client, staff["mod1"], esc_sid)
    r = decide(client, staff["mod1"], task, action="escalate")
    assert r.status_code == 422 and r.json()["error"]["code"] == "REASON_REQUIRED"
    r = decide(client, staff["mod1"], task, action="escalate", reason="Threat against a named person?")
    assert r.status_code == 200 and r.json()["task"]["kind"] == "escalation" and r.json()["task"]["status"] == "open"
    assert client.get(f"/v1/review/tasks/{task['id']}", headers=auth(staff["mod1"])).status_code == 404
    senior_view = client.get(f"/v1/review/tasks/{task['id']}", headers=auth(staff["senior"]))
    assert senior_view.status_code == 200
    claimed = client.post(f"/v1/review/tasks/{task['id']}/claim", headers=auth(staff["senior"])).json()
    assert (
        decide(
            client, staff["senior"], claimed, action="block", categories=["harassment"], reason="Targeted"
        ).status_code
        == 200
    )

    # The child-safety task: absent for moderators and seniors (lists, counts, by id), there for restricted reviewers.
    for who in ("mod1", "mod2", "senior"):
        listed = client.get("/v1/review/tasks", headers=auth(staff[who]), params={"limit": 500}).json()["tasks"]
        assert cs_sid not in {t["submission_id"] for t in listed}
        queues = client.get("/v1/review/queues", headers=auth(staff[who])).json()["queues"]
        assert "restricted" not in {q["queue"] for q in queues}
    restricted = client.get("/v1/review/tasks", headers=auth(staff["restricted"]), params={"limit": 500}).json()[
        "tasks"
    ]
    cs_task = next(t for t in restricted if t["submission_id"] == cs_sid)
    assert cs_task["queue"] == "restricted"
    assert client.get(f"/v1/review/tasks/{cs_task['id']}", headers=auth(staff["mod1"])).status_code == 404
    assert client.post(f"/v1/review/tasks/{cs_task['id']}/claim", headers=auth(staff["senior"])).status_code == 404
    assert client.get(f"/v1/review/tasks/{cs_task['id']}", headers=auth(staff["restricted"])).status_code == 200
    # The other tenant's keys see nothing of this one.
    other = review_keys(ctx, "reviewco-other")
    assert client.get(f"/v1/review/tasks/{task['id']}", headers=auth(other["senior"])).status_code == 404
    assert client.get("/v1/review/tasks", headers=auth(other["mod1"])).json()["tasks"] == []
    assert client.get("/v1/review/tasks", headers=auth(staff["submitter"])).status_code == 403
    chain_ok(client, staff)


def test_leases_expire_and_heartbeat_extends_them(client, staff, ctx) -> None:
    sid = seed_tasks(ctx, "reviewco", [{"spam": 0.8}])[0]
    task = claim_of(client, staff["mod1"], sid)
    token = task["claim"]["token"]
    beat = client.post(
        f"/v1/review/tasks/{task['id']}/heartbeat", headers=auth(staff["mod1"]), json={"claim_token": token}
    )
    assert beat.status_code == 200 and beat.json()["claim_expires_at"] >= task["claim_expires_at"]
    bad = client.post(
        f"/v1/review/tasks/{task['id']}/heartbeat", headers=auth(staff["mod2"]), json={"claim_token": token}
    )
    assert bad.status_code == 409 and bad.json()["error"]["code"] == "CLAIM_REQUIRED"
    # The lease runs out: the task is open again, another moderator takes it, the first one's token is dead.
    with ctx.engine.begin() as conn:
        conn.execute(
            update(review_tasks)
            .where(review_tasks.c.id == task["id"])
            .values(lease_until=utcnow() - timedelta(seconds=1))
        )
    listed = client.get("/v1/review/tasks", headers=auth(staff["mod2"]), params={"status": "open", "limit": 500}).json()
    assert task["id"] in {t["id"] for t in listed["tasks"]}
    taken = client.post(f"/v1/review/tasks/{task['id']}/claim", headers=auth(staff["mod2"]))
    assert taken.status_code == 200
    late = decide(client, staff["mod1"], task, action="block", reason="late")
    assert late.status_code == 409 and late.json()["error"]["code"] == "CLAIM_REQUIRED"
    released = client.post(
        f"/v1/review/tasks/{task['id']}/release",
        headers=auth(staff["mod2"]),
        json={"claim_token": taken.json()["claim"]["token"]},
    )
    assert released.status_code == 200 and released.json()["status"] == "open"
    with ctx.engine.begin() as conn:
        assert leases.expire(conn, utcnow()) >= 0


def callback_events(receiver: Receiver, sid: str) -> list[dict[str, Any]]:
    bodies = [json.loads(body) for status, _, body in receiver.calls if status == 200]
    return [b for b in bodies if b["id"] == sid]


def test_appeal_is_decided_by_someone_else_and_reaches_the_platform(client, staff, worker, ctx, procs) -> None:
    from moderation import callbacks

    with ctx.engine.begin() as conn:
        callbacks.set_receiver_rules(conn, "reviewco", callbacks.ReceiverRules.parse(True, ["127.0.0.0/8"]), "test")
    receiver = Receiver()
    callbacks_worker(procs)
    sid = in_review(client, staff, 7002, "hate=0.6", callback_url=receiver.url)
    wait_until(lambda: callback_events(receiver, sid), 30, what="the automated decision's callback")
    task = claim_of(client, staff["mod1"], sid)
    assert decide(client, staff["mod1"], task, action="block", categories=["hate"], reason="Slur").status_code == 200

    missing = client.post(f"/v1/submissions/{sid}/appeals", headers=auth(staff["submitter"]), json={"statement": ""})
    assert missing.status_code == 422
    filed = client.post(
        f"/v1/submissions/{sid}/appeals",
        headers=auth(staff["submitter"]),
        json={"statement": "It is a quote from a news article.", "appellant_id": "u-42"},
    )
    assert filed.status_code == 201, filed.text
    appeal = filed.json()
    assert appeal["status"] == "open" and appeal["due_at"]
    dup = client.post(f"/v1/submissions/{sid}/appeals", headers=auth(staff["submitter"]), json={"statement": "again"})
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "APPEAL_OPEN"
    assert (
        client.post(f"/v1/submissions/{sid}/appeals", headers=auth(staff["mod1"]), json={"statement": "x"}).status_code
        == 403
    )

    # The first moderator is refused the appeal, by id and by `next`.
    tasks = client.get("/v1/review/tasks", headers=auth(staff["mod2"]), params={"kind": "appeal", "limit": 500}).json()[
        "tasks"
    ]
    appeal_task = next(t for t in tasks if t["submission_id"] == sid)
    r = client.post(f"/v1/review/tasks/{appeal_task['id']}/claim", headers=auth(staff["mod1"]))
    assert r.status_code == 403 and r.json()["error"]["code"] == "CONFLICT_OF_INTEREST"
    while (n := next_task(client, staff["mod1"], "appeals")).status_code == 200:
        assert n.json()["submission_id"] != sid
        client.post(
            f"/v1/review/tasks/{n.json()['id']}/release",
            headers=auth(staff["mod1"]),
            json={"claim_token": n.json()["claim"]["token"]},
        )
        break
    got = client.post(f"/v1/review/tasks/{appeal_task['id']}/claim", headers=auth(staff["mod2"])).json()
    case = client.get(f"/v1/review/tasks/{got['id']}", headers=auth(staff["mod2"])).json()
    assert case["appeal"]["statement"] == "It is a quote from a news article."
    assert [d["action"] for d in case["human_decisions"]] == ["block"]
    no_reason = decide(client, staff["mod2"], got, outcome="reversed", action="allow")
    assert no_reason.status_code == 422 and no_reason.json()["error"]["code"] == "REASON_REQUIRED"
    ok = decide(client, staff["mod2"], got, outcome="reversed", action="allow", reason="News reporting, quoted")
    assert ok.status_code == 200, ok.text
    status = client.get(f"/v1/submissions/{sid}", headers=auth(staff["submitter"])).json()
    assert status["decision"]["action"] == "allow" and status["decision"]["reviewer"] == key_id(staff["mod2"])
    assert [d["action"] for d in status["history"]] == ["review", "block", "allow"]
    listed = client.get(f"/v1/submissions/{sid}/appeals", headers=auth(staff["submitter"])).json()["appeals"]
    assert listed[0]["status"] == "decided" and listed[0]["outcome"] == "reversed"
    decided = [e for e in events(client, staff, sid) if e["action"] == "appeal_decided"]
    assert decided and decided[0]["facts"]["automated_decision"] == "AUTOMATED_DECISION_NOT_AUTOMATED"
    assert decided[0]["facts"]["previous_action"] == "block" and decided[0]["facts"]["action"] == "allow"
    assert [e["action"] for e in events(client, staff, sid)].count("appealed") == 1
    chain_ok(client, staff)

    # The platform heard of each: the automated decision, the human one, the appeal's outcome.
    def three() -> list[dict[str, Any]] | None:
        got = callback_events(receiver, sid)
        return got if len(got) >= 3 else None

    got = wait_until(three, 60, what="three callbacks")
    assert [b["event"] for b in got] == ["decision.created", "decision.updated", "appeal.decided"]
    assert got[1]["decision"]["action"] in ("block", "allow") and got[1]["decision"]["automated"] is False
    assert got[2]["appeal"]["outcome"] == "reversed" and got[2]["decision"]["action"] == "allow"

    # Each delivery attempt is in the submission's timeline.
    def attempted() -> list[dict[str, Any]] | None:
        found = [e for e in events(client, staff, sid) if e["action"] == "callback_attempted"]
        return found if len(found) >= 3 else None

    attempts = wait_until(attempted, 30, what="callback attempts in the chain")
    assert {a["facts"]["event"] for a in attempts} == {"decision.created", "decision.updated", "appeal.decided"}
    assert all(a["facts"]["outcome"] == "delivered" and a["facts"]["http_status"] == 200 for a in attempts)
    receiver.close()


def test_appeal_window_and_undecided_submissions(client, staff, ctx) -> None:
    sid = seed_tasks(ctx, "reviewco", [{"spam": 0.99}])[0]
    with ctx.engine.begin() as conn:
        conn.execute(
            update(decisions).where(decisions.c.submission_id == sid).values(decided_at=utcnow() - timedelta(days=200))
        )
    late = client.post(f"/v1/submissions/{sid}/appeals", headers=auth(staff["submitter"]), json={"statement": "please"})
    assert late.status_code == 422 and late.json()["error"]["code"] == "APPEAL_WINDOW_CLOSED"
    with ctx.engine.begin() as conn:
        conn.execute(
            update(decisions).where(decisions.c.submission_id == sid).values(decided_at=utcnow() - timedelta(days=180))
        )
    in_time = client.post(
        f"/v1/submissions/{sid}/appeals", headers=auth(staff["submitter"]), json={"statement": "please"}
    )
    assert in_time.status_code == 201  # six months after the decision it is still open
    other = review_keys(ctx, "reviewco-appeals-other")
    assert (
        client.post(
            f"/v1/submissions/{sid}/appeals", headers=auth(other["submitter"]), json={"statement": "x"}
        ).status_code
        == 404
    )


def test_exposure_budget_serves_non_graphic_first(client, staff, ctx) -> None:
    tenant = "reviewco-exposure"
    keys = review_keys(ctx, tenant)
    graphic, plain = seed_tasks(ctx, tenant, [{"violence_gore": 0.6}, {"spam": 0.75}])
    mod = Reviewer(key_id(keys["mod1"]), tenant, frozenset({"moderator"}))
    with ctx.engine.begin() as conn:
        first = serve_next(conn, mod, utcnow(), lease_s=600, golden_rate=0, budget=1)
    assert first is not None and first["submission_id"] == graphic  # the more severe comes first
    with ctx.engine.begin() as conn:
        task = leases.get_task(conn, mod, first["id"])
        record_reveal(conn, mod, task, utcnow())
        conn.execute(
            update(review_tasks)
            .where(review_tasks.c.id == first["id"])
            .values(status="open", lease_until=None, claimed_by=None)
        )
        again = serve_next(conn, mod, utcnow(), lease_s=600, golden_rate=0, budget=1)
    assert again is not None and again["submission_id"] == plain
    assert again["exposure"]["exceeded"] is True


def test_overdue_tasks_move_up_and_count_as_breaches(ctx) -> None:
    tenant = "reviewco-sla"
    review_keys(ctx, tenant)
    seed_tasks(ctx, tenant, [{"spam": 0.75}])
    with ctx.engine.begin() as conn:
        before = conn.execute(select(review_tasks).where(review_tasks.c.tenant_id == tenant)).one()
        assert age_overdue(conn, utcnow() + timedelta(days=2)) >= 1
        after = conn.execute(select(review_tasks).where(review_tasks.c.tenant_id == tenant)).one()
        assert after.breached is True and after.priority < before.priority
        age_overdue(conn, utcnow() + timedelta(days=2))  # a second pass: this one is not moved twice
        again = conn.execute(select(review_tasks).where(review_tasks.c.tenant_id == tenant)).one()
        assert again.priority == after.priority
        queues = {q["queue"]: q for q in backlog(conn, utcnow())}
        assert queues[after.queue]["breaches"] >= 1


def test_conflict_of_interest_is_checked_again_at_the_decision(client, staff, ctx) -> None:
    """Claiming an appeal first and deciding the submission afterwards (here: its golden copy)
    does not let one person decide both."""
    sid = seed_tasks(ctx, "reviewco", [{"scam_fraud": 0.95}])[0]  # blocked, final
    filed = client.post(
        f"/v1/submissions/{sid}/appeals", headers=auth(staff["submitter"]), json={"statement": "legit shop"}
    )
    assert filed.status_code == 201, filed.text
    appeal_task = next(
        t
        for t in client.get(
            "/v1/review/tasks", headers=auth(staff["mod2"]), params={"kind": "appeal", "limit": 500}
        ).json()["tasks"]
        if t["submission_id"] == sid
    )
    held = client.post(f"/v1/review/tasks/{appeal_task['id']}/claim", headers=auth(staff["mod2"])).json()
    assert (
        client.post(
            "/v1/review/golden", headers=auth(staff["admin"]), json={"submission_id": sid, "expected_action": "block"}
        ).status_code
        == 201
    )
    mod2 = Reviewer(key_id(staff["mod2"]), "reviewco", frozenset({"moderator"}))
    with ctx.engine.begin() as conn:
        served = serve_next(conn, mod2, utcnow(), lease_s=600, golden_rate=1.0, budget=0)
    assert served is not None and served["submission_id"] == sid
    assert decide(client, staff["mod2"], served, action="block", reason="scam").status_code == 200
    late = decide(client, staff["mod2"], held, outcome="reversed", action="allow", reason="I changed my mind")
    assert late.status_code == 403 and late.json()["error"]["code"] == "CONFLICT_OF_INTEREST"


def test_appeals_wait_for_a_final_decision(client, staff, ctx) -> None:
    sid = seed_tasks(ctx, "reviewco", [{"hate": 0.6}])[0]  # the machine sent it to review
    early = client.post(f"/v1/submissions/{sid}/appeals", headers=auth(staff["submitter"]), json={"statement": "why?"})
    assert early.status_code == 409 and early.json()["error"]["code"] == "NOT_DECIDED"


def test_child_safety_stays_restricted_on_every_path(client, staff, ctx) -> None:
    # A general moderator who finds child-safety material hands it to the restricted queue.
    sid = seed_tasks(ctx, "reviewco", [{"harassment": 0.55}])[0]
    task = claim_of(client, staff["mod1"], sid)
    r = decide(client, staff["mod1"], task, action="block", categories=["child_safety"], reason="a minor")
    assert r.status_code == 200 and r.json()["to_queue"] == "restricted"
    assert client.get(f"/v1/review/tasks/{task['id']}", headers=auth(staff["mod1"])).status_code == 404
    assert client.get(f"/v1/review/tasks/{task['id']}", headers=auth(staff["restricted"])).status_code == 200
    # A decision that scored child safety (a policy without escalation, say) makes its appeal restricted.
    blocked = seed_tasks(ctx, "reviewco", [{"spam": 0.99}])[0]
    with ctx.engine.begin() as conn:
        conn.execute(
            update(decisions)
            .where(decisions.c.submission_id == blocked)
            .values(categories={"spam": 0.99, "child_safety": 0.9})
        )
    assert (
        client.post(
            f"/v1/submissions/{blocked}/appeals", headers=auth(staff["submitter"]), json={"statement": "no"}
        ).status_code
        == 201
    )
    for who in ("mod1", "senior"):
        listed = client.get("/v1/review/tasks", headers=auth(staff[who]), params={"limit": 500}).json()["tasks"]
        assert blocked not in {t["submission_id"] for t in listed}
        # ...and the submission itself, its appeals and its history do not exist for them
        assert client.get(f"/v1/submissions/{blocked}", headers=auth(staff[who])).status_code == 404
        assert client.get(f"/v1/submissions/{blocked}/appeals", headers=auth(staff[who])).status_code == 404
    assert blocked in {
        t["submission_id"]
        for t in client.get("/v1/review/tasks", headers=auth(staff["restricted"]), params={"limit": 500}).json()[
            "tasks"
        ]
    }
    assert client.get(f"/v1/submissions/{blocked}", headers=auth(staff["submitter"])).status_code == 200


def test_uploader_history_hides_restricted_submissions(client, staff, ctx) -> None:
    plain, secret = seed_tasks(ctx, "reviewco", [{"spam": 0.75}, {"child_safety": 0.5}])
    with ctx.engine.begin() as conn:
        from moderation.db.tables import submissions

        conn.execute(
            update(submissions).where(submissions.c.id.in_([plain, secret])).values(uploader_id="same-uploader")
        )
    task = next(
        t
        for t in client.get("/v1/review/tasks", headers=auth(staff["mod1"]), params={"limit": 500}).json()["tasks"]
        if t["submission_id"] == plain
    )
    case = client.get(f"/v1/review/tasks/{task['id']}", headers=auth(staff["mod1"])).json()
    assert secret not in {h["submission_id"] for h in case["uploader_history"]}


def test_bad_ids_and_filters_are_4xx_never_500(client, staff) -> None:
    h = auth(staff["mod1"])
    for path in ("/v1/review/tasks/%00abc", "/v1/review/tasks/" + "g" * 32, "/v1/review/tasks/x%00/image"):
        assert client.get(path, headers=h).status_code == 404
    for params in ({"queue": "a\x00b"}, {"category": "\x00"}, {"cursor": "bm90LWEtY3Vyc29y"}, {"kind": "nope"}):
        r = client.get("/v1/review/tasks", headers=h, params=params)
        assert r.status_code == 422 and r.json()["error"]["code"] == "INVALID_REQUEST", (params, r.text)
    assert client.post("/v1/review/next", headers=h, params={"queue": "\x00"}).status_code == 422
    r = client.post(
        "/v1/review/golden", headers=auth(staff["admin"]), json={"submission_id": "\x00", "expected_action": "block"}
    )
    assert r.status_code == 422


def test_banks_from_a_decision_need_the_right_bank_and_action(client, staff, ctx) -> None:
    admin = auth(staff["admin"])
    assert (
        client.post(
            "/v1/banks", headers=admin, json={"name": "review-bad", "kind": "bad", "category": "hate"}
        ).status_code
        == 201
    )
    assert client.post("/v1/banks", headers=admin, json={"name": "review-good", "kind": "good"}).status_code == 201
    (a,) = seed_tasks(ctx, "reviewco", [{"hate": 0.6}])
    ta = claim_of(client, staff["mod1"], a)
    r = decide(client, staff["mod1"], ta, action="allow", reason="fine", add_to_bank="review-good")
    assert r.status_code == 403  # a known-good bank takes an admin
    r = decide(client, staff["mod1"], ta, action="allow", reason="fine", add_to_bank="review-bad")
    assert r.status_code == 422  # a known-bad bank takes what is blocked or restricted
    r = decide(client, staff["mod1"], ta, action="block", reason="slur", add_to_bank="review-bad")
    assert r.status_code == 200, r.text
    entries = client.get("/v1/banks/review-bad/entries", headers=admin).json()["entries"]
    assert len(entries) == 1


def test_a_golden_task_given_back_is_withdrawn(client, staff, ctx) -> None:
    sid = seed_tasks(ctx, "reviewco", [{"spam": 0.99}])[0]
    client.post(
        "/v1/review/golden", headers=auth(staff["admin"]), json={"submission_id": sid, "expected_action": "block"}
    )
    mod1 = Reviewer(key_id(staff["mod1"]), "reviewco", frozenset({"moderator"}))
    with ctx.engine.begin() as conn:
        served = serve_next(conn, mod1, utcnow(), lease_s=600, golden_rate=1.0, budget=0)
    assert served is not None
    token = served["claim"]["token"]
    r = client.post(
        f"/v1/review/tasks/{served['id']}/release", headers=auth(staff["mod1"]), json={"claim_token": token}
    )
    assert r.status_code == 200 and r.json()["status"] == "done"
    assert client.post(f"/v1/review/tasks/{served['id']}/claim", headers=auth(staff["mod2"])).status_code == 409
