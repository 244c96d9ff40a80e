"""The webhook sink's rules, apart from any I/O: what an answer means, how long a
``Retry-After`` asks to wait, the request body, its signature and the secrets that sign it,
which event headers travel, and which addresses the sink may connect to.

Nothing here sleeps, reads a clock, resolves a name or opens a socket;
:mod:`outbox.webhook_sink` says how each rule is used.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.utils
import hashlib
import hmac
import ipaddress
import json
import math
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import httpx

from outbox.exceptions import PermanentError, RetryableError, SinkError, SinkGone
from outbox.sinks import Event

__all__ = [
    "MAX_RETRY_AFTER",
    "SINK_HEADERS",
    "IPAddress",
    "IPNetwork",
    "Verdict",
    "allow_hint",
    "answer_error",
    "classify_status",
    "connect_address",
    "envelope",
    "event_headers",
    "parse_retry_after",
    "redact",
    "refusal",
    "secret_key",
    "shown_url",
    "sign",
    "url_address_problem",
    "url_problem",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_RETRY_AFTER = 24 * 3600.0
"""A ``Retry-After`` longer than this (seconds) is cut to it."""

Verdict = Literal["ok", "retry", "permanent", "gone"]

_RETRYABLE_4XX = frozenset({408, 409, 425, 429})
_SECRET_PREFIX = "whsec_"
_SNIPPET = 200
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")

SINK_HEADERS = frozenset(
    {
        # framing and connection management: the sink's HTTP client decides them
        "content-type",
        "content-length",
        "content-encoding",
        "transfer-encoding",
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "expect",
        # what the sink says about itself, and asks of the answer (identity: the body
        # read is capped, so no compressed answer is ever asked for)
        "user-agent",
        "accept",
        "accept-encoding",
    }
)
"""Header names an event's ``headers`` never set; ``webhook-*`` are the sink's too."""


def classify_status(status: int) -> Verdict:
    """What an HTTP status means for a delivery."""
    if 200 <= status < 300:
        return "ok"
    if status == 410:
        return "gone"
    if status in _RETRYABLE_4XX or 500 <= status < 600:
        return "retry"
    return "permanent"


def parse_retry_after(value: str | None, now: dt.datetime) -> float | None:
    """Seconds a ``Retry-After`` value (seconds or an HTTP-date) asks to wait, at most
    :data:`MAX_RETRY_AFTER`; ``None`` if there is none or it makes no sense."""
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = (when - now).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def envelope(event: Event) -> bytes:
    """The request body for ``event`` (see :mod:`outbox.webhook_sink` for its shape)."""
    created = event.created_at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    body = {
        "type": event.topic,
        "timestamp": created,
        "data": event.payload,
        "id": str(event.id),
        "key": event.key,
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def sign(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value: one ``v1,`` signature per key."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.digest(key, signed, hashlib.sha256)).decode() for key in keys
    )


def secret_key(secret: str) -> bytes:
    """The signing key of a ``whsec_<base64>`` secret; ``ValueError`` says what is wrong."""
    if not secret.startswith(_SECRET_PREFIX):
        raise ValueError("a webhook secret is written 'whsec_' followed by base64")
    encoded = secret.removeprefix(_SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError("the part of the secret after 'whsec_' is not base64") from None
    if not 24 <= len(key) <= 64:
        raise ValueError(f"the secret's key is {len(key)} bytes; it must be 24 to 64")
    return key


def header_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an HTTP header name, or ``None`` if it can."""
    if not _TOKEN.fullmatch(name):
        return "not a valid header name"
    return None


def header_value_problem(value: str) -> str | None:
    """Why ``value`` cannot travel as an HTTP header value, or ``None`` if it can."""
    if not _HEADER_VALUE.fullmatch(value):
        return "the value is not printable ASCII (no CR, LF or other controls)"
    return None


