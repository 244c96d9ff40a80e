"""The ``webhook`` sink: each event is POSTed to a URL, signed as Standard Webhooks says.

    [sinks.billing]
    type = "webhook"
    url = "https://billing.example.com/hooks/outbox"
    secret = { env = "BILLING_WEBHOOK_SECRET" }    # or a list of them while rotating
    # headers = { "x-tenant" = "acme" }
    # timeout = 15.0               # seconds for the whole delivery, body included
    # connect_timeout = 5.0
    # max_response_bytes = 65536   # the most of a response body ever read
    # concurrency = 16             # requests in flight at once
    # allowed_networks = []        # e.g. ["10.20.0.0/16"] for an internal receiver
    # verify_tls = true

The request body is JSON, in the shape Standard Webhooks recommends, with the event id
and key added at the top level::

    {"type": "<topic>", "timestamp": "<created_at, RFC 3339, UTC>", "data": <payload>,
     "id": "<event id>", "key": "<key>" | null}

``id`` is a string, equal to the ``webhook-id`` header, so that ids above 2**53 survive
JavaScript receivers. Headers: ``content-type: application/json``, ``webhook-id`` (the event
id, the same on every attempt: the receiver's idempotency key), ``webhook-timestamp``
(when this attempt was made, Unix seconds) and ``webhook-signature``: one
``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` per secret, space separated. The
bytes signed are the bytes sent. ``traceparent`` and ``tracestate`` are forwarded from the
event's headers; no other event header is.

Secrets must be written ``whsec_<base64>`` (the key is the decoded part, 24 to 64 bytes, as
the standard asks). Bare base64 is refused because it cannot be told apart from a password
pasted by mistake (``password`` is valid base64). List several secrets to rotate: every
request carries one signature per secret, so the receiver can switch keys at its own pace.

Answers: 2xx is success; 410 is :class:`~outbox.SinkGone`; 408, 409, 425, 429 and 5xx are
retried, honouring ``Retry-After`` (capped at a day); every other status, redirects
included, is permanent. Redirects are never followed. Network errors and the overall
``timeout`` are retryable.

Addresses: the host is resolved when a connection is opened and the connection goes to the
address that was checked. Loopback, private, link-local, site-local, multicast, reserved,
unspecified and shared (100.64/10) addresses are refused (a permanent error naming the
address, before any connection is attempted), also when an IPv6 address maps or tunnels to
one (``::ffff:127.0.0.1``, 6to4, Teredo), unless ``allowed_networks`` lists them. TLS
certificates are verified against the URL's host name, never the address.

``user:password@`` in the URL is sent as HTTP basic authentication; errors show the URL
without credentials or query. At most ``concurrency`` requests are in flight; the others of
a batch wait their turn, so the relay's ``delivery_timeout`` (which bounds a whole batch)
should exceed about ``batch_size / concurrency * timeout``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime as dt
import email.utils
import hashlib
import hmac
import ipaddress
import json
import math
import re
import socket
import ssl
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Iterable,
    Mapping,
    Sequence,
)
from typing import Annotated, Any, ClassVar, Literal, cast

import httpcore
import httpx
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    SecretStr,
    field_validator,
    model_validator,
)

from outbox import __version__
from outbox.exceptions import PermanentError, RetryableError, SinkGone
from outbox.hookspecs import RegisterSink, hookimpl
from outbox.settings import Secret
from outbox.sinks import Event, Sink

__all__ = [
    "MAX_RETRY_AFTER",
    "WebhookOptions",
    "WebhookSink",
    "classify_status",
    "connect_address",
    "envelope",
    "parse_retry_after",
    "refusal",
    "sign",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_RETRY_AFTER = 24 * 3600.0
"""A ``Retry-After`` longer than this (seconds) is cut to it."""

_SECRET_PREFIX = "whsec_"
_RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "transfer-encoding", "host", "connection"}
)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")
_TRACE_HEADERS = ("traceparent", "tracestate")
_SNIPPET = 200


# -- options ---------------------------------------------------------------------------------


def _webhook_key(secret: SecretStr) -> SecretStr:
    text = secret.get_secret_value().strip()
    if not text.startswith(_SECRET_PREFIX):
        raise ValueError("a webhook secret is written 'whsec_' followed by base64")
    encoded = text.removeprefix(_SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError("the part of the secret after 'whsec_' is not base64") from None
    if not 24 <= len(key) <= 64:
        raise ValueError(f"the secret's key is {len(key)} bytes; it must be 24 to 64")
    return SecretStr(text)


def _one_or_many(value: Any) -> Any:
    return value if isinstance(value, list | tuple) else [value]


def _header_name(name: str) -> str:
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid header name")
    lowered = name.lower()
    if lowered.startswith("webhook-") or lowered in _RESERVED_HEADERS:
        raise ValueError(f"header {name!r} is set by the sink and cannot be configured")
    return name


def _header_value(value: str) -> str:
    if not _HEADER_VALUE.fullmatch(value):
        raise ValueError("a header value is printable ASCII (no CR, LF or other controls)")
    return value


WebhookSecret = Annotated[Secret, AfterValidator(_webhook_key)]
HeaderName = Annotated[str, AfterValidator(_header_name)]
HeaderValue = Annotated[str, AfterValidator(_header_value)]


class WebhookOptions(BaseModel):
    """``[sinks.NAME]`` of ``type = "webhook"``."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)  # secrets

    url: str = Field(description="Where events are POSTed; http:// or https:// only.")
    secret: Annotated[list[WebhookSecret], BeforeValidator(_one_or_many)] = Field(
        min_length=1,
        max_length=8,
        description="Signing secret 'whsec_<base64>', or a list of them while rotating; "
        'each is { env = "NAME" }, { file = "path" } or the value itself.',
    )
    headers: dict[HeaderName, HeaderValue] = Field(
        default_factory=dict,
        description="Extra request headers. webhook-*, content-type, content-length, "
        "transfer-encoding, host and connection are the sink's own.",
    )
    timeout: float = Field(
        15.0, gt=0, le=3600, description="Seconds for a whole delivery: connect, send, read."
    )
    connect_timeout: float = Field(
        5.0, gt=0, description="Seconds to open a connection (within timeout)."
    )
    max_response_bytes: int = Field(
        64 * 1024, ge=0, description="The most of a response body ever read."
    )
    concurrency: int = Field(16, ge=1, le=1024, description="Requests in flight at once.")
    allowed_networks: list[IPvAnyNetwork] = Field(
        default_factory=list,
        description="Non-public addresses the sink may connect to anyway, e.g. "
        '["10.20.0.0/16"]; ["0.0.0.0/0", "::/0"] turns the address check off.',
    )
    verify_tls: bool = Field(True, description="Verify the server's TLS certificate.")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        try:
            url = httpx.URL(value)
        except httpx.InvalidURL as error:
            raise ValueError(f"not a valid URL: {error}") from None
        if url.scheme not in ("http", "https"):
            raise ValueError(f"the URL must be http:// or https://, not {url.scheme or 'none'}")
        if not url.host:
            raise ValueError("the URL has no host")
        return value

    @model_validator(mode="after")
    def _timeouts(self) -> WebhookOptions:
        if self.connect_timeout > self.timeout:
            raise ValueError("connect_timeout cannot be longer than timeout")
        return self


