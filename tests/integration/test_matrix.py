"""The tenancy and role matrix (issue 10, proof suite), generated from the app's route table:
every route x every caller (each role alone, all roles, no role, every role but the ones the route
allows, no key, malformed, unknown, revoked keys) x tenant A's own resources, tenant B's, and
resources that exist nowhere.

What must hold: no key or a bad one -> 401 UNAUTHENTICATED on every /v1/ route; a role the route
does not allow -> 403 FORBIDDEN; B's resource named by A -> 404 NOT_FOUND, exactly like one that
does not exist; no answer to A ever contains B's data (strings mined from every row B has in the
database, minus what A's request itself said); a refused call writes nothing (no audit event by
its key); B's rows are unchanged afterwards; no 5xx; every error is `{"error": {"code",
"message"}}`. Offences are collected and reported as one table; a summary line is printed.

A route added to the app without an entry in `tests.support.matrix.SPECS` fails
`test_every_route_is_in_the_matrix`. The matrix runs on its own app with rate limits off (it
makes hundreds of calls, many with unknown keys, from one address);
`test_a_flood_of_unknown_keys_is_rate_limited` shows the limit on a default app.

One command (`-s` shows the summary line when it passes):
`MODERATION_REQUIRE_SERVICES=1 .venv/bin/python -m pytest tests/integration/test_matrix.py -s`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from moderation.access import revoke_key
from moderation.access.keys import create_key
from moderation.audit import checkpoint as cps
from moderation.db.tables import api_keys, audit_events
from moderation.settings import Settings
from tests.support.banks import bank_changes_applied
from tests.support.http import auth, submit, wait_final
from tests.support.images import picture
from tests.support.matrix import (
    PUBLIC_DOCS,
    SPECS,
    Offence,
    Req,
    Spec,
    Tenant,
    World,
    code_of,
    error_shape_problem,
    insert_task,
    needed_role_sets,
    offence_table,
    pdq_csv,
    route_table,
    row_strings,
    tenant_rows,
    uncovered,
)

pytestmark = pytest.mark.services

METRICS_TOKEN = "matrix-metrics-token-" + secrets.token_hex(8)


@dataclass(frozen=True)
class Caller:
    name: str
    headers: dict[str, str]
    roles: frozenset[str] | None = None  # None: not a valid API key
    key_id: str | None = None


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    private, public, _ = cps.write_keypair(tmp_path_factory.mktemp("matrix-audit-keys"))
    return {"private": private, "public": public}


@pytest.fixture(scope="module")
def matrix_api(service_env: dict[str, str], signing: dict[str, Path]) -> Iterator[tuple[Any, Any, Any]]:
    """(TestClient, Context, app): rate limits off, /metrics behind a token, checkpoints verifiable."""
    from fastapi.testclient import TestClient

    from moderation.api.app import create_app
    from moderation.pipeline.context import Context

    settings = Settings(rate_limit=False, metrics_token=METRICS_TOKEN, audit_verify_key=signing["public"])
    own = Context.build(settings)
    app = create_app(settings, own)
    # A server error is an answer to judge (and report), not an exception that ends the matrix.
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c, own, app
    own.engine.dispose()


def _key_without_roles(conn: Any, tenant_id: str, label: str) -> str:
    """A key holding no role at all (create_key refuses one; a row edited by hand, or a role
    removed later, can still look like this): it must get 403 everywhere, not 500."""
    key = create_key(conn, tenant_id, ["submitter"], label=label)
    conn.execute(update(api_keys).where(api_keys.c.id == key.split("_", 2)[1]).values(roles=[]))
    return key


def _ok(r: Any, what: str) -> Any:
    assert 200 <= r.status_code < 300, f"{what}: {r.status_code} {r.text[:300]}"
    return r.json() if r.content else None


def _make_tenant(
    client: Any,
    engine: Any,
    tenant_id: str,
    seed: int,
    network: str,
    victim: bool,
) -> tuple[Tenant, list[str]]:
    """A tenant with keys for every caller, a bank with entries, submissions (not yet decided),
    renamed, with its own callback secret and receiver rules. Returns it and the ids of the
    submissions to wait for. A victim also gets what A will reuse as its own (see Tenant)."""
    keys: dict[str, str] = {}
    with engine.begin() as conn:
        for name, roles in needed_role_sets().items():
            label = f"{tenant_id}-key-{name}"
            keys[name] = (
                create_key(conn, tenant_id, sorted(roles), label=label)
                if roles
                else _key_without_roles(conn, tenant_id, label)
            )
        victim_key = create_key(conn, tenant_id, ["submitter"], label=f"{tenant_id}-key-victim")
    admin = auth(keys["admin"])
    _ok(client.patch("/v1/admin/tenant", headers=admin, json={"name": f"{tenant_id} display name"}), "rename")
    _ok(client.post("/v1/callbacks/secret", headers=admin), "secret")
    rules = {"allow_http": False, "private_networks": [network]}
    _ok(client.put("/v1/callbacks/receivers", headers=admin, json=rules), "receivers")
    bank = f"{tenant_id}-bank"
    body = {"name": bank, "kind": "bad", "category": None, "description": f"{tenant_id} bank description"}
    _ok(client.post("/v1/banks", headers=admin, json=body), "bank")
    _ok(client.post(f"/v1/banks/{bank}/hashes", headers=admin, files=pdq_csv(f"{tenant_id}-entry", 3)), "hashes")
    banked = [("files", ("banked.jpg", picture(seed + 1)))]
    _ok(client.post(f"/v1/banks/{bank}/images", headers=admin, files=banked, data={"label": f"{tenant_id}-img"}), "img")
    entries = _ok(client.get(f"/v1/banks/{bank}/entries", headers=admin), "entries")["entries"]
    pending = []
    for i in range(2):
        image = picture(seed + 10 + i)
        fields = {
            "policy": "hash-only",
            "external_id": f"{tenant_id}-ext-{i}",
            "idempotency_key": f"{tenant_id}-idem-{i}",
            "caption": f"{tenant_id} caption {i}",
            "uploader_id": f"{tenant_id}-uploader-{i}",
        }
        pending.append(submit(client, keys["submitter"], image, **fields)["id"])
    tenant = Tenant(
        id=tenant_id,
        keys=keys,
        key_ids={name: key.split("_")[1] for name, key in keys.items()},
        bank=bank,
        entry_ids=[int(e["id"]) for e in entries],
        sids=list(pending),
        victim_key_id=victim_key.split("_")[1],
        checkpoint_id=0,
    )
    if victim:
        # What A will reuse as its own: B's external id, idempotency key, image, bank names.
        tenant.claim_image = picture(seed + 20)
        tenant.claim_external_id = f"{tenant_id}-claim-ext"
        tenant.claim_idempotency_key = f"{tenant_id}-claim-idem"
        claim = submit(
            client,
            keys["submitter"],
            tenant.claim_image,
            policy="hash-only",
            external_id=tenant.claim_external_id,
            idempotency_key=tenant.claim_idempotency_key,
        )
        tenant.claim_sid = claim["id"]
        pending.append(claim["id"])
        for i, name in enumerate(needed_role_sets()):
            tenant.claim_banks[name] = f"{tenant_id}-claim-{i}"  # bank names are short
            _ok(
                client.post("/v1/banks", headers=admin, json={"name": tenant.claim_banks[name], "kind": "good"}),
                "claim",
            )
    return tenant, pending


def _checkpoint(engine: Any, tenant: Tenant, private_key: Path) -> None:
    with engine.begin() as conn:
        tenant.checkpoint_id = int(cps.create(conn, tenant.id, cps.load_signing_key(private_key)).id or 0)


@pytest.fixture(scope="module")
def world(matrix_api: tuple[Any, Any, Any], worker: Any, signing: dict[str, Path]) -> World:
    client, ctx, _ = matrix_api
    run = secrets.token_hex(4)
    b, b_pending = _make_tenant(client, ctx.engine, f"matrix-b-{run}", 7100, "10.123.231.0/24", victim=True)
    a, a_pending = _make_tenant(client, ctx.engine, f"matrix-a-{run}", 7200, "192.0.2.0/24", victim=False)
    # A holds its own copy of B's claim image (its hashes are then A's data too), and B's banked
    # image: B's bad bank must not block it (a bank is the tenant's own).
    bank_changes_applied(ctx, b.id)
    a_copy = submit(client, a.keys["submitter"], b.claim_image, policy="hash-only")["id"]
    a_banked = submit(client, a.keys["submitter"], picture(7100 + 1), policy="hash-only")["id"]
    for sid in b_pending:
        wait_final(client, b.keys["submitter"], sid)
    for sid in [*a_pending, a_copy]:
        wait_final(client, a.keys["submitter"], sid)
    banked = wait_final(client, a.keys["submitter"], a_banked)
    assert banked["decision"]["action"] == "allow", f"tenant B's bank decided A's submission: {banked}"
    with ctx.engine.begin() as conn:  # B's review tasks, which A must never reach
        b.task_ids = [insert_task(conn, b.id, b.sids[0]), insert_task(conn, b.id, b.sids[1], restricted=True)]
    _checkpoint(ctx.engine, b, signing["private"])
    _checkpoint(ctx.engine, a, signing["private"])
    with ctx.engine.begin() as conn:
        revoked = create_key(conn, a.id, ["submitter", "moderator", "auditor", "admin"], label=f"{a.id}-revoked")
        revoke_key(conn, revoked.split("_")[1], "matrix")
    a.keys["revoked"] = revoked
    return World(engine=ctx.engine, a=a, b=b, image=picture(7300))


def _callers(w: World) -> tuple[list[Caller], list[Caller]]:
    """(callers without a valid key, A's keys with their roles)."""
    sets = needed_role_sets()
    a, b = w.a, w.b
    bad = [
        Caller("no key", {}),
        Caller("empty bearer", {"Authorization": "Bearer "}),
        Caller("basic auth", {"Authorization": "Basic bWF0cml4OnBhc3N3b3Jk"}),
        Caller("not a key", {"Authorization": "Bearer not-a-key"}),
        Caller("A key id, wrong secret", auth(f"mk_{a.key_ids['admin']}_{secrets.token_urlsafe(24)}")),
        Caller("B key, one char off", auth(b.keys["admin"][:-1] + ("A" if b.keys["admin"][-1] != "A" else "B"))),
        Caller("revoked A key", auth(a.keys["revoked"])),
        Caller("metrics token", auth(METRICS_TOKEN)),
    ]
    good = [Caller(name, auth(a.keys[name]), roles, a.key_ids[name]) for name, roles in sets.items()]
    return bad, good


def _want(spec: Spec, caller: Caller, req: Req) -> tuple[str, int | None]:
    """(the error code, or "" for 2xx; the status, None for any 2xx)."""
    if spec.access == "public":
        return "", None
    if spec.access == "metrics":
        return ("", None) if caller.name == "metrics token" else ("UNAUTHENTICATED", 401)
    if caller.roles is None:
        return "UNAUTHENTICATED", 401
    if not caller.roles & spec.roles:
        return "FORBIDDEN", 403
    if req.expect == "not_found":
        return "NOT_FOUND", 404
    return "", None


def _max_audit_id(engine: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.max(audit_events.c.id))).scalar_one() or 0)


