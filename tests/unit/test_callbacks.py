"""Where a callback may go and how it gets there (no database): the URL's canonical host (IDNA
2008), the tenant's receiver rules, one resolution whose addresses the connection is pinned to,
Host and TLS on the real name, the attempt's deadline, the signature, back-off; and the wiring
that gives callbacks their own worker pool."""

from __future__ import annotations

import base64
import hashlib
import hmac
import shutil
import socket
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest
import yaml

from moderation import queue
from moderation.callbacks import (
    DestinationRefused,
    ReceiverRules,
    address_allowed,
    backoff,
    check_url,
    parse_destination,
    resolve,
    sign,
    transport,
)
from moderation.settings import Settings
from tests.support.paths import REPO
from tests.support.receivers import DripReceiver, FakeDNS, Receiver, answers_in_turn, elapsed, make_certs

STRICT = ReceiverRules()
HTTP_OK = ReceiverRules(allow_http=True)
PUBLIC = "93.184.215.14"  # a globally routable address (never connected to: see `no_public_connects`)


def rules(*networks: str, allow_http: bool = True) -> ReceiverRules:
    return ReceiverRules.parse(allow_http, networks)


# ---------------------------------------------------------------- addresses and rules


NON_PUBLIC = [
    "127.0.0.1",
    "10.1.2.3",
    "192.168.0.10",
    "172.16.5.4",
    "100.64.0.1",  # carrier-grade NAT
    "169.254.169.254",  # cloud metadata
    "0.0.0.0",
    "[::1]",
    "[fe80::1]",
    "[fd00::1]",
    "[fd00:ec2::254]",  # AWS metadata over IPv6
    "[::ffff:127.0.0.1]",  # IPv4-mapped loopback
    "224.0.0.1",
    "[64:ff9b::a9fe:a9fe]",  # NAT64 of the metadata address
    "[2002:7f00:1::]",  # 6to4 of loopback
    "[::7f00:1]",  # IPv4-compatible loopback
    "[::ffff:0:7f00:1]",  # SIIT-translated loopback
    "127.1",  # no literal for Python, but the resolver reads it as 127.0.0.1
    "0x7f.1",
    "2130706433",
    "localhost",
    "api.localhost",
]


@pytest.mark.parametrize("host", NON_PUBLIC)
def test_non_public_hosts_are_refused_at_submission(host: str) -> None:
    for scheme in ("https", "http"):
        with pytest.raises(DestinationRefused):
            check_url(f"{scheme}://{host}:8443/hook", HTTP_OK)


@pytest.mark.parametrize(
    "url", ["https://8.8.8.8/hook", "https://[2606:4700::1111]:8443/x", "https://hooks.example.com/x"]
)
def test_public_https_hosts_pass_the_submission_check(url: str) -> None:
    check_url(url, STRICT)


def test_plain_http_needs_the_tenants_permission() -> None:
    with pytest.raises(DestinationRefused, match="https"):
        check_url("http://hooks.example.com/x", STRICT)
    check_url("http://hooks.example.com/x", HTTP_OK)
    dest = parse_destination("http://8.8.8.8/x")
    with pytest.raises(DestinationRefused, match="https"):
        resolve(dest, STRICT)  # checked again at delivery
    assert resolve(dest, HTTP_OK) == [dest.literal]


def test_private_receivers_only_inside_the_tenants_networks() -> None:
    ten = rules("10.0.0.0/8", "127.0.0.0/8", "fd12:3456::/32")
    for host in ("10.1.2.3", "127.0.0.1", "[::ffff:127.0.0.1]", "[fd12:3456::1]", "127.1", "localhost"):
        check_url(f"http://{host}:9/", ten)
    for host in ("192.168.1.1", "172.16.0.1", "[::1]", "[fd00::1]", "100.64.0.1"):
        with pytest.raises(DestinationRefused):
            check_url(f"http://{host}:9/", ten)
    with pytest.raises(DestinationRefused, match="https"):
        check_url("http://10.1.2.3/", rules("10.0.0.0/8", allow_http=False))
    check_url("https://10.1.2.3/", rules("10.0.0.0/8", allow_http=False))


@pytest.mark.parametrize(
    ("address", "networks"),
    [
        ("169.254.169.254", ["0.0.0.0/0"]),
        ("169.254.169.254", ["169.254.0.0/16"]),  # link-local listed, the metadata address is not
        ("169.254.170.2", ["169.254.0.0/16"]),
        ("fd00:ec2::254", ["fc00::/7"]),
        ("fd00:ec2::254", ["::/0"]),
        ("fe80::1", ["::/0"]),
        ("169.254.1.1", ["0.0.0.0/0"]),
        ("100.100.100.200", ["100.64.0.0/10"]),
        ("0.0.0.0", ["0.0.0.0/8"]),
    ],
)
def test_metadata_and_link_local_need_their_own_listing(address: str, networks: list[str]) -> None:
    import ipaddress

    ip = ipaddress.ip_address(address)
    assert not address_allowed(ip, rules(*networks).private_networks)
    assert address_allowed(ip, rules(f"{address}/{ip.max_prefixlen}").private_networks)  # named exactly: allowed


