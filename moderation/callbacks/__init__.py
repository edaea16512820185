"""Webhook callbacks to the platform: the transactional outbox and its deliveries (`outbox`),
signatures and per-tenant secrets (`signing`), where a callback may go (`netguard`: the URL's
canonical form, the SSRF guard; `receivers`: each tenant's rules), and the pinned request on the
wire (`transport`)."""

from moderation.callbacks.netguard import (
    Destination,
    DestinationRefused,
    ReceiverRules,
    address_allowed,
    check_url,
    parse_destination,
    resolve,
)
from moderation.callbacks.outbox import CallbackFailed, attempt_limit_s, backoff, deliver, enqueue, overdue
from moderation.callbacks.receivers import receiver_rules, set_receiver_rules
from moderation.callbacks.signing import new_secret, rotate_secret, sign, signing_secrets

__all__ = [
    "CallbackFailed",
    "Destination",
    "DestinationRefused",
    "ReceiverRules",
    "address_allowed",
    "attempt_limit_s",
    "backoff",
    "check_url",
    "deliver",
    "enqueue",
    "new_secret",
    "overdue",
    "parse_destination",
    "receiver_rules",
    "resolve",
    "rotate_secret",
    "set_receiver_rules",
    "sign",
    "signing_secrets",
]