def _writes_by(engine: Any, key_id: str, after_id: int) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).where(audit_events.c.id > after_id, audit_events.c.actor == key_id)
            ).scalar_one()
        )


def test_every_route_is_in_the_matrix(matrix_api: tuple[Any, Any, Any]) -> None:
    """A route without an entry (a new one, say) fails here, naming it."""
    _, _, app = matrix_api
    problems = uncovered(app)
    assert not problems, "the tenancy and role matrix does not cover the route table:\n" + "\n".join(problems)


def test_tenancy_and_role_matrix(matrix_api: tuple[Any, Any, Any], world: World) -> None:
    client, ctx, app = matrix_api
    w = world
    routes, other_routes = route_table(app)
    offences: list[Offence] = [
        Offence(f"{m} {p}", "-", "-", "-", "-", "no matrix entry (see test_every_route_is_in_the_matrix)")
        for m, p in routes
        if (m, p) not in SPECS
    ]
    with ctx.engine.connect() as conn:
        b_before = tenant_rows(conn, w.b.id)
        a_strings = row_strings(tenant_rows(conn, w.a.id))
    # What A must never see: every string of B's rows, less what A holds too and what A reuses.
    # Text with spaces counts only when it names B (captions, descriptions: the setup puts B's id
    # in each); other text (decision reasons) is the deployment's vocabulary, not B's data.
    b_secrets = {
        s
        for s in (row_strings(b_before) | set(w.b.keys.values())) - a_strings - w.b.claims()
        if w.b.id in s or not any(c.isspace() for c in s)
    }
    assert w.b.id in b_secrets and w.b.sids[0] in b_secrets and w.b.claim_sid in b_secrets

    bad, good = _callers(w)
    requests = 0
    started = time.monotonic()

    def judge(route: str, caller: Caller, variant: str, req: Req, want: tuple[str, int | None], r: Any) -> None:
        code, status = want
        got = f"{r.status_code} {code_of(r)}".strip()

        def offend(problem: str, cross: bool = False) -> None:
            offences.append(Offence(route, caller.name, variant, req.summary(), got, problem, cross))

        if r.status_code >= 500:
            offend(f"server error: {r.text[:200]}")
        elif status is None and not 200 <= r.status_code < 300:
            offend(f"a valid request was refused: {r.text[:200]}", variant == "other")
        elif status is not None and (r.status_code != status or code_of(r) != code):
            # Naming B's resource got another answer than A's own or a missing one would: an oracle.
            offend(f"expected {status} {code}: {r.text[:200]}", variant == "other")
        if r.status_code >= 400:
            shape = error_shape_problem(r)
            if shape:
                offend(f"error shape: {shape}")
        elif req.check is not None and 200 <= r.status_code < 300 and status is None:
            problem = req.check(r.json())
            if problem:
                offend(problem, variant == "other")
        sent = req.sent_text()
        leaked = sorted(s for s in b_secrets if s in r.text and s not in sent)
        if leaked:
            offend(f"tenant B's data in the answer: {[s[:40] for s in leaked[:5]]}", True)

    for method, path in routes:
        spec = SPECS.get((method, path))
        if spec is None:
            continue
        route = f"{method} {path}"
        for caller in [*bad, *good]:
            w.caller = caller.name
            w.caller_roles = caller.roles or frozenset()
            variants = (
                [("own", spec.own)]
                if caller.roles is None
                else [
                    ("own", spec.own),
                    ("other", spec.other),
                    ("missing", spec.missing),
                ]
            )
            for variant, build in variants:
                for req in build(w):
                    want = _want(spec, caller, req)
                    before = _max_audit_id(ctx.engine) if caller.key_id else 0
                    r = req.send(client, caller.headers)
                    requests += 1
                    judge(route, caller, variant, req, want, r)
                    if caller.key_id and not 200 <= r.status_code < 300:
                        writes = _writes_by(ctx.engine, caller.key_id, before)
                        if writes:
                            offences.append(
                                Offence(
                                    route,
                                    caller.name,
                                    variant,
                                    req.summary(),
                                    str(r.status_code),
                                    f"a refused call wrote {writes} audit event(s)",
                                )
                            )

    no_key, admin = bad[0], next(c for c in good if c.name == "admin")
    # The framework's own routes (docs) are public and carry no tenant data.
    for path in other_routes:
        req = Req("GET", PUBLIC_DOCS.get(path, path))
        for caller in (no_key, admin):
            r = req.send(client, caller.headers)
            requests += 1
            judge(path, caller, "own", req, ("", None), r)
    # A /v1/ path that is no route: 401 without a key (admission runs first), 404 with one.
    nowhere = Req("GET", "/v1/no-such-route")
    for caller, want in ((no_key, ("UNAUTHENTICATED", 401)), (admin, ("NOT_FOUND", 404))):
        requests += 1
        judge("GET /v1/no-such-route", caller, "missing", nowhere, want, nowhere.send(client, caller.headers))

    # B, the victim, is exactly as it was: nothing A did reached its rows.
    with ctx.engine.connect() as conn:
        b_after = tenant_rows(conn, w.b.id)
    for table in sorted(set(b_before) | set(b_after)):
        if b_before.get(table) != b_after.get(table):
            offences.append(Offence(table, "(all of A's callers)", "other", "-", "-", "tenant B's rows changed", True))

    # One cross-tenant read per request, however many of its checks it failed.
    cross = len({(o.route, o.caller, o.variant, o.request) for o in offences if o.cross_tenant})
    five = sum(o.got.startswith("5") for o in offences)
    callers = len(bad) + len(good)
    summary = (
        f"tenancy matrix: {len(routes)} routes x {callers} callers ({len(good)} role sets of tenant A, "
        f"{len(bad)} without a valid key) x own/other-tenant/missing resources: {requests} requests in "
        f"{time.monotonic() - started:.1f} s; cross-tenant reads: {cross}; 5xx: {five}; offences: {len(offences)}"
    )
    print("\n" + summary)
    assert not offences, summary + "\n" + offence_table(offences)


