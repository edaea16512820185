"""A tenant's receiver rules, stored on its row: may its callbacks use plain http, and which
private networks may its receivers live in (`tenants.callback_allow_http`,
`tenants.callback_private_networks`). Set by the tenant's admin (API) or the operator (CLI),
audited; read at submission and again at every delivery."""

from __future__ import annotations

from sqlalchemy import Connection, select, update

from moderation import audit
from moderation.callbacks.netguard import ReceiverRules
from moderation.db.tables import tenants
from moderation.errors import ModerationError


def receiver_rules(conn: Connection, tenant_id: str) -> ReceiverRules:
    """The tenant's rules (the strictest ones for an unknown tenant).

    A stored network that no longer parses is dropped rather than trusted (never widens access).
    """
    row = conn.execute(
        select(tenants.c.callback_allow_http, tenants.c.callback_private_networks).where(tenants.c.id == tenant_id)
    ).first()
    if row is None:
        return ReceiverRules()
    try:
        return ReceiverRules.parse(bool(row.callback_allow_http), row.callback_private_networks or ())
    except ValueError:
        return ReceiverRules(allow_http=bool(row.callback_allow_http))


def set_receiver_rules(conn: Connection, tenant_id: str, rules: ReceiverRules, actor: str) -> ReceiverRules:
    """Replace the tenant's rules, inside the caller's transaction; audited (before and after).

    Raises ModerationError NOT_FOUND when the tenant does not exist.
    """
    before = conn.execute(
        select(tenants.c.callback_allow_http, tenants.c.callback_private_networks)
        .where(tenants.c.id == tenant_id)
        .with_for_update()
    ).first()
    if before is None:
        raise ModerationError("NOT_FOUND", f"No tenant {tenant_id!r}.")
    after = rules.to_json()
    conn.execute(
        update(tenants)
        .where(tenants.c.id == tenant_id)
        .values(callback_allow_http=after["allow_http"], callback_private_networks=after["private_networks"])
    )
    previous = {"allow_http": bool(before.callback_allow_http), "private_networks": before.callback_private_networks}
    facts = {**after, "previous": previous}
    audit.append(
        conn, tenant_id, [audit.Event("callback_receivers_changed", actor=actor, automated=False, facts=facts)]
    )
    return rules
