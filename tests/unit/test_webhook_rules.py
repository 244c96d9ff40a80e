"""The webhook sink's pure rules: status verdicts, Retry-After, address checks (at delivery
and in the configuration), signing, and which event headers travel."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os

import pytest
from standardwebhooks import Webhook

from outbox._webhook_rules import (
    SINK_HEADERS,
    allow_hint,
    event_headers,
    redact,
    shown_url,
    url_address_problem,
)
from outbox.testing import make_event
from outbox.webhook_sink import (
    MAX_RETRY_AFTER,
    classify_status,
    connect_address,
    envelope,
    parse_retry_after,
    refusal,
    sign,
)

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("statuses", "verdict"),
    [
        (range(200, 300), "ok"),
        ([100, 101, 300, 301, 302, 303, 304, 307, 308], "permanent"),
        ([400, 401, 403, 404, 405, 413, 415, 422, 451], "permanent"),
        ([408, 409, 425, 429], "retry"),
        (range(500, 600), "retry"),
        ([410], "gone"),
    ],
)
def test_classify_status(statuses: range | list[int], verdict: str) -> None:
    assert {classify_status(status) for status in statuses} == {verdict}


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0.0),
        ("30", 30.0),
        (" 1.5 ", 1.5),
        ("Fri, 02 Jan 2026 03:05:05 GMT", 60.0),
        ("Friday, 02-Jan-26 03:05:05 GMT", 60.0),  # the obsolete RFC 850 form
        ("Fri, 02 Jan 2026 03:00:00 GMT", 0.0),  # already past
        ("99999999", MAX_RETRY_AFTER),
        ("Thu, 01 Jan 2099 00:00:00 GMT", MAX_RETRY_AFTER),
        ("-5", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, NOW) == seconds


@pytest.mark.parametrize(
    "address", ["8.8.8.8", "1.1.1.1", "2606:4700::1111", "2a00:1450:4001::200e", "::ffff:8.8.8.8"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.0.1",
        "10.0.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "239.255.255.250",
        "255.255.255.255",
        "192.0.2.1",
        "198.18.0.1",
        "::",
        "::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "fe80::1",
        "fec0::1",
        "fd00::1",
        "ff02::1",
        "64:ff9b::7f00:1",
        "2002:7f00:1::",
        "2001::1",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is not None


def test_allow_list() -> None:
    allowed = [ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("fd00::/8")]
    assert refusal(ipaddress.ip_address("127.0.0.1"), allowed) is None
    assert refusal(ipaddress.ip_address("::ffff:127.0.0.1"), allowed) is None
    assert refusal(ipaddress.ip_address("fd12::1"), allowed) is None
    assert refusal(ipaddress.ip_address("127.0.0.2"), allowed) is not None
    assert refusal(ipaddress.ip_address("::1"), allowed) is not None


def test_mapped_addresses_are_reached_over_ipv4() -> None:
    assert connect_address(ipaddress.ip_address("::ffff:8.8.8.8")) == ipaddress.ip_address(
        "8.8.8.8"
    )
    assert str(connect_address(ipaddress.ip_address("2606:4700::1111"))) == "2606:4700::1111"


def test_signature_matches_the_reference_implementation() -> None:
    secrets = ["whsec_" + base64.b64encode(os.urandom(32)).decode() for _ in range(2)]
    keys = [base64.b64decode(secret.removeprefix("whsec_")) for secret in secrets]
    body = envelope(make_event(payload={"a": "ü"}))
    header = sign(keys, "42", int(NOW.timestamp()), body)
    expected = [Webhook(secret).sign("42", NOW, body.decode()) for secret in secrets]
    assert header.split(" ") == expected


def test_envelope() -> None:
    created = dt.datetime(2026, 1, 2, 4, 4, 5, 123456, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    event = make_event("user.created", {"name": "Zoë"}, id=2**60, key=None, created_at=created)
    body = envelope(event)
    assert "Zoë".encode() in body  # UTF-8, not \\u escapes
    assert b" " not in body
    assert json.loads(body) == {
        "type": "user.created",
        "timestamp": "2026-01-02T03:04:05.123456Z",
        "data": {"name": "Zoë"},
        "id": str(2**60),
        "key": None,
    }


@pytest.mark.parametrize(
    ("url", "secret", "shown"),
    [
        ("https://hooks.slack.com/services/T0/B0/xoxb", True, "https://hooks.slack.com/…"),
        ("https://u:p@h.example:8443/a/b?token=t#f", True, "https://h.example:8443/…"),
        ("https://h.example/", True, "https://h.example/"),
        ("https://h.example", True, "https://h.example"),
        ("http://[::1]:8080/x", True, "http://[::1]:8080/…"),
        ("https://u:p@h.example:8443/a/b?token=t#f", False, "https://h.example:8443/a/b"),
    ],
)
def test_shown_url(url: str, secret: bool, shown: str) -> None:
    assert shown_url(url, secret=secret) == shown


def test_redact_replaces_every_spelling_of_the_url() -> None:
    url = "https://u:p@h.example/services/T0/xoxb?q=1"
    text = f"failed: {url} (path /services/T0/xoxb, raw https://h.example/services/T0/xoxb)"
    redacted = redact(text, url, secret=True)
    assert "xoxb" not in redacted
    assert ":p@" not in redacted
    assert "https://h.example/…" in redacted


# -- addresses known from the configuration alone ---------------------------------------------


def networks(*written: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(network) for network in written]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8080/x", "127.0.0.1 is not a public address (loopback)"),
        ("https://10.0.0.9/", "10.0.0.9 is not a public address (private)"),
        ("http://[fe80::1]/", "fe80::1 is not a public address (link-local)"),
        ("http://[::ffff:192.168.1.1]/", "(IPv4 192.168.1.1) is not a public address (private)"),
        ("http://0x7f.1/", "127.0.0.1 is not a public address (loopback)"),
        ("http://2130706433/", "127.0.0.1 is not a public address (loopback)"),
        ("http://0/", "0.0.0.0 is not a public address (unspecified)"),
        ("http://LOCALHOST./", "LOCALHOST. is a loopback name"),
    ],
)
def test_url_address_problem_names_the_address_and_the_fix(url: str, expected: str) -> None:
    problem = url_address_problem(url, [])
    assert problem is not None
    assert expected.lower() in problem.lower()
    assert "allowed_networks = [" in problem


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://hooks.example.com/", []),  # a name: resolved, and checked, at delivery
        ("https://localhost.example.com/", []),
        ("https://8.8.8.8/", []),
        ("http://127.0.0.1/", ["127.0.0.0/8"]),
        ("http://[::ffff:10.1.1.1]/", ["10.0.0.0/8"]),
        ("http://localhost/", ["::1/128"]),  # one of its addresses is enough here
    ],
)
def test_url_address_problem_passes(url: str, allowed: list[str]) -> None:
    assert url_address_problem(url, networks(*allowed)) is None


def test_allow_hint_lists_each_address_as_the_smallest_network() -> None:
    addresses = [ipaddress.ip_address(a) for a in ("10.0.0.1", "::ffff:10.0.0.1", "fd00::1")]
    assert allow_hint(addresses) == 'allowed_networks = ["10.0.0.1/32", "fd00::1/128"]'


# -- event headers on the request ---------------------------------------------------------------


def test_event_headers_travel_in_lower_case_without_surrounding_blanks() -> None:
    sent, skipped = event_headers({"X-Tenant": " acme ", "traceparent": "00-ab-cd-01"}, frozenset())
    assert sent == {"x-tenant": "acme", "traceparent": "00-ab-cd-01"}
    assert skipped == []


@pytest.mark.parametrize(
    "name",
    ["webhook-id", "Webhook-Signature", "webhook-timestamp", "webhook-anything", *SINK_HEADERS],
)
def test_the_sinks_own_headers_are_never_set_by_an_event(name: str) -> None:
    sent, skipped = event_headers({name: "x"}, frozenset())
    assert sent == {}
    assert skipped == [(name, "the webhook sink sets this header itself")]


def test_headers_the_sink_is_configured_with_win() -> None:
    sent, skipped = event_headers({"Authorization": "t", "x-a": "1"}, frozenset({"authorization"}))
    assert sent == {"x-a": "1"}
    assert [name for name, _ in skipped] == ["Authorization"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x a", "1"),
        ("x:a", "1"),
        ("x-é", "1"),
        ("", "1"),
        ("x-a", "caf\u00e9"),
        ("x-a", "a\r\nx-evil: 1"),
        ("x-a", "a\x7f"),
    ],
)
def test_headers_http_cannot_carry_are_left_out(name: str, value: str) -> None:
    sent, skipped = event_headers({name: value}, frozenset())
    assert sent == {}
    assert [skipped_name for skipped_name, _ in skipped] == [name]