def test_a_listed_translation_prefix_does_not_open_what_it_embeds() -> None:
    import ipaddress

    nets = rules("64:ff9b::/96", "2002::/16").private_networks
    assert not address_allowed(ipaddress.ip_address("64:ff9b::a9fe:a9fe"), nets)  # NAT64 of the metadata address
    assert not address_allowed(ipaddress.ip_address("2002:7f00:1::"), nets)  # 6to4 of loopback
    assert address_allowed(ipaddress.ip_address("64:ff9b::808:808"), nets)  # NAT64 of a public address


def test_link_local_opens_with_its_own_range() -> None:
    import ipaddress

    nets = rules("169.254.0.0/16", "fe80::/10").private_networks
    assert address_allowed(ipaddress.ip_address("169.254.1.1"), nets)
    assert address_allowed(ipaddress.ip_address("fe80::1"), nets)
    assert not address_allowed(ipaddress.ip_address("169.254.169.254"), nets)


@pytest.mark.parametrize(
    "value", ["example.com", "10.0.0.0/33", "", " ", "10.0.0.0-10.0.0.5", "1.2.3", 5, None, "x" * 100]
)
def test_networks_must_be_networks(value: Any) -> None:
    with pytest.raises(ValueError):
        ReceiverRules.parse(False, [value])


def test_networks_are_normalised() -> None:
    r = ReceiverRules.parse(True, ["10.1.2.3/8", "127.0.0.1", "10.0.0.0/8", "FD00::/8"])
    assert r.to_json() == {"allow_http": True, "private_networks": ["10.0.0.0/8", "127.0.0.1/32", "fd00::/8"]}
    with pytest.raises(ValueError):
        ReceiverRules.parse(False, [f"10.{i // 256}.{i % 256}.0/24" for i in range(65)])


# ---------------------------------------------------------------- the canonical host (IDNA 2008)


# Hosts that Python's `idna` codec (IDNA 2003: what socket.getaddrinfo does with a Unicode name,
# and so what the old check resolved) and IDNA 2008 (what httpx puts on the wire) read differently.
DIVERGENT = [
    ("ß.example", "ss.example", "xn--zca.example"),
    ("faß.example", "fass.example", "xn--fa-hia.example"),
    ("ς.example", "xn--4xa.example", "xn--3xa.example"),  # final sigma: 2003 folds it to U+03C3
    ("क्\u200dष.example", "xn--11b2ezc.example", "xn--11b2ezcw70k.example"),  # ZWJ after a virama: 2003 drops it
    ("क्\u200cष.example", "xn--11b2ezc.example", "xn--11b2ezcs70k.example"),  # ZWNJ after a virama
    ("ß\uff0eexample", "ss.example", "xn--zca.example"),  # full-width dot
    ("ß\u3002example", "ss.example", "xn--zca.example"),  # ideographic full stop
]


@pytest.mark.parametrize(("host", "idna2003", "idna2008"), DIVERGENT)
def test_the_host_is_what_the_client_sends(host: str, idna2003: str, idna2008: str) -> None:
    assert host.encode("idna").decode() == idna2003  # the reading the old check resolved
    assert httpx.URL(f"https://{host}/").raw_host.decode() == idna2008  # where httpx sends the request
    assert parse_destination(f"https://{host}/hook").host == idna2008


