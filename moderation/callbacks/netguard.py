"""Where a callback may go: the URL's one canonical form, the tenant's receiver rules, and the
check of every address a receiver's name resolves to (the SSRF guard).

A callback URL is parsed once (`parse_destination`) into a `Destination` whose host is in the
form the request uses: IDNA 2008 A-labels, lower case, exactly as httpx encodes it (`idna`,
no UTS-46 mapping), or an IP literal. Every later step (the check at submission, resolution,
the connection, the Host header, TLS SNI and certificate check) uses that one name, so no
component can read the host differently from another (Python's `idna` codec, used by
`socket.getaddrinfo` for a Unicode name, is IDNA 2003: `ß.example` would be resolved as
`ss.example` while the request names `xn--zca.example`). A host that cannot be encoded is
refused.

Addresses: public (globally routable, not multicast, no IPv6 form embedding a non-public IPv4
address) are allowed. Anything else (loopback, private, CGNAT, link-local, ...) is allowed only
when it lies in one of the tenant's own `private_networks`; metadata addresses and the
link-local ranges only when the tenant lists a network *inside* them (169.254.0.0/16 opens
link-local space but not 169.254.169.254, which must be listed itself). There is no
deployment-wide switch. Plain `http://` is refused unless the tenant allows it.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: At most this many networks per tenant (each one is checked for every resolved address).
MAX_NETWORKS = 64

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Not public although Python's `is_global` says so: local-use NAT64 (RFC 8215: a gateway maps its
# last 32 bits to any IPv4 address, metadata and loopback included) and site-local (deprecated,
# still routed inside some networks).
_NOT_PUBLIC_V6 = (ipaddress.ip_network("64:ff9b:1::/48"), ipaddress.ip_network("fec0::/10"))
_V4_COMPAT = (ipaddress.ip_network("::/96"), ipaddress.ip_network("::ffff:0:0:0/96"))
# Reached only when a tenant lists a network inside them. The smallest range holding an address
# is the one its allowing network must fit in: a metadata address needs its own /32 (/128).
_SENSITIVE: tuple[IPNetwork, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.0.0/16",  # IPv4 link-local (cloud metadata lives here)
        "fe80::/10",  # IPv6 link-local
        "169.254.169.254/32",  # AWS, GCP, Azure, OCI, OpenStack instance metadata
        "169.254.169.253/32",  # AWS VPC DNS
        "169.254.169.123/32",  # AWS time sync
        "169.254.170.2/32",  # AWS ECS task metadata
        "169.254.170.23/32",  # AWS EKS pod identity
        "fd00:ec2::254/128",  # AWS instance metadata over IPv6
        "fd00:ec2::23/128",  # AWS EKS pod identity over IPv6
        "fd00:ec2::123/128",  # AWS time sync over IPv6
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "192.0.0.192/32",  # Oracle Cloud (classic) metadata
        "0.0.0.0/32",  # "this host": a connection to it reaches loopback
        "::/128",
    )
)
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")


class DestinationRefused(Exception):
    """The callback URL points somewhere the workers must not call (final, never retried)."""


@dataclass(frozen=True)
class ReceiverRules:
    """A tenant's rules for its callback receivers (tenants.callback_allow_http / _private_networks)."""

    allow_http: bool = False
    private_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, allow_http: bool, networks: Iterable[Any] | None) -> ReceiverRules:
        """Rules from stored or submitted values. Raises ValueError naming a value that is not an
        IP network in CIDR form (a bare address is its own /32 or /128)."""
        return cls(bool(allow_http), parse_networks(networks or ()))

    def to_json(self) -> dict[str, Any]:
        return {"allow_http": self.allow_http, "private_networks": [str(n) for n in self.private_networks]}


