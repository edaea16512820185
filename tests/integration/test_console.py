"""The moderator console's doors, through the app (TestClient): every console route without a
session goes to sign-in; sign-in takes only keys with a reviewing role and sets an HttpOnly,
SameSite=Strict cookie; every POST needs the session's CSRF token; a revoked key ends its
sessions; another tenant's task is a 404 page; pages carry a strict CSP. The browser flows are
in test_console_browser.py."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.routing import APIRoute

from moderation.access import revoke_key
from tests.support.matrix import _flat_routes
from tests.support.review import key_id, review_keys, seed_tasks

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def staff(ctx: Any) -> dict[str, str]:
    return review_keys(ctx, "consoleco")


def sign_in(client: Any, key: str) -> Any:
    client.cookies.clear()
    page = client.get("/console/sign-in")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert csrf, page.text[:500]
    return client.post(
        "/console/sign-in", data={"key": key, "csrf": csrf.group(1), "next": "/console"}, follow_redirects=False
    )


def csrf_of(page: Any) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert m, page.text[:500]
    return m.group(1)


def console_routes(app: Any) -> list[tuple[str, str]]:
    out = []
    for route, path, methods in _flat_routes(app):
        if isinstance(route, APIRoute) and path.startswith("/console"):
            out += [(m, path) for m in sorted(methods) if m != "HEAD"]
    return sorted(out)


def test_every_console_route_needs_a_session(client: Any) -> None:
    routes = console_routes(client.app)
    assert ("GET", "/console") in routes and ("POST", "/console/tasks/{task_id}/decision") in routes
    assert ("GET", "/console/audit/export/{name}") in routes
    client.cookies.clear()
    for method, path in routes:
        if path == "/console/sign-in":
            continue
        url = re.sub(r"\{[a-z_]+\}", "f" * 32, path.replace("{checkpoint_id}", "1"))
        r = client.request(method, url, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/console/sign-in"), (
            method,
            path,
            r.status_code,
        )
    # A forged cookie is no session either.
    client.cookies.set("moderation_session", "forged", path="/console")
    assert client.get("/console", follow_redirects=False).status_code == 303
    client.cookies.clear()


def test_sign_in_takes_only_reviewing_keys_and_sets_a_strict_cookie(client: Any, staff: dict[str, str]) -> None:
    r = sign_in(client, staff["submitter"])  # a platform's key: the playground, not the queues
    assert r.status_code == 303
    assert client.get("/console", follow_redirects=False).headers["location"] == "/console/playground"
    assert client.get(f"/console/tasks/{'f' * 32}", follow_redirects=False).status_code == 403
    r = sign_in(client, "mk_000000000000_not-a-key")
    assert r.status_code == 401 and "not valid" in r.text
    stale = client.post("/console/sign-in", data={"key": staff["mod1"], "csrf": "forged"}, follow_redirects=False)
    assert stale.status_code == 303 and "error=stale" in stale.headers["location"]
    r = sign_in(client, staff["mod1"])
    assert r.status_code == 303 and r.headers["location"] == "/console"
    cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith("moderation_session="))
    assert (
        "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and "Path=/console" in cookie
    )
    page = client.get("/console")
    assert page.status_code == 200 and "Start reviewing" in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-frame-options"] == "DENY"
    # The key itself is never in a page or a cookie.
    assert staff["mod1"] not in page.text and staff["mod1"] not in str(r.headers)
    # Redirect targets stay inside the console.
    client.cookies.clear()
    form = client.get("/console/sign-in", params={"next": "https://evil.example/"})
    assert 'value="/console"' in form.text


def test_posts_need_the_csrf_token_and_tenants_stay_apart(client: Any, staff: dict[str, str], ctx: Any) -> None:
    other = review_keys(ctx, "consoleco-other")
    (sid,) = seed_tasks(ctx, "consoleco-other", [{"spam": 0.75}])
    sign_in(client, staff["mod1"])
    page = client.get("/console")
    refused = client.post("/console/next", data={"csrf": "wrong"}, follow_redirects=False)
    assert refused.status_code == 403 and "CSRF" in refused.text
    # Another tenant's task: not found, by page, image and claim.
    tasks = [t for t in list_tasks_of(client, other["mod1"]) if t["submission_id"] == sid]
    assert tasks
    other_task = tasks[0]["id"]
    sign_in(client, staff["mod1"])
    page = client.get("/console")
    assert client.get(f"/console/tasks/{other_task}").status_code == 404
    assert client.get(f"/console/tasks/{other_task}/image").status_code == 404
    claim = client.post(f"/console/tasks/{other_task}/claim", data={"csrf": csrf_of(page)}, follow_redirects=False)
    assert claim.status_code == 404


def list_tasks_of(client: Any, key: str) -> list[dict[str, Any]]:
    r = client.get("/v1/review/tasks", headers={"Authorization": f"Bearer {key}"}, params={"limit": 500})
    assert r.status_code == 200, r.text
    return list(r.json()["tasks"])


def test_a_revoked_key_ends_its_sessions(client: Any, ctx: Any) -> None:
    keys = review_keys(ctx, "consoleco-revoked")
    assert sign_in(client, keys["mod1"]).status_code == 303
    assert client.get("/console", follow_redirects=False).status_code == 200
    with ctx.engine.begin() as conn:
        revoke_key(conn, key_id(keys["mod1"]), "test")
    assert client.get("/console", follow_redirects=False).status_code == 303
    client.cookies.clear()


def test_sign_out_ends_the_session(client: Any, staff: dict[str, str]) -> None:
    sign_in(client, staff["mod2"])
    page = client.get("/console")
    token = client.cookies.get("moderation_session")
    out = client.post("/console/sign-out", data={"csrf": csrf_of(page)}, follow_redirects=False)
    assert out.status_code == 303
    client.cookies.set("moderation_session", token, path="/console")
    assert client.get("/console", follow_redirects=False).status_code == 303  # the old cookie is dead
    client.cookies.clear()


def test_docs_are_served_without_a_cdn(client: Any) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets and all(a.startswith("/") for a in assets), assets
    for asset in assets:
        assert client.get(asset).status_code == 200, asset


def test_guessing_keys_at_the_sign_in_form_is_rate_limited(ctx: Any) -> None:
    from fastapi.testclient import TestClient

    from moderation.api.app import create_app
    from moderation.settings import Settings

    settings = Settings(rate_limit=True)
    burst = int(settings.rate_limit_auth_failures_burst)
    with TestClient(
        create_app(settings, ctx), client=(f"guesser-{key_id(review_keys(ctx, 'consoleco-guess')['mod1'])}", 1)
    ) as c:
        codes = [sign_in(c, f"mk_000000000000_guess{i}").status_code for i in range(burst + 5)]
    assert codes[:burst] == [401] * burst and codes[-1] == 429, codes


def test_playground_uploads_need_a_session_before_the_body_is_read(client: Any, staff: dict[str, str]) -> None:
    import io

    from PIL import Image

    client.cookies.clear()
    r = client.post(
        "/console/playground", files={"file": ("x.png", b"\x89PNG" + b"0" * 2_000_000)}, follow_redirects=False
    )
    assert r.status_code == 303 and r.headers["location"].startswith("/console/sign-in")
    client.cookies.set("moderation_session", "forged", path="/console")
    forged = client.post("/console/playground", files={"file": ("x.png", b"0")}, follow_redirects=False)
    assert forged.status_code == 303
    sign_in(client, staff["submitter"])
    page = client.get("/console/playground")
    big = io.BytesIO()  # over the 1 MiB of ordinary forms: the playground takes what the API takes
    Image.effect_noise((900, 900), 90).convert("RGB").save(big, "PNG")
    assert big.tell() > 1024 * 1024
    r = client.post(
        "/console/playground",
        data={"csrf": csrf_of(page), "policy": "hash-only"},
        files={"file": ("big.png", big.getvalue())},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"].startswith("/console/playground/")
    client.cookies.clear()