# -- pure rules ------------------------------------------------------------------------------

Verdict = Literal["ok", "retry", "permanent", "gone"]

_RETRYABLE_4XX = frozenset({408, 409, 425, 429})


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
    """The request body for ``event`` (see the module docstring for its shape)."""
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


def _trace_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The W3C trace context headers among ``headers``, if they are safe to send."""
    found = {}
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in _TRACE_HEADERS and _plain_ascii(value) and len(value) <= 512:
            found[lowered] = value
    return found


def _plain_ascii(value: object) -> bool:
    return isinstance(value, str) and value.isascii() and value.isprintable()


def _snippet(body: bytes) -> str:
    text = " ".join(body[: _SNIPPET * 4].decode("utf-8", "replace").split())
    return text if len(text) <= _SNIPPET else text[:_SNIPPET] + "…"


# -- the network: checked addresses, plain asyncio streams, one origin's connections -------
#
# The request path is httpx's transport (request building, httpcore's HTTP/1.1, error
# mapping) with two parts of httpcore replaced, and without httpx's client on top:
#
# * _CheckedBackend opens connections. It resolves the host, refuses addresses that are not
#   public, and connects to the address it checked, so DNS gets no second answer between the
#   check and the connect. The URL is left alone: Host, TLS SNI and certificate checks use
#   the real host name. It connects with asyncio directly: per-operation timeouts are
#   redundant under the sink's overall deadline, and anyio's cancel scopes around every read
#   and write cost a fifth of the sink's CPU time per delivery.
# * _Connections replaces httpcore's AsyncConnectionPool, which rescans (and polls) every
#   connection on each request and release: at 64 connections that cost more than the rest
#   of the delivery put together. The sink's semaphore bounds requests in flight, so this
#   pool never queues.
# * httpx.AsyncClient adds cookies, auth flows, redirects, event hooks and header merging,
#   none of which a webhook wants (it must not follow redirects nor keep cookies), for a
#   further fifth of the CPU time; the sink builds the request and calls the transport.
#
# bench/webhook_throughput.py measures the whole path.

_READ_HIGH_WATER = 256 * 1024


class _Protocol(asyncio.Protocol):
    """Receives for one connection: a buffer, end of stream, a waiter."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > _READ_HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof, self.error = True, exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def read(self, max_bytes: int) -> bytes:
        while not self.buffer and not self.eof:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self.buffer:
            data = bytes(self.buffer[:max_bytes])
            del self.buffer[:max_bytes]
            if self.transport is not None and not self.transport.is_reading():
                self.transport.resume_reading()
            return data
        if self.error is not None:
            raise httpcore.ReadError(str(self.error) or type(self.error).__name__)
        return b""


