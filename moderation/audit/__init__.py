"""The audit log: the per-tenant hash chain (`chain`), signed checkpoints that anchor it outside
the database (`checkpoint`, imported on its own: it needs `cryptography`), the events of a
submission's life and its DSA statement of reasons (`events`), and queries over the log (`search`)."""

from moderation.audit.chain import (
    GENESIS,
    Event,
    VerifyResult,
    append,
    canonical,
    chain_hash,
    ensure_head,
    event_json,
    tenants,
    verify,
)

__all__ = [
    "GENESIS",
    "Event",
    "VerifyResult",
    "append",
    "canonical",
    "chain_hash",
    "ensure_head",
    "event_json",
    "tenants",
    "verify",
]