@pytest.mark.parametrize(("host", "idna2003", "idna2008"), DIVERGENT)
def test_a_divergent_host_resolving_to_a_private_address_is_refused(
    monkeypatch: pytest.MonkeyPatch, host: str, idna2003: str, idna2008: str
) -> None:
    # The IDNA 2003 reading is public, the name the request goes to is private.
    dns = FakeDNS({idna2003: [PUBLIC], idna2008: ["127.0.0.1"]})
    monkeypatch.setattr(socket, "getaddrinfo", dns)
    receiver = Receiver()
    try:
        url = f"http://{host}:{receiver.port}/hook"
        dest = check_url(url, HTTP_OK)  # a name: nothing to refuse before DNS
        with pytest.raises(DestinationRefused, match=r"127\.0\.0\.1"):
            resolve(dest, HTTP_OK)
        assert dns.asked == [idna2008]
        # With the receiver's network listed, the same name is delivered to (no other name is used).
        ok = rules("127.0.0.0/8")
        status, connected = transport.post(dest, resolve(dest, ok), b"{}", {}, timeout_s=5, deadline_s=10)
    finally:
        receiver.close()
    assert (status, str(connected)) == (200, "127.0.0.1")
    assert receiver.calls[0][1]["Host"] == f"{idna2008}:{receiver.port}"


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1/",
        "http://host:99999/",
        "http://host:port/",
        "http:///path",
        "http://[::1]x/",
        "http://[v1.x]/",
        "ftp://example.com/",
        "http://xn--zz.com/",  # an invalid A-label
        "http://exa\u200bmple.com/",  # zero-width space: disallowed in IDNA 2008
        "http://a\u200db.example/",  # a joiner out of context
        "http://a\u200cb.example/",
        "https://\ufffd.com/",
        "https://\uff25\uff38.com/",  # full-width letters: IDNA 2008 (unlike UTS-46) does not map them
        "http://" + "a" * 64 + ".com/",  # a label over 63 characters
        "http://a..b/",
        "http://ab--cd.example/",  # hyphens in 3rd and 4th position without xn--
        "http://[fe80::1%25eth0]/",  # a scoped address
        "http://host:0/",
    ],
)
def test_unusable_urls_are_refused(url: str) -> None:
    with pytest.raises(DestinationRefused):
        check_url(url, HTTP_OK)
    with pytest.raises(DestinationRefused):
        parse_destination(url)


