"""The webhook sink's network: an httpx transport to one origin that connects only to the
addresses it checked, reads at most a capped part of each answer, and finishes each request
within one deadline. Network and HTTP errors become the library's own here, and only here.

The request path is httpx's transport (request building, httpcore's HTTP/1.1, error
mapping) with two parts of httpcore replaced, and without httpx's client on top (decision
0005):

* :class:`_CheckedBackend` opens connections. It resolves the host, refuses addresses that
  are not public, and connects to the address it checked, so DNS gets no second answer
  between the check and the connect. The URL is left alone: Host, TLS SNI and certificate
  checks use the real host name. It connects with asyncio directly
  (:mod:`outbox._asyncio_stream`).
* :class:`_Connections` replaces httpcore's AsyncConnectionPool, which rescans (and polls)
  every connection on each request and release: at 64 connections that cost more than the
  rest of the delivery put together. The sink bounds requests in flight, so this pool never
  queues.
* httpx.AsyncClient adds cookies, auth flows, redirects, event hooks and header merging,
  none of which a webhook wants (it must not follow redirects nor keep cookies), for a
  further fifth of the CPU time; the sink builds the request and calls the transport.

bench/webhook_throughput.py measures the whole path.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Sequence
from typing import Any, cast

import httpcore
import httpx

from outbox._asyncio_stream import open_stream
from outbox._webhook_rules import (
    IPAddress,
    IPNetwork,
    allow_hint,
    connect_address,
    redact,
    refusal,
    shown_url,
)
from outbox.exceptions import PermanentError, RetryableError

__all__ = ["WebhookTransport"]


class WebhookTransport(httpx.AsyncBaseTransport):
    """Sends each request within ``timeout`` seconds, body read included, and answers with
    at most ``max_response_bytes`` of the response body (the rest is never read), in an
    unread in-memory stream.

    Raises :class:`~outbox.RetryableError` for a network failure, the deadline, and an
    address it refuses to connect to (one that is not public, unless ``allowed_networks``
    holds it): configuration can change that answer, so the event waits for it rather than
    failing. ``network`` replaces the network, and with it the address check, for tests.
    Error messages show the URL as :func:`~outbox._webhook_rules.shown_url` does
    (``url_is_secret``: without its path).
    """

    def __init__(
        self,
        *,
        timeout: float,
        connect_timeout: float,
        max_response_bytes: int,
        allowed_networks: Sequence[IPNetwork] = (),
        verify_tls: bool = True,
        url_is_secret: bool = True,
        network: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._timeout = timeout
        self._url_is_secret = url_is_secret
        self._max_response_bytes = max_response_bytes
        if network is None:
            backend = _CheckedBackend(allowed_networks, connect_timeout)
            network = _CheckedTransport(backend, verify=verify_tls)
        self._network = network

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            async with asyncio.timeout(self._timeout):
                response = await self._network.handle_async_request(request)
                try:
                    body = await _read_capped(response, self._max_response_bytes)
                finally:
                    await response.aclose()
        except TimeoutError:
            shown = shown_url(request.url, secret=self._url_is_secret)
            raise RetryableError(
                f"no complete answer from {shown} within {self._timeout:g}s"
            ) from None
        except httpx.TransportError as error:
            # httpx's messages may quote the URL: redacted here, the one place they arrive,
            # and not chained, so that a logged traceback cannot show the original.
            secret = self._url_is_secret
            detail = redact(str(error) or type(error).__name__, request.url, secret=secret)
            shown = shown_url(request.url, secret=secret)
            raise RetryableError(f"{detail} ({shown})") from None
        # An unread stream: reading content here would cost more than the rest of the
        # answer's handling, and a 2xx answer's body is never looked at.
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=httpx.ByteStream(body),
            request=request,
        )

    async def aclose(self) -> None:
        await self._network.aclose()


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


# -- connections: checked addresses, one origin, reused last in, first out ----------------------


class _CheckedBackend(httpcore.AsyncNetworkBackend):
    """Opens connections only to addresses :func:`refusal` allows, within
    ``connect_timeout`` seconds (the TLS handshake included)."""

    def __init__(self, allowed: Sequence[IPNetwork], connect_timeout: float) -> None:
        self.allowed = tuple(allowed)
        self.connect_timeout = connect_timeout

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
                # Retryable: the name may resolve elsewhere later, or the operator allow it;
                # a permanent failure would park the event's key for a fixable setting.
                raise RetryableError(
                    f"refusing to connect: {reason}{where}; if the receiver is meant to be "
                    f"internal, add {allow_hint([address])} to this sink's configuration "
                    "and restart the relays"
                )
        timeout = self.connect_timeout if timeout is None else timeout
        error: Exception | None = None
        for address in addresses:
            try:
                return await open_stream(connect_address(address), port, timeout, local_address)
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
