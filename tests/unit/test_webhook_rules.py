"""The webhook sink's pure rules: status verdicts, Retry-After, address checks, signing."""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import os

import pytest
from standardwebhooks import Webhook

from outbox._webhook_rules import redact, shown_url
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
