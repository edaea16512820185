"""The callback request on the wire: connect only to addresses the guard checked, keep the Host
header, TLS SNI and the certificate check on the receiver's real name, bound the whole exchange.

httpcore (httpx's engine) makes the request over `PinnedBackend`, a network backend whose
`connect_tcp` ignores DNS: it connects to the addresses `netguard.resolve` returned for the name,
and to nothing else. The URL keeps the real host, so httpcore sends it as SNI and checks the
certificate against it, exactly as for a normal request; the Host header is set from it too.
A DNS answer that changes after the check (rebinding) changes nothing: the name is never
resolved again. No proxy from the environment is used and redirects are never followed.

Every read and write is bounded by what is left of one deadline for the attempt, so a receiver
that drips its headers a byte at a time cannot hold a worker thread longer than that (a thread
pool has no task time limits).
"""

from __future__ import annotations

import base64
import functools
import ssl
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote

import httpcore

from moderation.callbacks.netguard import Destination, IPAddress

#: What a failed attempt raises, besides OSError: all worth another attempt later.
TRANSIENT: tuple[type[Exception], ...] = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    OSError,
)


class _DeadlineStream(httpcore.NetworkStream):
    """A stream whose every operation ends by the attempt's deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: float) -> None:
        self._inner = inner
        self._deadline = deadline

    def _left(self, timeout: float | None, exc: type[Exception]) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise exc("the callback attempt is over its deadline")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname, self._left(timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(inner, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class PinnedBackend(httpcore.NetworkBackend):
    """Connects `host:port` to the checked `addresses` only, in order, never resolving `host`."""

    def __init__(self, host: str, port: int, addresses: Sequence[IPAddress], deadline: float) -> None:
        self.host, self.port, self.addresses, self.deadline = host, port, list(addresses), deadline
        self._inner = httpcore.SyncBackend()
        self.connected: IPAddress | None = None  # the address the request went to

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        if (host, port) != (self.host, self.port) or not self.addresses:
            raise httpcore.ConnectError(f"no checked address for {host}:{port}")
        last: Exception | None = None
        for ip in self.addresses:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise httpcore.ConnectTimeout("the callback attempt is over its deadline")
            try:
                # A numeric address: getaddrinfo parses it locally, no DNS query is made.
                stream = self._inner.connect_tcp(
                    str(ip), port, left if timeout is None else min(timeout, left), local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
                continue
            self.connected = ip
            return _DeadlineStream(stream, self.deadline)
        assert last is not None
        raise last

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("callbacks never use Unix sockets")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


@functools.lru_cache(maxsize=4)
def tls_context(ca_bundle: str | None) -> ssl.SSLContext:
    """Certificate verification against `ca_bundle` (a PEM file), else certifi's roots (httpx's default)."""
    import certifi

    return ssl.create_default_context(cafile=ca_bundle or certifi.where())


def post(
    dest: Destination,
    addresses: Sequence[IPAddress],
    body: bytes,
    headers: Mapping[str, str],
    timeout_s: float,
    deadline_s: float,
    ca_bundle: str | None = None,
) -> tuple[int, IPAddress | None]:
    """POST `body` to `dest` over a connection to one of `addresses`. Returns (HTTP status, the
    address connected to). The receiver's body is never read.

    `timeout_s` bounds each phase (connect, each read or write), `deadline_s` the whole exchange.
    Raises one of TRANSIENT (network, TLS, timeouts, a broken answer).
    """
    deadline = time.monotonic() + deadline_s
    backend = PinnedBackend(dest.host, dest.port, addresses, deadline)
    wire = {
        "Host": dest.authority,
        "Content-Length": str(len(body)),
        **headers,
    }
    if dest.userinfo:  # credentials in the URL: HTTP Basic, as httpx sends them
        user, _, password = dest.userinfo.partition(":")
        token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode("ascii")
        wire["Authorization"] = f"Basic {token}"
    host = dest.host.encode("ascii")
    url = httpcore.URL(scheme=dest.scheme.encode(), host=host, port=dest.port, target=dest.target.encode("ascii"))
    timeouts = {"connect": timeout_s, "read": timeout_s, "write": timeout_s, "pool": timeout_s}
    with (
        httpcore.ConnectionPool(
            ssl_context=tls_context(ca_bundle), network_backend=backend, retries=0, max_connections=1
        ) as pool,
        pool.stream(
            "POST",
            url,
            headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in wire.items()],
            content=body,
            extensions={"timeout": timeouts},
        ) as response,
    ):
        return response.status, backend.connected
