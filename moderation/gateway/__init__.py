"""The queue-side ingest gateway: a door, like the API, for platforms that submit over a queue.

It consumes what platforms' broker accounts publish (RabbitMQ: the `moderation.ingest`
exchange, with the broker-validated `user_id`; Redis: each account's own list, HMAC-signed),
maps the account to its tenant, and hands each message to `pipeline.queue_message`. A message is
acknowledged only once its submission row is committed or its rejection recorded.
"""

from moderation.gateway.core import Gateway

__all__ = ["Gateway"]
