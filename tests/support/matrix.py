"""The tenancy and role matrix (issue 10, proof suite): which roles may call each route of the
API, how to build a valid request for it on the caller's own tenant, and the same request naming
another tenant's resources (or resources that exist nowhere).

`SPECS` is keyed by the app's route table, (method, path template): `uncovered(app)` names every
route without an entry (and every entry without a route), so a route added later cannot escape
the matrix. The intended roles are written here, from the routers' docs, not read from the code
under test: the matrix checks that the app enforces exactly them.

`World` holds two tenants' real resources (A calls, B is the victim) and makes fresh resources of
A for the requests that consume one (revoking a key, deleting an entry). `tenant_rows` reads every
row of a tenant from every table that names one; the matrix mines B's strings from it (anything
of B's that must never appear in an answer to A) and snapshots it (B must be unchanged after).
"""

from __future__ import annotations

import itertools
import json
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from fastapi.routing import APIRoute
from sqlalchemy import Engine, select

from moderation.access import ROLES, create_key
from moderation.banks import admin as bank_admin
from moderation.db.tables import decisions, metadata, review_tasks, submissions, utcnow
from moderation.errors import CATALOGUE
from moderation.review import leases
from moderation.review.reviewer import REVIEW_ROLES, Reviewer

# Routes FastAPI adds itself (not APIRoutes): public documentation, no tenant data.
# Non-API routes: public documentation and static assets (no tenant data), each with a path to
# probe. The console's pages (/console/...) have their own session-based matrix (test_console.py).
PUBLIC_DOCS = {
    "/openapi.json": "/openapi.json",
    "/docs-assets": "/docs-assets/swagger-ui.css",
    "/console/static": "/console/static/console.css",
}
CONSOLE = "/console"

# Columns that change without anyone calling the API (written behind on use).
VOLATILE = frozenset({"last_used_at"})

_ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d")
MIN_TOKEN = 12  # shorter strings are vocabulary (statuses, policy ids), not a tenant's data


@dataclass
class Req:
    """One request, and what a caller allowed on the route must get for it."""

    method: str
    path: str
    params: dict[str, str] | None = None
    json: Any = None
    files: list[tuple[str, tuple[str, bytes]]] | None = None
    data: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    expect: Literal["ok", "not_found"] = "ok"
    check: Callable[[Any], str | None] | None = None  # a problem with a 2xx JSON body, or None
    about: str = ""  # what the request names, for the offence table

    def send(self, client: Any, headers: dict[str, str]) -> Any:
        return client.request(
            self.method,
            self.path,
            params=self.params,
            json=self.json,
            files=self.files,
            data=self.data,
            headers={**self.headers, **headers},
        )

    def sent_text(self) -> str:
        """Everything the caller put in the request (an answer may echo it back: not a leak)."""
        parts = [self.path, json.dumps(self.params), json.dumps(self.json), json.dumps(self.data)]
        parts += [f"{k}: {v}" for k, v in self.headers.items()]
        for _, (name, _content) in self.files or []:
            parts.append(name)
        return "\n".join(parts)

    def summary(self) -> str:
        query = "&".join(f"{k}={v}" for k, v in (self.params or {}).items())
        return f"{self.method} {self.path}{'?' + query if query else ''}" + (f" [{self.about}]" if self.about else "")


Builder = Callable[["World"], list[Req]]


def _none(_: World) -> list[Req]:
    return []


@dataclass(frozen=True)
class Spec:
    """How the matrix calls one route.

    access: `key` (an API key with one of `roles`), `public` (anyone), `metrics` (the metrics
    token when one is configured). `own`: valid requests on the caller's own tenant (2xx for an
    allowed role); `other`: requests naming tenant B's resources (each says what A must get);
    `missing`: requests naming what exists nowhere (404, the answer `other` must not differ from)."""

    access: Literal["key", "public", "metrics"]
    roles: frozenset[str]
    own: Builder
    other: Builder = _none
    missing: Builder = _none


