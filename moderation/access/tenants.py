"""Tenants: create, list, read and update one, with the policies its submissions may name.

A tenant row is created through `keys.ensure_tenant` (which also gives it what every tenant
starts with); this module sets its name and policies, audits the change (`tenant_created`,
`tenant_updated`) and bumps the access epoch so that every process applies new policy settings
within `key_revocation_poll_s`.

Policy allow-list (`allowed_policies`): a list of policy ids, or NULL for every policy the
deployment ships (what tenants made before allow-lists had, and what `keys create` still gives
the tenants it creates). The tenant's effective default (its `default_policy`, else the
deployment's) is always allowed: naming the policy one would get anyway grants nothing.
`create_tenant` without an explicit list allows the default policy only.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

from sqlalchemy import Connection, select, update

from moderation import audit
from moderation.access import epoch
from moderation.access.keys import ensure_tenant
from moderation.db.tables import iso, tenants
from moderation.errors import ModerationError
from moderation.intake.text import check_text

TENANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()  # an update argument left as it is (None means "set to null")


def _view(row: Any) -> dict[str, Any]:
    """A tenant as listed (never its webhook secrets)."""
    return {
        "id": row.id,
        "name": row.name,
        "default_policy": row.default_policy,
        "allowed_policies": None if row.allowed_policies is None else list(row.allowed_policies),
        "created_at": iso(row.created_at),
    }


_COLUMNS = (tenants.c.id, tenants.c.name, tenants.c.default_policy, tenants.c.allowed_policies, tenants.c.created_at)


def list_tenants(conn: Connection) -> list[dict[str, Any]]:
    return [_view(r) for r in conn.execute(select(*_COLUMNS).order_by(tenants.c.id))]


def get_tenant(conn: Connection, tenant_id: str, *, lock: bool = False) -> dict[str, Any]:
    """Raises ModerationError NOT_FOUND."""
    query = select(*_COLUMNS).where(tenants.c.id == tenant_id)
    row = conn.execute(query.with_for_update() if lock else query).first() if TENANT_ID.fullmatch(tenant_id) else None
    if row is None:
        raise ModerationError("NOT_FOUND", f"No tenant {tenant_id[:64]!r}.")
    return _view(row)


def _check_name(name: str | None) -> None:
    if name is not None and not 0 < len(name) <= 200:
        raise ModerationError("INVALID_REQUEST", "name must have 1 to 200 characters.", field="name")
    check_text("name", name, 200)  # no NUL, controls or lone surrogates (the database refuses them)


def _check_default(default_policy: str | None, known: Collection[str]) -> None:
    if default_policy is not None and default_policy not in known:
        raise ModerationError(
            "UNKNOWN_POLICY",
            f"No policy {default_policy[:64]!r}; known: {', '.join(sorted(known))}.",
            field="default_policy",
        )


def _normalise_allowed(
    allowed: list[str] | None, default_policy: str | None, known: Collection[str]
) -> list[str] | None:
    """The list as stored: known ids, sorted, without repeats, holding the tenant's default."""
    if allowed is None:
        return None
    if not allowed:
        raise ModerationError(
            "INVALID_REQUEST",
            "allowed_policies must name at least one policy (null allows them all).",
            field="allowed_policies",
        )
    unknown = sorted({p for p in allowed if p not in known})
    if unknown:
        raise ModerationError(
            "UNKNOWN_POLICY",
            f"No policy {', '.join(repr(p[:64]) for p in unknown[:5])}; known: {', '.join(sorted(known))}.",
            field="allowed_policies",
        )
    return sorted({*allowed, *([default_policy] if default_policy else [])})


def create_tenant(
    conn: Connection,
    tenant_id: str,
    known_policies: Collection[str],
    deployment_default: str,
    *,
    name: str | None = None,
    default_policy: str | None = None,
    allowed_policies: list[str] | _Unset | None = UNSET,
    actor: str = "cli",
) -> dict[str, Any]:
    """Create a tenant. `allowed_policies` left out: the default policy only; None: all.

    Raises ModerationError INVALID_REQUEST (bad id or name, empty list), UNKNOWN_POLICY, CONFLICT
    (the tenant exists)."""
    if not TENANT_ID.fullmatch(tenant_id):
        raise ModerationError(
            "INVALID_REQUEST", "A tenant id is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit."
        )
    _check_name(name)
    _check_default(default_policy, known_policies)
    if isinstance(allowed_policies, _Unset):
        allowed_policies = [default_policy or deployment_default]
    allowed = _normalise_allowed(allowed_policies, default_policy, known_policies)
    if conn.execute(select(tenants.c.id).where(tenants.c.id == tenant_id)).first() is not None:
        raise ModerationError("CONFLICT", f"Tenant {tenant_id!r} exists already.")
    ensure_tenant(conn, tenant_id, name)
    conn.execute(
        update(tenants)
        .where(tenants.c.id == tenant_id)
        .values(name=name or tenant_id, default_policy=default_policy, allowed_policies=allowed)
    )
    epoch.bump(conn)  # a process may have cached "no such tenant"
    view = get_tenant(conn, tenant_id)
    facts = {k: view[k] for k in ("name", "default_policy", "allowed_policies")}
    audit.append(conn, tenant_id, [audit.Event("tenant_created", actor=actor, automated=False, facts=facts)])
    return view


def update_tenant(
    conn: Connection,
    tenant_id: str,
    known_policies: Collection[str],
    *,
    name: str | _Unset = UNSET,
    default_policy: str | _Unset | None = UNSET,
    allowed_policies: list[str] | _Unset | None = UNSET,
    actor: str = "cli",
) -> dict[str, Any]:
    """Change what is given (UNSET leaves a field; None sets the default to the deployment's, or
    the allow-list to all policies). Audited with the old and new values; no change, no event.

    Raises ModerationError NOT_FOUND, INVALID_REQUEST, UNKNOWN_POLICY."""
    before = get_tenant(conn, tenant_id, lock=True)
    after = dict(before)
    if not isinstance(name, _Unset):
        _check_name(name)
        after["name"] = name
    if not isinstance(default_policy, _Unset):
        _check_default(default_policy, known_policies)
        after["default_policy"] = default_policy
    if not isinstance(allowed_policies, _Unset):
        after["allowed_policies"] = allowed_policies
    if after["allowed_policies"] is not None:
        # A default that is not (or no longer) loaded may stay as it was; a new list must be known.
        known = (
            {*known_policies, *(before["allowed_policies"] or [])}
            if isinstance(allowed_policies, _Unset)
            else known_policies
        )
        after["allowed_policies"] = _normalise_allowed(after["allowed_policies"], after["default_policy"], known)
    fields = ("name", "default_policy", "allowed_policies")
    changes = {f: {"from": before[f], "to": after[f]} for f in fields if before[f] != after[f]}
    if not changes:
        return before
    conn.execute(update(tenants).where(tenants.c.id == tenant_id).values({f: after[f] for f in changes}))
    epoch.bump(conn)
    audit.append(
        conn, tenant_id, [audit.Event("tenant_updated", actor=actor, automated=False, facts={"changes": changes})]
    )
    return get_tenant(conn, tenant_id)
