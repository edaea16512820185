"""Who may call: API keys and their roles (`auth`: the per-process key cache), key creation,
listing, revocation and rotation (`keys`), tenants and their allowed policies (`tenants`), the
access epoch that carries revocations to every process (`epoch`), and keys' last use (`usage`)."""

from moderation.access.auth import ROLES, KeyCache, Principal, TenantAccess, digest
from moderation.access.keys import create_key, ensure_tenant, list_keys, revoke_key, rotate_key
from moderation.access.tenants import create_tenant, get_tenant, list_tenants, update_tenant

__all__ = [
    "ROLES",
    "KeyCache",
    "Principal",
    "TenantAccess",
    "create_key",
    "create_tenant",
    "digest",
    "ensure_tenant",
    "get_tenant",
    "list_keys",
    "list_tenants",
    "revoke_key",
    "rotate_key",
    "update_tenant",
]