def parse_networks(values: Iterable[Any]) -> tuple[IPNetwork, ...]:
    """Distinct networks, in the given order, with host bits cleared ("10.1.2.3/8" is 10.0.0.0/8).

    Raises ValueError for anything else (a name, a range, a bad prefix, too many).
    """
    found: list[IPNetwork] = []
    for value in values:
        if not isinstance(value, str) or not value.strip() or len(value) > 64:
            raise ValueError(f"not an IP network: {str(value)[:64]!r}")
        try:
            net = ipaddress.ip_network(value.strip(), strict=False)
        except ValueError as exc:
            raise ValueError(f"not an IP network: {value!r} ({exc})") from None
        if net not in found:
            found.append(net)
    if len(found) > MAX_NETWORKS:
        raise ValueError(f"at most {MAX_NETWORKS} networks")
    return tuple(found)


@dataclass(frozen=True)
class Destination:
    """A callback URL in the form the request is made: `host` as it goes on the wire."""

    scheme: str  # "http" | "https"
    host: str  # A-labels, lower case; or an IP literal (no brackets)
    port: int
    target: str  # path and query, percent-encoded ASCII
    userinfo: str  # "user:password", percent-encoded, or ""
    literal: IPAddress | None  # the host, when it is an IP address

    @property
    def authority(self) -> str:
        """The Host header: the host (IPv6 in brackets) and the port unless it is the scheme's own."""
        host = f"[{self.host}]" if isinstance(self.literal, ipaddress.IPv6Address) else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.authority}{self.target}"


def canonical_host(host: str) -> str:
    """The host as a name on the wire: IDNA 2008 (lower-cased first, as httpx does), each label
    checked. Raises ValueError when it cannot be encoded (an invalid A-label, a code point IDNA
    2008 disallows, a joiner out of context, an empty or over-long label)."""
    import idna

    if not host:
        raise ValueError("no host")
    if host.isascii():
        ascii_host = host.lower()
    else:
        try:
            ascii_host = idna.encode(host.lower()).decode("ascii")
        except (idna.IDNAError, UnicodeError) as exc:
            raise ValueError(f"host {host!r} cannot be encoded with IDNA 2008: {exc}") from None
    name = ascii_host[:-1] if ascii_host.endswith(".") else ascii_host  # a fully qualified name
    if not name or len(name) > 253:
        raise ValueError(f"host {host!r} is not a DNS name")
    for label in name.split("."):
        if not _LABEL.fullmatch(label):
            raise ValueError(f"host {host!r} has an invalid label {label!r}")
        if label.startswith("xn--") or label[2:4] == "--":
            try:  # an A-label must decode to a valid U-label that encodes back to itself
                if idna.alabel(idna.ulabel(label)).decode("ascii") != label:
                    raise ValueError("not canonical")
            except (idna.IDNAError, UnicodeError, ValueError) as exc:
                raise ValueError(f"host {host!r} has an invalid A-label {label!r}: {exc}") from None
    return ascii_host


