"""The callback SSRF guard and back-off (no services)."""

from __future__ import annotations

import pytest

from moderation.callbacks import DestinationRefused, backoff, check_destination, literal_host_refused, sign
from moderation.settings import Settings


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://localhost:8080/",
        "http://api.localhost/",
        "http://10.1.2.3/",
        "http://192.168.0.10/",
        "http://172.16.5.4/",
        "http://100.64.0.1/",  # carrier-grade NAT
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://0.0.0.0/",
        "http://[::1]/",
        "http://[fe80::1]/",
        "http://[fd00::1]/",
        "http://[::ffff:127.0.0.1]/",  # IPv4-mapped loopback
        "http://224.0.0.1/",
        "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of the metadata address
        "http://[2002:7f00:1::]/",  # 6to4 of loopback
        "http://[::7f00:1]/",  # IPv4-compatible loopback
        "http://[::ffff:0:7f00:1]/",  # SIIT-translated loopback
    ],
)
def test_non_public_literal_hosts_are_refused(url: str) -> None:
    assert literal_host_refused(url)
    with pytest.raises(DestinationRefused):
        check_destination(url, allow_private=False)
    check_destination(url, allow_private=True)  # the operator's choice


@pytest.mark.parametrize(
    "url", ["https://8.8.8.8/hook", "http://[2606:4700::1111]:8443/x", "https://hooks.example.com/x"]
)
def test_public_hosts_are_not_refused_literally(url: str) -> None:
    assert not literal_host_refused(url)


def test_names_are_checked_by_what_they_resolve_to() -> None:
    # "127.1" is no IP literal for Python, but the resolver reads it as 127.0.0.1.
    assert not literal_host_refused("http://127.1:9/")
    with pytest.raises(DestinationRefused, match=r"127\.0\.0\.1"):
        check_destination("http://127.1:9/", allow_private=False)
    check_destination("https://1.1.1.1/", allow_private=False)


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1/",
        "http://host:99999/",
        "http://host:port/",
        "http:///path",
        "http://[::1]x/",
        "http://[v1.x]/",
        "http://xn--zz.com/",  # an invalid A-label
        "http://exa\u200bmple.com/",  # zero-width space
        "https://\ufffd.com/",
        "http://" + "a" * 64 + ".com/",  # a label over 63 characters
    ],
)
def test_unparseable_urls_raise_value_error_and_are_refused_at_delivery(url: str) -> None:
    with pytest.raises(ValueError):
        literal_host_refused(url)
    with pytest.raises(DestinationRefused):
        check_destination(url, allow_private=False)


def test_backoff_grows_and_is_capped() -> None:
    s = Settings(callback_backoff_s=2, callback_backoff_max_s=3600)
    delays = [backoff(s, n) for n in range(1, 10)]
    assert delays[:4] == [2, 8, 32, 128]
    assert max(delays) == 3600 and delays == sorted(delays)
    # With the defaults the last attempt lands hours, not seconds, after the decision.
    default = Settings()
    assert 2 * 3600 < sum(backoff(default, n) for n in range(1, default.callback_max_attempts)) < 6 * 3600


KNOWN = "b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"


def test_signature_is_hmac_of_timestamp_and_body() -> None:
    # Known answer: HMAC-SHA256(key="secret", msg="1700000000.{}"), computed independently.
    expected = "t=1700000000,v1=" + KNOWN
    assert sign("secret", 1_700_000_000, b"{}") == expected
    assert sign("secret", 1_700_000_001, b"{}") != expected


def test_several_secrets_give_one_signature_each_current_first() -> None:
    header = sign(["new", "secret"], 1_700_000_000, b"{}")
    assert header == f"t=1700000000,v1={sign('new', 1_700_000_000, b'{}')[16:]},v1={KNOWN}"