@dataclass
class Tenant:
    id: str
    keys: dict[str, str]  # caller name -> API key
    key_ids: dict[str, str]
    bank: str
    entry_ids: list[int]
    sids: list[str]  # submissions made for reading
    victim_key_id: str  # a key of the tenant that only revoke/rotate requests name
    checkpoint_id: int
    # B only: identifiers A is meant to reuse as its own (names are per tenant): excluded from
    # what A must never see, since A then legitimately holds the same strings.
    claim_external_id: str = ""
    claim_idempotency_key: str = ""
    claim_sid: str = ""
    claim_image: bytes = b""
    claim_banks: dict[str, str] = field(default_factory=dict)  # A caller name -> B bank name
    task_ids: list[str] = field(default_factory=list)  # review tasks (one ordinary, one restricted)

    def claims(self) -> set[str]:
        return {self.claim_external_id, self.claim_idempotency_key, *self.claim_banks.values()} - {""}


@dataclass
class World:
    engine: Engine
    a: Tenant
    b: Tenant
    image: bytes  # a valid image, A's own
    caller: str = ""  # the caller name the matrix is building requests for
    caller_roles: frozenset[str] = frozenset()  # ... and its roles (empty: no valid key)
    _serial: Iterator[int] = field(default_factory=itertools.count)

    def fresh(self, what: str) -> str:
        return f"{self.a.id}-{what}-{next(self._serial)}"

    def fresh_key_id(self) -> str:
        """A new key of A (submitter) that a revoke or rotate request may consume."""
        with self.engine.begin() as conn:
            return create_key(conn, self.a.id, ["submitter"], label=self.fresh("victim")).split("_")[1]

    def fresh_entry_id(self) -> int:
        """A new entry in A's bank that a delete request may consume."""
        with self.engine.begin() as conn:
            entries = bank_admin.parse_hash_list(f"{secrets.token_hex(32)},{self.fresh('entry')}")
            return bank_admin.add_entries(conn, self.a.id, self.a.bank, entries, "matrix")[0]

    def fresh_task(self) -> str:
        """A new open review task of A that the caller can see (a restricted one for a caller
        that reviews only the restricted queue)."""
        restricted = "restricted_reviewer" in self.caller_roles and not {"moderator", "senior_moderator"} & (
            self.caller_roles
        )
        # Restricted tasks go on A's second submission: the first must stay readable to every role.
        with self.engine.begin() as conn:
            return insert_task(conn, self.a.id, self.a.sids[1 if restricted else 0], restricted)

    def fresh_claim(self) -> tuple[str, str]:
        """(task id, claim token) of a fresh task claimed by the caller (a dummy token for a
        caller that may not review: the request is refused before the token matters)."""
        task_id = self.fresh_task()
        if not set(REVIEW_ROLES) & self.caller_roles:
            return task_id, "no-claim-for-this-caller"
        reviewer = Reviewer(self.a.key_ids[self.caller], self.a.id, self.caller_roles)
        with self.engine.begin() as conn:
            claimed = leases.claim(conn, reviewer, task_id, utcnow(), 600)
        return task_id, str(claimed["claim"]["token"])

    def fresh_decided_sid(self) -> str:
        """A new decided submission of A (a copy of its first one) that an appeal may consume."""
        with self.engine.begin() as conn:
            row = conn.execute(select(submissions).where(submissions.c.id == self.a.sids[0])).one()._asdict()
            sid = secrets.token_hex(16)
            conn.execute(submissions.insert().values({**row, "id": sid, "external_id": None, "idempotency_key": None}))
            decision = conn.execute(select(decisions).where(decisions.c.submission_id == self.a.sids[0])).first()
            assert decision is not None
            values = {k: v for k, v in decision._asdict().items() if k != "id"}
            conn.execute(decisions.insert().values({**values, "submission_id": sid}))
        return sid


def insert_task(conn: Any, tenant_id: str, sid: str, restricted: bool = False) -> str:
    """An open review task on `sid`, as the pipeline opens them."""
    task_id = secrets.token_hex(16)
    now = utcnow()
    conn.execute(
        review_tasks.insert().values(
            id=task_id,
            submission_id=sid,
            tenant_id=tenant_id,
            dedupe_key=f"matrix:{task_id}",
            kind="review",
            queue="restricted" if restricted else "default",
            reason="threshold",
            status="open",
            priority=5,
            restricted=restricted,
            graphic=False,
            golden=False,
            breached=False,
            created_at=now,
            due_at=now + timedelta(days=1),
        )
    )
    return task_id