def _ipv4_shorthand(host: str) -> ipaddress.IPv4Address | None:
    """Hosts the resolver reads as an IPv4 address though Python does not ("127.1", "0x7f.1",
    "2130706433"): inet_aton's forms, as getaddrinfo parses them before any DNS lookup."""
    if not re.fullmatch(r"[0-9a-fx.]+", host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def parse_destination(url: str) -> Destination:
    """The URL in canonical form. Raises DestinationRefused when it cannot be used: not http(s),
    no host, a bad port, a host that IDNA 2008 cannot encode, an unparseable URL."""
    import httpx

    try:
        parsed = httpx.URL(url)  # the URL parser of the client that used to send callbacks
        parsed.port  # noqa: B018 - raises on a bad port
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise DestinationRefused(f"callback URL cannot be parsed: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise DestinationRefused("callback URL must be http(s)")
    raw_host = parsed.raw_host.decode("ascii", "replace")  # httpx has applied IDNA 2008 already
    literal: IPAddress | None
    try:
        literal = ipaddress.ip_address(raw_host)
    except ValueError:
        literal = None
    if literal is None:
        try:
            host = canonical_host(raw_host)
        except ValueError as exc:
            raise DestinationRefused(f"callback URL is unusable: {exc}") from None
        literal = _ipv4_shorthand(host)
        if literal is not None:
            host = str(literal)
    else:
        if isinstance(literal, ipaddress.IPv6Address) and literal.scope_id:
            raise DestinationRefused("callback URL names a scoped IPv6 address")
        host = str(literal)
    port = (443 if parsed.scheme == "https" else 80) if parsed.port is None else parsed.port
    if not 0 < port < 65536:
        raise DestinationRefused(f"callback URL has a bad port {port}")
    target = parsed.raw_path.decode("ascii")
    return Destination(parsed.scheme, host, port, target, parsed.userinfo.decode("ascii"), literal)


def _in_sensitive(ip: IPAddress) -> IPNetwork | None:
    """The smallest sensitive range holding `ip` (None: not sensitive)."""
    holding = [n for n in _SENSITIVE if n.version == ip.version and ip in n]
    return max(holding, key=lambda n: n.prefixlen, default=None)


def _listed(ip: IPAddress, networks: Sequence[IPNetwork]) -> bool:
    """`ip` lies in one of the tenant's networks, and a sensitive address in one inside its range."""
    sensitive = _in_sensitive(ip)
    for net in networks:
        if net.version != ip.version or ip not in net:
            continue
        if sensitive is None or net.subnet_of(sensitive):  # type: ignore[arg-type]
            return True
    return False


def address_allowed(ip: IPAddress, networks: Sequence[IPNetwork] = ()) -> bool:
    """May a callback connect to `ip`, for a tenant with these private networks?"""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return address_allowed(ip.ipv4_mapped, networks)  # the connection goes to the IPv4 address
        embedded = ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and not address_allowed(embedded, networks):
            return False  # a gateway would forward it to an IPv4 address the tenant may not reach
        if _listed(ip, networks):
            return True
        if any(ip in net for net in _V4_COMPAT):
            return False  # deprecated IPv4-compatible / SIIT forms: never a public receiver
        if any(ip in net for net in _NOT_PUBLIC_V6):
            return False
    elif _listed(ip, networks):
        return True
    return ip.is_global and not ip.is_multicast and _in_sensitive(ip) is None


def check_url(url: str, rules: ReceiverRules) -> Destination:
    """What can be checked without DNS (at submission): the URL parses, its host encodes, the
    scheme is https (or the tenant allows http), and a literal address or `localhost` is one the
    tenant may call. Returns the canonical destination.

    Raises DestinationRefused (final).
    """
    dest = parse_destination(url)
    if dest.scheme != "https" and not rules.allow_http:
        raise DestinationRefused("callback URL must be https (this tenant does not allow plain http)")
    name = dest.host.rstrip(".")
    if dest.literal is None and (name == "localhost" or name.endswith(".localhost")):
        loopback = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))  # RFC 6761: always loopback
        if not any(address_allowed(ip, rules.private_networks) for ip in loopback):
            raise DestinationRefused(f"callback host {dest.host!r} is loopback, not in this tenant's networks")
    if dest.literal is not None and not address_allowed(dest.literal, rules.private_networks):
        raise DestinationRefused(f"callback host {dest.host} is not a public address nor in this tenant's networks")
    return dest


def resolve(dest: Destination, rules: ReceiverRules) -> list[IPAddress]:
    """Resolve the destination's host once and check every address it resolves to. Returns the
    addresses (the only ones the request may connect to).

    Raises DestinationRefused (final) when any address is not allowed, OSError when the name does
    not resolve (transient).
    """
    if dest.scheme != "https" and not rules.allow_http:
        raise DestinationRefused("callback URL must be https (this tenant does not allow plain http)")
    if dest.literal is not None:
        found = [dest.literal]
    else:
        # An ASCII name: the resolver is asked exactly what the request names (no codec in between).
        infos = socket.getaddrinfo(dest.host, dest.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        found = []
        for *_, sockaddr in infos:
            ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if ip not in found:
                found.append(ip)
    if not found:
        raise OSError(f"callback host {dest.host!r} resolved to no address")
    for ip in found:
        if not address_allowed(ip, rules.private_networks):
            raise DestinationRefused(
                f"callback host {dest.host!r} resolves to {ip}, not a public address nor in this tenant's networks"
            )
    return found
