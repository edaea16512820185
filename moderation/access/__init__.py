"""Who may call: API keys and their roles (`auth`), tenants and key creation (`keys`)."""

from moderation.access.auth import ROLES, KeyCache, Principal, digest
from moderation.access.keys import create_key, ensure_tenant

__all__ = [
    "ROLES",
    "KeyCache",
    "Principal",
    "create_key",
    "digest",
    "ensure_tenant",
]