MISSING_SID = "0" * 32
MISSING_KEY_ID = "000000000000"
MISSING_BANK = "matrix-no-such-bank"
MISSING_ENTRY = 2**62


def pdq_csv(label: str, rows: int = 1) -> list[tuple[str, tuple[str, bytes]]]:
    text = "pdq,label\n" + "".join(f"{secrets.token_hex(32)},{label}-{i}\n" for i in range(rows))
    return [("file", ("hashes.csv", text.encode()))]


def _no_rows_of_b(key: str) -> Callable[[Any], str | None]:
    def check(body: Any) -> str | None:
        rows = body.get(key) if isinstance(body, dict) else None
        return None if rows == [] else f"expected no {key}, got {str(rows)[:200]}"

    return check


def _is_tenant(tenant_id: str) -> Callable[[Any], str | None]:
    def check(body: Any) -> str | None:
        return None if isinstance(body, dict) and body.get("id") == tenant_id else f"not tenant {tenant_id}"

    return check


def _sid_not(sid: str) -> Callable[[Any], str | None]:
    def check(body: Any) -> str | None:
        got = body.get("id") if isinstance(body, dict) else None
        if got == sid:
            return f"answered with the other tenant's submission {sid}"
        return None if isinstance(got, str) else "no id in the answer"

    return check


def _submit(w: World, **data: str) -> Req:
    return Req("POST", "/v1/submissions", files=[("file", ("x.jpg", w.image))], data={"policy": "hash-only", **data})


def _submit_other(w: World) -> list[Req]:
    """B's external id, Idempotency-Key and image: a new submission of A, never B's."""
    b = w.b
    return [
        Req(
            "POST",
            "/v1/submissions",
            files=[("file", ("x.jpg", b.claim_image))],
            data={"policy": "hash-only", "external_id": b.claim_external_id},
            headers={"Idempotency-Key": b.claim_idempotency_key},
            check=_sid_not(b.claim_sid),
            about="B's external_id + Idempotency-Key + image",
        )
    ]


def _sub(sid: str, expect: Literal["ok", "not_found"], about: str) -> Req:
    return Req("GET", f"/v1/submissions/{sid}", expect=expect, about=about)


def _bank_images(name: str, expect: Literal["ok", "not_found"], w: World, about: str) -> Req:
    return Req(
        "POST",
        f"/v1/banks/{name}/images",
        files=[("files", ("banked.jpg", w.image))],
        data={"label": w.fresh("image")},
        expect=expect,
        about=about,
    )


def _delete_entry(bank: str, entry: int, expect: Literal["ok", "not_found"], about: str) -> Req:
    return Req("DELETE", f"/v1/banks/{bank}/entries/{entry}", expect=expect, about=about)


ADMIN = frozenset({"admin"})
AUDITOR = frozenset({"auditor"})
REVIEWERS = frozenset(REVIEW_ROLES)
MISSING_TASK = "f" * 32


def _golden(sid: str, expect: Literal["ok", "not_found"] = "ok") -> Req:
    return Req("POST", "/v1/review/golden", json={"submission_id": sid, "expected_action": "block"}, expect=expect)


