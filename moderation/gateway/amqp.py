"""RabbitMQ: platforms publish to the `moderation.ingest` exchange; the broker checks that each
message's `user_id` property is the user that published it, and each platform user may only
write to that exchange (configure and read: nothing), so it can neither read other platforms'
messages nor pose as them nor reach any internal queue. The gateway consumes the bound queue on
a connection of its own."""

from __future__ import annotations

import logging
import subprocess
from typing import Any
from urllib.parse import unquote, urlsplit

from moderation.gateway.core import Gateway
from moderation.queue import INGEST_EXCHANGE, INGEST_ROUTING_KEY

log = logging.getLogger(__name__)

EXCHANGE = QUEUE = INGEST_EXCHANGE
ROUTING_KEY = INGEST_ROUTING_KEY


DEAD = f"{QUEUE}.dead"


def _entities(max_deliveries: int) -> tuple[Any, Any]:
    """The ingest queue and the queue of what it gave up on. A quorum queue counts deliveries:
    a message that was delivered `max_deliveries` times without being acknowledged (it crashed
    or hung every gateway that took it) goes to the dead queue instead of looping forever."""
    from kombu.entity import Exchange, Queue

    exchange = Exchange(EXCHANGE, type="direct", durable=True)
    dead_exchange = Exchange(DEAD, type="fanout", durable=True)
    queue = Queue(
        QUEUE,
        exchange=exchange,
        routing_key=ROUTING_KEY,
        durable=True,
        queue_arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": max_deliveries - 1,  # redeliveries after the first
            "x-dead-letter-exchange": DEAD,
        },
    )
    return queue, Queue(DEAD, exchange=dead_exchange, durable=True, queue_arguments={"x-queue-type": "quorum"})


def serve(gateway: Gateway, url: str, prefetch: int = 16, max_deliveries: int = 5) -> None:
    """Consume until `gateway.stop` is set; reconnects with backoff when the broker goes away."""
    from kombu.connection import Connection
    from kombu.messaging import Consumer

    delay = 1.0
    while not gateway.stop.is_set():
        try:
            with Connection(url, heartbeat=0) as conn:
                conn.ensure_connection(max_retries=1)
                channel = conn.channel()
                queue, dead = _entities(max_deliveries)
                queue(channel).declare()
                dead(channel).declare()
                channel.basic_qos(0, prefetch, False)

                def on_message(message: Any) -> None:
                    user = message.properties.get("user_id")
                    body = message.body if isinstance(message.body, bytes) else str(message.body).encode()
                    if _dead_lettered(message):
                        if gateway.give_up(user, body, f"delivered {max_deliveries} times without finishing"):
                            message.ack()
                    elif gateway.handle_until_done(user, body, "amqp") is not None:
                        message.ack()

                with Consumer(channel, [queue, dead], on_message=on_message, no_ack=False):
                    log.info("ingest gateway consuming %s", QUEUE)
                    delay = 1.0
                    while not gateway.stop.is_set():
                        try:
                            conn.drain_events(timeout=1)
                        except TimeoutError:
                            continue
        except Exception as exc:  # broker down or restarting: reconnect
            log.warning("ingest gateway lost RabbitMQ (%s); reconnecting in %.0f s", exc, delay)
            if gateway.stop.wait(delay):
                return
            delay = min(delay * 2, 30.0)


def _dead_lettered(message: Any) -> bool:
    return bool((message.headers or {}).get("x-death")) or message.delivery_info.get("exchange") == DEAD


def vhost_of(url: str) -> str:
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def provision(account: str, password: str, vhost: str, rabbitmqctl: str = "rabbitmqctl") -> None:
    """Make the platform's RabbitMQ user: it may publish to the ingest exchange of `vhost` and
    nothing else (no configure, no read). Needs rabbitmqctl on this host (run as the broker's admin)."""
    commands = [
        ["add_user", account, password],
        ["set_permissions", "-p", vhost, account, "^$", f"^{EXCHANGE.replace('.', '[.]')}$", "^$"],
    ]
    for args in commands:
        subprocess.run([rabbitmqctl, "-q", *args], check=True, capture_output=True, timeout=60)


def publisher_permissions() -> tuple[str, str, str]:
    """(configure, write, read) regexps of a platform user, for operators provisioning by hand."""
    return "^$", f"^{EXCHANGE.replace('.', '[.]')}$", "^$"