def event_headers(
    headers: Mapping[str, str], taken: frozenset[str]
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """The event's ``headers`` that go on its request, and the others with why not.

    Names are sent in lower case and values without surrounding blanks. A name in ``taken``
    (the headers the sink sets: lower case), in :data:`SINK_HEADERS` or starting with
    ``webhook-`` is the sink's own and stays so; a name or value HTTP cannot carry is left
    out rather than failing a delivery that no retry could mend.
    """
    sent: dict[str, str] = {}
    skipped: list[tuple[str, str]] = []
    for name, value in headers.items():
        lowered = name.lower()
        problem = header_name_problem(name) or header_value_problem(value)
        if problem is None and (lowered in taken or _sinks_own(lowered)):
            problem = "the webhook sink sets this header itself"
        if problem is None:
            sent[lowered] = value.strip(" \t")
        else:
            skipped.append((name, problem))
    return sent, skipped


def _sinks_own(lowered: str) -> bool:
    return lowered in SINK_HEADERS or lowered.startswith("webhook-")


def url_problem(text: str) -> str | None:
    """What makes ``text`` unusable as a webhook URL, without quoting its path; ``None`` if
    nothing does."""
    if any(char.isspace() or not char.isprintable() for char in text):
        return "the URL contains a space or a control character (write %20)"
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as error:
        return f"not a valid URL: {error}"
    if url.scheme not in ("http", "https"):
        return f"the URL must be http:// or https://, not {url.scheme or 'none'}"
    if not url.host:
        return "the URL has no host"
    if url.port is not None and not 1 <= url.port <= 65535:
        return f"the URL's port {url.port} is not in 1..65535"
    return None


def shown_url(url: httpx.URL | str, *, secret: bool = True) -> str:
    """``url`` as text may show it: never credentials, query or fragment, and when the URL
    is ``secret`` (a token in its path, as Slack's) only ``scheme://host[:port]/…``."""
    url = httpx.URL(url).copy_with(username=None, password=None, query=None, fragment=None)
    if secret and url.path not in ("", "/"):
        return str(url.copy_with(path="/")) + "…"
    return str(url)


def redact(text: str, url: httpx.URL | str, *, secret: bool = True) -> str:
    """``text`` (an error message, say) with every spelling of ``url`` it quotes replaced by
    :func:`shown_url`, and, when the URL is ``secret``, its path by ``…``."""
    url = httpx.URL(url)
    shown = shown_url(url, secret=secret)
    bare = url.copy_with(username=None, password=None, fragment=None)
    for spelling in sorted({str(url), str(bare), str(bare.copy_with(query=None))}, key=len)[::-1]:
        text = text.replace(spelling, shown)
    if url.query:
        text = text.replace(url.query.decode("ascii", "replace"), "…")
    if secret and url.path not in ("", "/"):
        raw = url.raw_path.split(b"?")[0].decode("ascii", "replace")
        text = text.replace(raw, "/…").replace(url.path, "/…")
    return text


def answer_error(
    status: int, headers: Mapping[str, str], body: bytes, url: str, now: dt.datetime
) -> SinkError:
    """The error a delivery to ``url`` fails with when the answer is not 2xx.

    ``headers`` are the answer's (looked up in lower case, as :class:`httpx.Headers` allows),
    ``body`` the start of it, ``now`` the time a ``Retry-After`` date is measured from.
    """
    verdict = classify_status(status)
    message = f"HTTP {status} from {url}"
    if 300 <= status < 400 and "location" in headers:
        message += f", redirect to {headers['location'][:_SNIPPET]} not followed"
    if body:
        message += f": {_snippet(body)}"
    if verdict == "gone":
        return SinkGone(message)
    if verdict == "retry":
        retry_after = parse_retry_after(headers.get("retry-after"), now)
        return RetryableError(message, retry_after=retry_after)
    return PermanentError(message)


def _snippet(body: bytes) -> str:
    text = " ".join(body[: _SNIPPET * 4].decode("utf-8", "replace").split())
    return text if len(text) <= _SNIPPET else text[:_SNIPPET] + "…"


# -- which addresses may be connected to -------------------------------------------------------


def _tunnelled_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    found = [address.sixtofour, address.teredo[1] if address.teredo else None]
    return [inner for inner in found if inner is not None]


def _non_public(address: IPAddress) -> str | None:
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("site-local", isinstance(address, ipaddress.IPv6Address) and address.is_site_local),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        ("special-purpose", not address.is_global),
    )
    return next((reason for reason, applies in checks if applies), None)