def _task_spec(method: str, suffix: str, **kw: Any) -> Spec:
    """A review-task route: own: a fresh task of A (claimed by the caller when the route needs a claim); other: B's
    tasks; the same request shape for each."""

    def own(w: World) -> list[Req]:
        if "claim_token" in kw:
            task_id, token = w.fresh_claim()
            body = {**kw, "claim_token": token}
            return [Req(method, f"/v1/review/tasks/{task_id}{suffix}", json=body, about="A's task, claimed")]
        if kw.get("variant") == "original":
            task_id, _ = w.fresh_claim()
            return [Req(method, f"/v1/review/tasks/{task_id}{suffix}", params=kw, about="A's task, claimed")]
        return [Req(method, f"/v1/review/tasks/{w.fresh_task()}{suffix}", params=kw or None, about="A's task")]

    def other(w: World) -> list[Req]:
        body = {**kw, "claim_token": "b-does-not-matter"} if "claim_token" in kw else None
        params = None if "claim_token" in kw else (kw or None)
        return [
            Req(method, f"/v1/review/tasks/{t}{suffix}", json=body, params=params, expect="not_found", about="B's task")
            for t in w.b.task_ids
        ]

    def missing(w: World) -> list[Req]:
        body = {**kw, "claim_token": "nothing"} if "claim_token" in kw else None
        params = None if "claim_token" in kw else (kw or None)
        return [Req(method, f"/v1/review/tasks/{MISSING_TASK}{suffix}", json=body, params=params, expect="not_found")]

    return Spec("key", REVIEWERS, own=own, other=other, missing=missing)


NOBODY: frozenset[str] = frozenset()

