"""The webhook sink's rules, apart from any I/O: what an answer means, how long a
``Retry-After`` asks to wait, the request body, its signature and the secrets that sign it.

Nothing here sleeps, reads a clock or opens a socket; :mod:`outbox.webhook_sink` says how
each rule is used.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email.utils
import hashlib
import hmac
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Literal

import httpx

from outbox.exceptions import PermanentError, RetryableError, SinkError, SinkGone
from outbox.sinks import Event

__all__ = [
    "MAX_RETRY_AFTER",
    "Verdict",
    "answer_error",
    "classify_status",
    "envelope",
    "parse_retry_after",
    "redact",
    "secret_key",
    "shown_url",
    "sign",
    "trace_headers",
    "url_problem",
]

MAX_RETRY_AFTER = 24 * 3600.0
"""A ``Retry-After`` longer than this (seconds) is cut to it."""

Verdict = Literal["ok", "retry", "permanent", "gone"]

_RETRYABLE_4XX = frozenset({408, 409, 425, 429})
_SECRET_PREFIX = "whsec_"
_TRACE_HEADERS = ("traceparent", "tracestate")
_SNIPPET = 200


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


def trace_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The W3C trace context headers among ``headers``, if they are safe to send."""
    found = {}
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in _TRACE_HEADERS and _plain_ascii(value) and len(value) <= 512:
            found[lowered] = value
    return found


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


def _plain_ascii(value: object) -> bool:
    return isinstance(value, str) and value.isascii() and value.isprintable()


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