class _Stream(httpcore.AsyncNetworkStream):
    """One connection as httpcore sees it. Writes wait for the next read, so that a request's
    head and body leave in one segment."""

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._pending: list[bytes] = []

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        self._flush()
        return await self._protocol.read(max_bytes)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if buffer:
            self._pending.append(buffer)

    def _flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._transport.write(data)

    async def aclose(self) -> None:
        self._pending.clear()
        self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(
                    self._transport, self._protocol, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError:
            self._transport.abort()
            raise httpcore.ConnectTimeout(f"no TLS handshake within {timeout:g}s") from None
        except OSError as error:  # ssl.SSLError included
            self._transport.abort()
            raise httpcore.ConnectError(str(error)) from error
        assert isinstance(transport, asyncio.Transport)
        self._protocol.transport = transport
        return _Stream(transport, self._protocol)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # an idle keep-alive connection the server closed
            return bool(self._protocol.buffer) or self._protocol.eof
        names = {"client_addr": "sockname", "server_addr": "peername"}
        return self._transport.get_extra_info(names.get(info, info))


class _CheckedBackend(httpcore.AsyncNetworkBackend):
    """Opens connections only to addresses :func:`refusal` allows (see above)."""

    def __init__(self, allowed: Sequence[IPNetwork]) -> None:
        self.allowed = tuple(allowed)

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses, literal = await self._resolve(host, port)
        for address in addresses:
            reason = refusal(address, self.allowed)
            if reason is not None:
                where = "" if literal else f" ({host} resolves to it)"
                raise PermanentError(
                    f"refusing to connect: {reason}{where}; allowed_networks can allow it"
                )
        error: Exception | None = None
        for address in addresses:
            try:
                return await _open(connect_address(address), port, timeout, local_address)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as failure:
                error = failure
        assert error is not None
        raise error

    async def _resolve(self, host: str, port: int) -> tuple[list[IPAddress], bool]:
        """The host's addresses, and whether the host was an address already."""
        with contextlib.suppress(ValueError):
            return [ipaddress.ip_address(host)], True
        try:
            found = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except OSError as error:
            raise httpcore.ConnectError(f"cannot resolve {host}: {error}") from error
        addresses = [ipaddress.ip_address(info[4][0]) for info in found]
        if not addresses:
            raise httpcore.ConnectError(f"{host} has no address")
        return list(dict.fromkeys(addresses)), False

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise PermanentError("the webhook sink does not connect to Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def _open(
    address: IPAddress,
    port: int,
    timeout: float | None,  # noqa: ASYNC109
    local_address: str | None,
) -> _Stream:
    loop = asyncio.get_running_loop()
    local = (local_address, 0) if local_address else None
    try:
        async with asyncio.timeout(timeout):
            transport, protocol = await loop.create_connection(
                _Protocol, str(address), port, local_addr=local
            )
    except TimeoutError:
        raise httpcore.ConnectTimeout(f"no connection to {address} within {timeout:g}s") from None
    except OSError as error:
        raise httpcore.ConnectError(str(error) or f"cannot connect to {address}") from error
    assert isinstance(transport, asyncio.Transport)
    return _Stream(transport, protocol)


class _Connections:
    """Keep-alive connections to the sink's one origin, reused last in, first out."""

    def __init__(
        self, backend: _CheckedBackend, ssl_context: ssl.SSLContext, keepalive_expiry: float
    ) -> None:
        self._backend = backend
        self._ssl_context = ssl_context
        self._keepalive_expiry = keepalive_expiry
        self._idle: list[httpcore.AsyncHTTPConnection] = []
        self._open: set[httpcore.AsyncHTTPConnection] = set()
        self._closed = False

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        connection = await self._checkout(request.url.origin)
        try:
            response = await connection.handle_async_request(request)
        except BaseException:
            await self._discard(connection)
            raise
        assert isinstance(response.stream, AsyncIterable)
        return httpcore.Response(
            status=response.status,
            headers=response.headers,
            content=_Releasing(response.stream, self, connection),
            extensions=response.extensions,
        )

    async def _checkout(self, origin: httpcore.Origin) -> httpcore.AsyncHTTPConnection:
        if self._closed:
            raise RuntimeError("the webhook sink is closed")
        while self._idle:
            connection = self._idle.pop()
            if connection.is_idle() and not connection.has_expired():
                return connection
            await self._discard(connection)
        connection = httpcore.AsyncHTTPConnection(
            origin=origin,
            ssl_context=self._ssl_context,
            keepalive_expiry=self._keepalive_expiry,
            network_backend=self._backend,
        )
        self._open.add(connection)
        return connection

    async def release(self, connection: httpcore.AsyncHTTPConnection) -> None:
        if connection.is_idle() and connection in self._open:
            self._idle.append(connection)
        else:
            await self._discard(connection)

    async def _discard(self, connection: httpcore.AsyncHTTPConnection) -> None:
        self._open.discard(connection)
        await connection.aclose()

    async def aclose(self) -> None:
        self._closed = True
        connections, self._open, self._idle = self._open, set(), []
        for connection in connections:
            await connection.aclose()

    async def __aenter__(self) -> _Connections:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _Releasing:
    """A response body that gives its connection back once closed."""

    def __init__(
        self,
        stream: AsyncIterable[bytes],
        pool: _Connections,
        connection: httpcore.AsyncHTTPConnection,
    ) -> None:
        self._stream = stream
        self._pool = pool
        self._connection = connection

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            close = getattr(self._stream, "aclose", None)
            if close is not None:
                await close()
        finally:
            await self._pool.release(self._connection)


class _CheckedTransport(httpx.AsyncHTTPTransport):
    """httpx's own transport (request and error mapping) over :class:`_Connections`.

    httpx 0.28 takes neither a network backend nor a pool; ``AsyncHTTPTransport`` only
    adapts requests to and from its ``_pool``, so that is replaced. The isinstance check
    fails loudly should a future httpx change this.
    """

    def __init__(self, backend: _CheckedBackend, *, verify: bool) -> None:
        ssl_context = httpx.create_ssl_context(verify=verify, trust_env=False)
        super().__init__(verify=ssl_context, trust_env=False)
        if not isinstance(getattr(self, "_pool", None), httpcore.AsyncConnectionPool):
            raise RuntimeError("this httpx version is not supported by the webhook sink")
        keepalive = httpx.Limits().keepalive_expiry or 5.0
        self._pool = _Connections(backend, ssl_context, keepalive)  # type: ignore[assignment]


# -- the sink --------------------------------------------------------------------------------


class WebhookSink(Sink):
    """POSTs each event to one URL with Standard Webhooks signatures.

    ``transport`` replaces the network (and with it the address check), for tests.
    """

    Options: ClassVar[type[BaseModel]] = WebhookOptions

    def __init__(
        self, options: WebhookOptions, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        super().__init__()
        self.options = options
        self.concurrency = options.concurrency
        url = httpx.URL(options.url)
        self._url = url.copy_with(username=None, password=None, fragment=None)
        self._shown_url = str(self._url.copy_with(query=None))
        self._keys = [_key(secret) for secret in options.secret]
        self._headers = {
            "user-agent": f"outbox-relay/{__version__}",
            "accept": "*/*",
            "accept-encoding": "identity",  # the body read is capped: no decompression bombs
            **_basic_auth(url),
            **options.headers,
            "content-type": "application/json",
        }
        timeouts = httpx.Timeout(options.timeout, connect=options.connect_timeout)
        self._extensions = {"timeout": timeouts.as_dict()}
        self._slots = asyncio.Semaphore(options.concurrency)
        if transport is None:
            backend = _CheckedBackend([*options.allowed_networks])
            transport = _CheckedTransport(backend, verify=options.verify_tls)
        self._transport = transport

    async def deliver(self, event: Event) -> None:
        """POST ``event``; return once the receiver answered 2xx."""
        try:
            body = envelope(event)
        except (TypeError, ValueError) as error:
            raise PermanentError(f"event {event.id} cannot be sent as JSON: {error}") from None
        async with self._slots:
            timestamp = int(time.time())
            headers = {
                **self._headers,
                **_trace_headers(event.headers),
                "webhook-id": str(event.id),
                "webhook-timestamp": str(timestamp),
                "webhook-signature": sign(self._keys, str(event.id), timestamp, body),
            }
            status, response_headers, head = await self._post(body, headers)
        self._judge(status, response_headers, head)

    async def deliver_batch(self, events: Sequence[Event]) -> list[BaseException | None]:
        return list(await asyncio.gather(*(self._attempt(event) for event in events)))

    async def _attempt(self, event: Event) -> BaseException | None:
        try:
            await self.deliver(event)
        except Exception as error:
            return error
        return None

    async def _post(self, body: bytes, headers: dict[str, str]) -> tuple[int, httpx.Headers, bytes]:
        """Send, and read at most ``max_response_bytes`` of the answer, within ``timeout``.

        The one place where httpx's errors become the sink's."""
        timeout = self.options.timeout
        request = httpx.Request(
            "POST", self._url, headers=headers, content=body, extensions=self._extensions
        )
        try:
            async with asyncio.timeout(timeout):
                response = await self._transport.handle_async_request(request)
                try:
                    head = await _read_capped(response, self.options.max_response_bytes)
                finally:
                    await response.aclose()
        except TimeoutError:
            raise RetryableError(
                f"no complete answer from {self._shown_url} within {timeout:g}s"
            ) from None
        except httpx.TransportError as error:
            detail = str(error) or type(error).__name__
            raise RetryableError(f"{detail} ({self._shown_url})") from error
        return response.status_code, response.headers, head

    def _judge(self, status: int, headers: httpx.Headers, body: bytes) -> None:
        verdict = classify_status(status)
        if verdict == "ok":
            return
        message = f"HTTP {status} from {self._shown_url}"
        if 300 <= status < 400 and "location" in headers:
            message += f", redirect to {headers['location'][:_SNIPPET]} not followed"
        if body:
            message += f": {_snippet(body)}"
        if verdict == "gone":
            raise SinkGone(message)
        if verdict == "retry":
            now = dt.datetime.now(dt.UTC)
            retry_after = parse_retry_after(headers.get("retry-after"), now)
            raise RetryableError(message, retry_after=retry_after)
        raise PermanentError(message)

    async def aclose(self) -> None:
        await self._transport.aclose()


def _key(secret: SecretStr) -> bytes:
    encoded = secret.get_secret_value().removeprefix(_SECRET_PREFIX)
    return base64.b64decode(encoded + "=" * (-len(encoded) % 4))


def _basic_auth(url: httpx.URL) -> dict[str, str]:
    """``https://user:password@host/`` means HTTP basic authentication, as browsers do."""
    if not url.username and not url.password:
        return {}
    credentials = f"{url.username}:{url.password}".encode()
    return {"authorization": "Basic " + base64.b64encode(credentials).decode()}


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    """Up to ``limit`` bytes of the body; the rest is never read (the connection closes)."""
    chunks: list[bytes] = []
    size = 0
    if limit <= 0:
        return b""
    raw = cast(AsyncGenerator[bytes, None], response.aiter_raw())  # it is one
    async with contextlib.aclosing(raw) as stream:
        async for chunk in stream:
            chunks.append(chunk)
            size += len(chunk)
            if size >= limit:
                break
    return b"".join(chunks)[:limit]


@hookimpl
def outbox_register_sinks(register: RegisterSink) -> None:
    register("webhook", WebhookSink)