def connect_address(address: IPAddress) -> IPAddress:
    """The address to connect to: an IPv4-mapped IPv6 address is its IPv4 host."""
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return mapped or address


def refusal(address: IPAddress, allowed: Iterable[IPNetwork] = ()) -> str | None:
    """Why the sink will not connect to ``address``, or ``None`` if it may.

    Every non-public address is refused unless an ``allowed`` network holds it. An
    IPv4-mapped address is judged as the IPv4 address it is; 6to4 and Teredo addresses are
    refused also when the IPv4 address they tunnel to is not public.
    """
    target = connect_address(address)
    if any(target in network for network in allowed):
        return None
    shown = str(target) if target is address else f"{address} (IPv4 {target})"
    reason = _non_public(target)
    if reason is not None:
        return f"{shown} is not a public address ({reason})"
    if isinstance(target, ipaddress.IPv6Address):
        for inner in _tunnelled_ipv4(target):
            reason = _non_public(inner)
            if reason is not None:
                return f"{shown} tunnels to {inner}, not a public address ({reason})"
    return None


def allow_hint(addresses: Iterable[IPAddress]) -> str:
    """The ``allowed_networks`` line that lets the sink reach ``addresses``, and no more."""
    networks = dict.fromkeys(
        f"{target}/{target.max_prefixlen}" for target in map(connect_address, addresses)
    )
    listed = ", ".join(f'"{network}"' for network in networks)
    return f"allowed_networks = [{listed}]"


def url_address_problem(url: str, allowed: Iterable[IPNetwork]) -> str | None:
    """Why the sink would refuse every delivery to ``url``, known without resolving a name:
    its host is an address (``10.0.0.1``, ``[::1]``, ``127.1``) or a loopback name
    (``localhost``) that ``allowed`` does not hold. ``None`` otherwise: other names are
    checked when a delivery resolves them."""
    host = httpx.URL(url).host
    addresses, name = _host_addresses(host)
    allowed = tuple(allowed)
    refused = [address for address in addresses if refusal(address, allowed) is not None]
    # A loopback name passes if one of its addresses is allowed: which of them it resolves
    # to is the machine's choice, checked when a delivery resolves it.
    if not refused or (name and len(refused) < len(addresses)):
        return None
    reason = f"{host} is a loopback name" if name else str(refusal(refused[0], allowed))
    return (
        f"{reason}: the sink would refuse to connect to it. If this receiver is meant to be "
        f"internal, allow its address in this sink's table: {allow_hint(refused)}"
    )


def _host_addresses(host: str) -> tuple[list[IPAddress], bool]:
    """The addresses ``host`` stands for without asking DNS, and whether it is a name."""
    try:
        return [ipaddress.ip_address(host)], False
    except ValueError:
        pass
    if _LEGACY_IPV4.fullmatch(host):  # 127.1, 2130706433, 0x7f.1: what resolvers accept
        try:
            return [ipaddress.IPv4Address(socket.inet_aton(host))], False
        except OSError:
            return [], False
    lowered = host.lower().rstrip(".")
    if lowered == "localhost" or lowered.endswith(".localhost"):  # RFC 6761
        return [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")], True
    return [], False


_LEGACY_IPV4 = re.compile(r"(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}", re.IGNORECASE)