SPECS: dict[tuple[str, str], Spec] = {
    # ---------------------------------------------------------------- probes and docs
    ("GET", "/docs"): Spec("public", NOBODY, lambda w: [Req("GET", "/docs")]),
    ("GET", "/healthz"): Spec("public", NOBODY, lambda w: [Req("GET", "/healthz")]),
    ("GET", "/readyz"): Spec("public", NOBODY, lambda w: [Req("GET", "/readyz")]),
    ("GET", "/metrics"): Spec("metrics", NOBODY, lambda w: [Req("GET", "/metrics")]),
    # ---------------------------------------------------------------- submissions
    ("POST", "/v1/submissions"): Spec(
        "key",
        frozenset({"submitter", "admin"}),
        own=lambda w: [_submit(w, external_id=w.fresh("ext"))],
        other=_submit_other,
    ),
    ("GET", "/v1/submissions/{submission_id}"): Spec(
        "key",
        frozenset(ROLES),
        own=lambda w: [_sub(w.a.sids[0], "ok", "A's submission")],
        other=lambda w: [_sub(sid, "not_found", "B's submission") for sid in (*w.b.sids, w.b.claim_sid)],
        missing=lambda w: [_sub(MISSING_SID, "not_found", "no such id"), _sub("nope", "not_found", "malformed id")],
    ),
    # ---------------------------------------------------------------- audit
    ("GET", "/v1/audit/events"): Spec(
        "key",
        AUDITOR,
        own=lambda w: [Req("GET", "/v1/audit/events", params={"limit": "1000"})],
        other=lambda w: [
            Req(
                "GET",
                "/v1/audit/events",
                params={"submission_id": sid, "limit": "1000"},
                check=_no_rows_of_b("events"),
                about="filtered on B's submission",
            )
            for sid in w.b.sids
        ],
    ),
    ("GET", "/v1/audit/verify"): Spec(
        "key",
        AUDITOR,
        own=lambda w: [
            Req("GET", "/v1/audit/verify"),
            Req("GET", "/v1/audit/verify", params={"checkpoint": str(w.a.checkpoint_id)}, about="A's checkpoint"),
        ],
        other=lambda w: [
            Req(
                "GET",
                "/v1/audit/verify",
                params={"checkpoint": str(w.b.checkpoint_id)},
                expect="not_found",
                about="B's checkpoint",
            )
        ],
        missing=lambda w: [
            Req(
                "GET", "/v1/audit/verify", params={"checkpoint": "987654321987"}, expect="not_found", about="no such id"
            )
        ],
    ),
    ("GET", "/v1/audit/decisions"): Spec(
        "key",
        AUDITOR,
        own=lambda w: [Req("GET", "/v1/audit/decisions", params={"limit": "1000"})],
        other=lambda w: [
            Req(
                "GET",
                "/v1/audit/decisions",
                params={"limit": "1000", "reviewer": w.b.key_ids["moderator"]},
                check=_no_rows_of_b("decisions"),
            )
        ],
    ),
    ("GET", "/v1/audit/submissions/{submission_id}/timeline"): Spec(
        "key",
        AUDITOR,
        own=lambda w: [Req("GET", f"/v1/audit/submissions/{w.a.sids[0]}/timeline")],
        other=lambda w: [
            Req("GET", f"/v1/audit/submissions/{sid}/timeline", expect="not_found", about="B's submission")
            for sid in w.b.sids
        ],
        missing=lambda w: [
            Req("GET", f"/v1/audit/submissions/{MISSING_SID}/timeline", expect="not_found"),
            Req("GET", "/v1/audit/submissions/nope/timeline", expect="not_found", about="malformed id"),
        ],
    ),
    ("GET", "/v1/audit/export"): Spec(
        "key",
        AUDITOR,
        own=lambda w: [Req("GET", "/v1/audit/export", params={"format": fmt}) for fmt in ("csv", "jsonl", "dsa")],
    ),
    # ---------------------------------------------------------------- callbacks
    ("POST", "/v1/callbacks/secret"): Spec("key", ADMIN, own=lambda w: [Req("POST", "/v1/callbacks/secret")]),
    ("GET", "/v1/callbacks/receivers"): Spec("key", ADMIN, own=lambda w: [Req("GET", "/v1/callbacks/receivers")]),
    ("PUT", "/v1/callbacks/receivers"): Spec(
        "key",
        ADMIN,
        own=lambda w: [
            Req("PUT", "/v1/callbacks/receivers", json={"allow_http": False, "private_networks": ["192.0.2.0/24"]})
        ],
    ),
    # ---------------------------------------------------------------- banks
    ("POST", "/v1/banks"): Spec(
        "key",
        ADMIN,
        own=lambda w: [Req("POST", "/v1/banks", json={"name": w.fresh("bank"), "kind": "bad"})],
        # Bank names are per tenant: B's name is free in A (a 409 would tell A that B has it).
        other=lambda w: [
            Req("POST", "/v1/banks", json={"name": w.b.claim_banks[w.caller], "kind": "bad"}, about="B's bank name")
        ],
    ),
    ("GET", "/v1/banks"): Spec("key", ADMIN, own=lambda w: [Req("GET", "/v1/banks")]),
    ("POST", "/v1/banks/{name}/images"): Spec(
        "key",
        ADMIN,
        own=lambda w: [_bank_images(w.a.bank, "ok", w, "A's bank")],
        other=lambda w: [_bank_images(w.b.bank, "not_found", w, "B's bank")],
        missing=lambda w: [_bank_images(MISSING_BANK, "not_found", w, "no such bank")],
    ),
    ("POST", "/v1/banks/{name}/hashes"): Spec(
        "key",
        ADMIN,
        own=lambda w: [Req("POST", f"/v1/banks/{w.a.bank}/hashes", files=pdq_csv(w.fresh("pdq")))],
        other=lambda w: [
            Req(
                "POST",
                f"/v1/banks/{w.b.bank}/hashes",
                files=pdq_csv(w.fresh("pdq")),
                expect="not_found",
                about="B's bank",
            )
        ],
        missing=lambda w: [
            Req("POST", f"/v1/banks/{MISSING_BANK}/hashes", files=pdq_csv(w.fresh("pdq")), expect="not_found")
        ],
    ),
    ("GET", "/v1/banks/{name}/entries"): Spec(
        "key",
        ADMIN,
        own=lambda w: [Req("GET", f"/v1/banks/{w.a.bank}/entries", params={"limit": "1000"})],
        other=lambda w: [Req("GET", f"/v1/banks/{w.b.bank}/entries", expect="not_found", about="B's bank")],
        missing=lambda w: [Req("GET", f"/v1/banks/{MISSING_BANK}/entries", expect="not_found")],
    ),
    ("DELETE", "/v1/banks/{name}/entries/{entry_id}"): Spec(
        "key",
        ADMIN,
        own=lambda w: [_delete_entry(w.a.bank, w.fresh_entry_id(), "ok", "a fresh entry of A's bank")],
        other=lambda w: [
            _delete_entry(w.b.bank, w.b.entry_ids[0], "not_found", "B's bank, B's entry"),
            _delete_entry(w.a.bank, w.b.entry_ids[0], "not_found", "A's bank, B's entry"),
            _delete_entry(w.b.bank, w.a.entry_ids[0], "not_found", "B's bank, A's entry"),
        ],
        missing=lambda w: [_delete_entry(w.a.bank, MISSING_ENTRY, "not_found", "no such entry")],
    ),
    # ---------------------------------------------------------------- review and appeals
    ("GET", "/v1/review/tasks"): Spec(
        "key",
        REVIEWERS,
        own=lambda w: [Req("GET", "/v1/review/tasks", params={"limit": "500"})],
        other=lambda w: [
            Req("GET", "/v1/review/tasks", params={"queue": q, "limit": "500"}, check=_no_rows_of_b("tasks"))
            for q in ("default", "restricted")
        ],
    ),
    ("GET", "/v1/review/queues"): Spec("key", REVIEWERS, own=lambda w: [Req("GET", "/v1/review/queues")]),
    ("POST", "/v1/review/next"): Spec(
        "key", REVIEWERS, own=lambda w: [Req("POST", "/v1/review/next", about=f"A's queue ({w.fresh_task()})")]
    ),
    ("POST", "/v1/review/tasks/{task_id}/claim"): _task_spec("POST", "/claim"),
    ("POST", "/v1/review/tasks/{task_id}/release"): _task_spec("POST", "/release", claim_token=""),
    ("POST", "/v1/review/tasks/{task_id}/heartbeat"): _task_spec("POST", "/heartbeat", claim_token=""),
    ("GET", "/v1/review/tasks/{task_id}"): _task_spec("GET", ""),
    ("GET", "/v1/review/tasks/{task_id}/image"): _task_spec("GET", "/image"),
    ("POST", "/v1/review/tasks/{task_id}/decision"): _task_spec(
        "POST", "/decision", claim_token="", action="allow", reason="matrix"
    ),
    ("POST", "/v1/review/golden"): Spec(
        "key",
        ADMIN,
        own=lambda w: [
            Req("POST", "/v1/review/golden", json={"submission_id": w.a.sids[0], "expected_action": "block"})
        ],
        other=lambda w: [
            Req(
                "POST",
                "/v1/review/golden",
                json={"submission_id": sid, "expected_action": "block"},
                expect="not_found",
                about="B's submission",
            )
            for sid in w.b.sids
        ],
        missing=lambda w: [
            Req(
                "POST",
                "/v1/review/golden",
                json={"submission_id": MISSING_SID, "expected_action": "allow"},
                expect="not_found",
            )
        ],
    ),
    ("GET", "/v1/review/golden/agreement"): Spec(
        "key", ADMIN | AUDITOR, own=lambda w: [Req("GET", "/v1/review/golden/agreement")]
    ),
    ("POST", "/v1/submissions/{submission_id}/appeals"): Spec(
        "key",
        frozenset({"submitter"}),
        own=lambda w: [
            Req("POST", f"/v1/submissions/{w.fresh_decided_sid()}/appeals", json={"statement": w.fresh("appeal")})
        ],
        other=lambda w: [
            Req("POST", f"/v1/submissions/{sid}/appeals", json={"statement": "x"}, expect="not_found", about="B's")
            for sid in w.b.sids
        ],
        missing=lambda w: [
            Req("POST", f"/v1/submissions/{MISSING_SID}/appeals", json={"statement": "x"}, expect="not_found")
        ],
    ),
    ("GET", "/v1/submissions/{submission_id}/appeals"): Spec(
        "key",
        frozenset(ROLES),
        own=lambda w: [Req("GET", f"/v1/submissions/{w.a.sids[0]}/appeals")],
        other=lambda w: [
            Req("GET", f"/v1/submissions/{sid}/appeals", expect="not_found", about="B's") for sid in w.b.sids
        ],
        missing=lambda w: [Req("GET", f"/v1/submissions/{MISSING_SID}/appeals", expect="not_found")],
    ),
    # ---------------------------------------------------------------- tenant administration
    ("GET", "/v1/admin/keys"): Spec("key", ADMIN, own=lambda w: [Req("GET", "/v1/admin/keys")]),
    ("POST", "/v1/admin/keys"): Spec(
        "key",
        ADMIN,
        own=lambda w: [Req("POST", "/v1/admin/keys", json={"roles": ["submitter"], "label": w.fresh("made")})],
    ),
    ("POST", "/v1/admin/keys/{key_id}/revoke"): Spec(
        "key",
        ADMIN,
        own=lambda w: [Req("POST", f"/v1/admin/keys/{w.fresh_key_id()}/revoke", about="a fresh key of A")],
        other=lambda w: [
            Req("POST", f"/v1/admin/keys/{w.b.victim_key_id}/revoke", expect="not_found", about="B's key"),
            Req("POST", f"/v1/admin/keys/{w.b.key_ids['admin']}/revoke", expect="not_found", about="B's admin key"),
        ],
        missing=lambda w: [Req("POST", f"/v1/admin/keys/{MISSING_KEY_ID}/revoke", expect="not_found")],
    ),
    ("POST", "/v1/admin/keys/{key_id}/rotate"): Spec(
        "key",
        ADMIN,
        own=lambda w: [
            Req("POST", f"/v1/admin/keys/{w.fresh_key_id()}/rotate", json={"grace_s": 0}, about="a fresh key of A")
        ],
        other=lambda w: [
            Req(
                "POST",
                f"/v1/admin/keys/{w.b.victim_key_id}/rotate",
                json={"grace_s": 60},
                expect="not_found",
                about="B's key",
            )
        ],
        missing=lambda w: [Req("POST", f"/v1/admin/keys/{MISSING_KEY_ID}/rotate", json={}, expect="not_found")],
    ),
    ("GET", "/v1/admin/tenant"): Spec(
        "key",
        ADMIN,
        own=lambda w: [Req("GET", "/v1/admin/tenant", check=_is_tenant(w.a.id))],
    ),
    ("PATCH", "/v1/admin/tenant"): Spec(
        "key",
        ADMIN,
        own=lambda w: [Req("PATCH", "/v1/admin/tenant", json={"name": f"{w.a.id} renamed"})],
    ),
}