# ---------------------------------------------------------------- resolve once, connect there


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every TCP connection the process opens; only loopback ones really happen."""
    seen: list[tuple[str, int]] = []
    real = socket.create_connection

    def create_connection(address: Any, *args: Any, **kw: Any) -> socket.socket:
        seen.append((str(address[0]), int(address[1])))
        if not str(address[0]).startswith("127."):
            raise ConnectionRefusedError(f"test: no connection to {address[0]}")
        return real(address, *args, **kw)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    return seen


def test_rebinding_cannot_move_the_connection(monkeypatch: pytest.MonkeyPatch, connects: list[Any]) -> None:
    # The first answer is public (checked, allowed); any later lookup answers loopback.
    dns = FakeDNS({"rebind.example": answers_in_turn([PUBLIC], ["127.0.0.1"])})
    monkeypatch.setattr(socket, "getaddrinfo", dns)
    receiver = Receiver()
    try:
        dest = check_url(f"http://rebind.example:{receiver.port}/hook", HTTP_OK)
        addresses = resolve(dest, HTTP_OK)
        with pytest.raises(httpcore.ConnectError):
            transport.post(dest, addresses, b"{}", {}, timeout_s=5, deadline_s=10)
    finally:
        receiver.close()
    assert dns.asked == ["rebind.example"]  # resolved once
    assert connects == [(PUBLIC, receiver.port)]  # connected to the checked address only
    assert receiver.calls == []


def test_every_address_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", FakeDNS({"mixed.example": [PUBLIC, "10.0.0.5"]}))
    dest = parse_destination("https://mixed.example/hook")
    with pytest.raises(DestinationRefused, match=r"10\.0\.0\.5"):
        resolve(dest, STRICT)
    assert [str(a) for a in resolve(dest, rules("10.0.0.0/8"))] == [PUBLIC, "10.0.0.5"]


def test_a_name_that_does_not_resolve_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", FakeDNS({}))
    with pytest.raises(OSError):
        resolve(parse_destination("https://gone.example/"), STRICT)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command makes the test CA")
    return make_certs(tmp_path_factory.mktemp("certs"), ("receiver.test",))


def test_https_keeps_host_sni_and_certificate_on_the_real_name(monkeypatch: pytest.MonkeyPatch, certs: Any) -> None:
    dns = FakeDNS({"receiver.test": ["127.0.0.1"]})
    monkeypatch.setattr(socket, "getaddrinfo", dns)
    receiver = Receiver(tls=certs)
    try:
        dest = check_url(f"https://receiver.test:{receiver.port}/hook?x=1", rules("127.0.0.0/8", allow_http=False))
        addresses = resolve(dest, rules("127.0.0.0/8", allow_http=False))
        status, connected = transport.post(
            dest, addresses, b'{"a":1}', {"X-Test": "1"}, timeout_s=5, deadline_s=10, ca_bundle=str(certs.ca)
        )
        # The certificate names receiver.test only: verified against the name, not the address.
        with pytest.raises(httpcore.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            transport.post(dest, addresses, b"{}", {}, timeout_s=5, deadline_s=10)  # certifi does not know our CA
        ip_dest = parse_destination(f"https://127.0.0.1:{receiver.port}/hook")
        with pytest.raises(httpcore.ConnectError, match=r"CERTIFICATE_VERIFY_FAILED|match"):
            transport.post(ip_dest, [ip_dest.literal], b"{}", {}, timeout_s=5, deadline_s=10, ca_bundle=str(certs.ca))
    finally:
        receiver.close()
    assert (status, str(connected)) == (200, "127.0.0.1")
    assert dns.asked == ["receiver.test"]
    (_, headers, body) = receiver.calls[0]
    assert headers["Host"] == f"receiver.test:{receiver.port}" and headers["X-Test"] == "1"
    assert body == b'{"a":1}'
    assert receiver.server_names[0] == "receiver.test"


def test_credentials_in_the_url_are_sent_as_basic_auth() -> None:
    receiver = Receiver()
    try:
        dest = parse_destination(f"http://hook%20user:p%40ss@127.0.0.1:{receiver.port}/x")
        assert transport.post(dest, [dest.literal], b"{}", {}, timeout_s=5, deadline_s=10)[0] == 200
    finally:
        receiver.close()
    assert receiver.calls[0][1]["Authorization"] == "Basic " + base64.b64encode(b"hook user:p@ss").decode()


@pytest.mark.parametrize("silent", [False, True], ids=["drips", "silent"])
def test_a_slow_receiver_cannot_hold_an_attempt_past_its_deadline(silent: bool) -> None:
    receiver = DripReceiver(every=0.1, silent=silent)
    try:
        dest = parse_destination(receiver.url)
        took, outcome = elapsed(lambda: transport.post(dest, [dest.literal], b"{}", {}, timeout_s=1, deadline_s=1.5))
    finally:
        receiver.close()
    assert isinstance(outcome, httpcore.TimeoutException), outcome
    assert took < 3, took


# ---------------------------------------------------------------- signature and back-off


KNOWN = "df5db8f4d4fe3e1f3a650756489265414614e82681da3f9ce2b8829f773c2a9f"
DELIVERY = "0123456789abcdef0123456789abcdef"


def test_signature_covers_timestamp_delivery_id_and_body() -> None:
    # Known answer: HMAC-SHA256(key="secret", msg="1700000000.<delivery id>.{}"), computed with openssl.
    header = sign("secret", 1_700_000_000, DELIVERY, b"{}")
    assert header == "t=1700000000,v1=" + KNOWN
    assert sign("secret", 1_700_000_001, DELIVERY, b"{}") != header
    assert sign("secret", 1_700_000_000, DELIVERY[::-1], b"{}") != header  # another delivery's id
    # The old form (no delivery id) does not verify.
    assert hmac.new(b"secret", b"1700000000.{}", hashlib.sha256).hexdigest() != KNOWN


def test_several_secrets_give_one_signature_each_current_first() -> None:
    header = sign(["new", "secret"], 1_700_000_000, DELIVERY, b"{}")
    new = sign("new", 1_700_000_000, DELIVERY, b"{}").split("v1=")[1]
    assert header == f"t=1700000000,v1={new},v1={KNOWN}"


def test_backoff_grows_and_is_capped() -> None:
    s = Settings(callback_backoff_s=2, callback_backoff_max_s=3600)
    delays = [backoff(s, n) for n in range(1, 10)]
    assert delays[:4] == [2, 8, 32, 128]
    assert max(delays) == 3600 and delays == sorted(delays)
    # With the defaults the last attempt lands hours, not seconds, after the decision.
    default = Settings()
    assert 2 * 3600 < sum(backoff(default, n) for n in range(1, default.callback_max_attempts)) < 6 * 3600


def test_no_deployment_wide_switch_or_shared_secret() -> None:
    fields = Settings.model_fields
    assert "callback_allow_private" not in fields and "callback_secret" not in fields


# ---------------------------------------------------------------- their own worker pool


def test_callbacks_have_their_own_worker() -> None:
    assert queue.Q_CALLBACKS not in queue.CPU_QUEUES
    services = yaml.safe_load(Path(REPO / "docker-compose.yml").read_text())["services"]
    cpu = services["worker-cpu"]["command"]
    assert queue.Q_CALLBACKS not in cpu[cpu.index("-Q") + 1].split(",")
    hooks = services["worker-callbacks"]["command"]
    assert hooks[hooks.index("-Q") + 1] == queue.Q_CALLBACKS
    assert hooks[hooks.index("--pool") + 1] == "threads"


@pytest.mark.parametrize("address", ["64:ff9b:1::a9fe:a9fe", "64:ff9b:1::7f00:1", "fec0::1", "fec0:1::5"])
def test_local_nat64_and_site_local_are_not_public(address: str) -> None:
    """Found by review: Python calls these global; a NAT64 gateway of the local-use prefix
    reaches 169.254.169.254 or 127.0.0.1 behind them."""
    import ipaddress

    from moderation.callbacks.netguard import address_allowed

    assert not address_allowed(ipaddress.ip_address(address))
