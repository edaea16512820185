"""Webhook callbacks to the platform: the transactional outbox and its deliveries (`outbox`),
signatures and per-tenant secrets (`signing`), the SSRF guard on destinations (`netguard`)."""

from moderation.callbacks.netguard import DestinationRefused, check_destination, literal_host_refused
from moderation.callbacks.outbox import CallbackFailed, attempt_limit_s, backoff, deliver, enqueue, overdue
from moderation.callbacks.signing import rotate_secret, sign, signing_secrets

__all__ = [
    "CallbackFailed",
    "DestinationRefused",
    "attempt_limit_s",
    "backoff",
    "check_destination",
    "deliver",
    "enqueue",
    "literal_host_refused",
    "overdue",
    "rotate_secret",
    "sign",
    "signing_secrets",
]