def _flat_routes(app: Any) -> Iterator[tuple[Any, str, set[str]]]:
    """(route, full path, methods) of every route, through included routers: recent FastAPI keeps
    an included router as one lazy entry of `app.routes`; older versions copied its routes in."""
    try:
        from fastapi.routing import iter_route_contexts  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        for route in app.routes:
            yield route, getattr(route, "path", repr(route)), set(getattr(route, "methods", None) or ())
        return
    for rc in iter_route_contexts(app.routes):
        yield rc.original_route, rc.path or repr(rc.original_route), set(rc.methods or ())


def route_table(app: Any) -> tuple[list[tuple[str, str]], list[str]]:
    """The app's API routes as (method, path template), and the paths of its other routes."""
    api: list[tuple[str, str]] = []
    other: list[str] = []
    for route, path, methods in _flat_routes(app):
        if path == CONSOLE or (path.startswith(CONSOLE + "/") and not path.startswith(CONSOLE + "/static")):
            continue
        if isinstance(route, APIRoute):
            api += [(m, path) for m in sorted(methods) if m != "HEAD"]
        else:
            other.append(path)
    return sorted(api), other


def uncovered(app: Any) -> list[str]:
    """Why the matrix does not cover the app's route table exactly (empty: it does)."""
    api, other = route_table(app)
    problems = [
        f"{m} {p}: no entry in SPECS (tests/support/matrix.py) saying which roles may call it and how "
        "to build a valid request for it on the caller's own tenant and on another tenant's resources"
        for m, p in api
        if (m, p) not in SPECS
    ]
    problems += [f"{m} {p}: in SPECS but no longer a route of the app" for m, p in SPECS if (m, p) not in api]
    problems += [
        f"{p}: a non-API route the matrix does not know (public docs are {sorted(PUBLIC_DOCS)})"
        for p in other
        if p not in PUBLIC_DOCS
    ]
    return problems


