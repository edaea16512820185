"""The SSRF guard on callback URLs: addresses that are loopback, private, link-local, CGNAT,
metadata or multicast (and IPv6 forms embedding IPv4) are refused unless private receivers are allowed."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_V4_COMPAT = (ipaddress.ip_network("::/96"), ipaddress.ip_network("::ffff:0:0:0/96"))


class DestinationRefused(Exception):
    """The callback URL points somewhere the workers must not call (final, never retried)."""


def _refused_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        if any(ip in net for net in _V4_COMPAT):
            return True  # deprecated IPv4-compatible / SIIT forms: never a webhook receiver
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return _refused_address(embedded)
    return not ip.is_global or ip.is_multicast


def literal_host_refused(url: str) -> bool:
    """True when the URL names a non-global address or localhost literally (checked at submission).

    Raises ValueError when the URL cannot be parsed (a bad port, an unclosed IPv6 bracket).
    """
    import httpx

    parts = urlsplit(url)
    parts.port  # noqa: B018 - parses the port: ValueError when it is not a number in range
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise ValueError("no host")
    try:
        httpx.Request("POST", url)  # the request the client will make, built as it builds it
    except httpx.InvalidURL as exc:  # (an IDNA error is a ValueError already)
        raise ValueError(str(exc)) from exc
    try:
        ipaddress.ip_address(host)
    except ValueError:
        host.encode("idna")  # what the resolver will be asked: UnicodeError (a ValueError) when it cannot be
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return _refused_address(ipaddress.ip_address(host))
    except ValueError:
        return False


def check_destination(url: str, allow_private: bool) -> None:
    """Refuse a URL whose host resolves to a non-global address (unless `allow_private`).

    Raises DestinationRefused (final) or OSError when the name does not resolve (transient).
    The check resolves the name itself; the HTTP client resolves it again, so a DNS answer that
    changes in between (rebinding) is not covered: run workers behind an egress proxy for that.
    """
    if allow_private:
        return
    try:
        refused = literal_host_refused(url)
    except ValueError as exc:
        raise DestinationRefused(f"callback URL cannot be parsed: {exc}") from exc
    parts = urlsplit(url)
    host = parts.hostname or ""
    if refused:
        raise DestinationRefused(f"callback host {host!r} is not a public address")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if _refused_address(address):
            raise DestinationRefused(f"callback host {host!r} resolves to {address}, not a public address")