def test_a_flood_of_unknown_keys_is_rate_limited(service_env: dict[str, str], keys: dict[str, str]) -> None:
    """With the default limits on: one address guessing keys gets 429 (Retry-After) once its
    burst is spent, and keys the API does not already know are then refused without a lookup;
    a valid key in use from the same address still gets through; /metrics is public
    when no token is configured."""
    from fastapi.testclient import TestClient

    from moderation.api.app import create_app
    from moderation.pipeline.context import Context

    settings = Settings(rate_limit=True, metrics_token=None)
    own = Context.build(settings)
    address = f"matrix-flood-{secrets.token_hex(4)}"  # its own buckets, whatever ran before
    burst = int(settings.rate_limit_auth_failures_burst)
    try:
        with TestClient(create_app(settings, own), client=(address, 50000)) as c:
            # a platform's key in use from this address (behind the same NAT as the guesser, say)
            assert c.get(f"/v1/submissions/{'0' * 32}", headers=auth(keys["submitter"])).status_code == 404
            answers = [c.get(f"/v1/submissions/{'0' * 32}", headers=auth(f"mk_0_guess{i}")) for i in range(burst + 15)]
            codes = [r.status_code for r in answers]
            assert codes[:burst] == [401] * burst and set(codes) <= {401, 429} and 429 in codes, codes
            limited = next(r for r in answers if r.status_code == 429)
            assert error_shape_problem(limited) is None and code_of(limited) == "RATE_LIMITED"
            assert int(limited.headers["Retry-After"]) >= 1
            unknown_here = c.get(f"/v1/submissions/{'0' * 32}", headers=auth(keys["auditor"]))
            assert unknown_here.status_code == 429, unknown_here.text  # not looked up while the address guesses
            valid = c.get(f"/v1/submissions/{'0' * 32}", headers=auth(keys["submitter"]))
            assert valid.status_code == 404 and code_of(valid) == "NOT_FOUND", valid.text
            assert c.get("/metrics").status_code == 200
            assert c.get("/healthz").status_code == 200
    finally:
        own.engine.dispose()