def needed_role_sets() -> dict[str, frozenset[str]]:
    """The keys the matrix calls with: each role alone, all roles, no role, and for each route
    every role except the ones it allows ("a key with no role it needs")."""
    sets: dict[str, frozenset[str]] = {r: frozenset({r}) for r in ROLES}
    sets["all-roles"] = frozenset(ROLES)
    sets["no-role"] = frozenset()
    for spec in SPECS.values():
        rest = frozenset(ROLES) - spec.roles
        if spec.access == "key" and len(rest) > 1 and rest not in sets.values():
            sets["not-" + "-".join(sorted(spec.roles))] = rest
    return sets


# ---------------------------------------------------------------- a tenant's rows


def tenant_rows(conn: Any, tenant_id: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of the tenant, from every table that names a tenant (or one of its submissions)."""
    out: dict[str, list[dict[str, Any]]] = {}
    its_submissions = select(submissions.c.id).where(submissions.c.tenant_id == tenant_id)
    for table in metadata.sorted_tables:
        c = table.c
        if "tenant_id" in c:
            where = c.tenant_id == tenant_id
        elif table.name == "tenants":
            where = c.id == tenant_id
        elif "submission_id" in c:
            where = c.submission_id.in_(its_submissions)
        else:
            continue
        rows = [
            {k: v for k, v in r._mapping.items() if k not in VOLATILE}
            for r in conn.execute(select(table).where(where).order_by(*table.primary_key.columns))
        ]
        out[table.name] = rows
    return out


def strings(value: Any, out: set[str]) -> set[str]:
    """The strings in a row value worth looking for in an answer (JSON text is looked into)."""
    if isinstance(value, dict):
        for v in value.values():
            strings(v, out)
    elif isinstance(value, list | tuple):
        for v in value:
            strings(v, out)
    elif isinstance(value, str):
        if value[:1] in "{[":
            try:
                return strings(json.loads(value), out)
            except ValueError:
                pass
        if len(value) >= MIN_TOKEN and not _ISO_TIME.match(value):
            out.add(value)
    return out


def row_strings(rows: dict[str, list[dict[str, Any]]]) -> set[str]:
    out: set[str] = set()
    for table_rows in rows.values():
        for row in table_rows:
            strings(row, out)
    return out


# ---------------------------------------------------------------- judging answers


def error_shape_problem(response: Any) -> str | None:
    """What is wrong with an error answer's shape, or None: `{"error": {"code", "message"}}`
    (and `details`), a catalogued code, the code's status."""
    try:
        body = response.json()
    except ValueError:
        return f"not JSON: {response.text[:120]!r}"
    if not isinstance(body, dict) or set(body) != {"error"} or not isinstance(body["error"], dict):
        return f"not {{'error': {{...}}}}: {str(body)[:160]}"
    err = body["error"]
    if not {"code", "message"} <= set(err) <= {"code", "message", "details"}:
        return f"error keys {sorted(err)}"
    if not isinstance(err["message"], str) or err.get("code") not in CATALOGUE:
        return f"code {err.get('code')!r} not in the catalogue"
    if CATALOGUE[err["code"]][0] != response.status_code:
        return f"code {err['code']} with status {response.status_code}"
    return None


def code_of(response: Any) -> str:
    try:
        body = response.json()
        return str(body["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return ""


@dataclass(frozen=True)
class Offence:
    route: str
    caller: str
    variant: str
    request: str
    got: str
    problem: str
    cross_tenant: bool = False


def offence_table(offences: list[Offence]) -> str:
    head = ("route", "caller", "variant", "request", "answer", "problem")
    rows = [head] + [(o.route, o.caller, o.variant, o.request, o.got, o.problem) for o in offences]
    widths = [min(60, max(len(r[i]) for r in rows)) for i in range(len(head) - 1)]
    lines = []
    for r in rows:
        cells = [r[i][:60].ljust(widths[i]) for i in range(len(head) - 1)]
        lines.append(" | ".join([*cells, r[-1]]))
    return "\n".join(lines)
