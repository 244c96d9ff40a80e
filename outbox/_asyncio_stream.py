"""httpcore network streams on plain asyncio sockets, for the webhook sink's transport.

httpcore's own backends wrap every read and write in an anyio cancel scope with its own
timeout; under the webhook transport's one deadline for a whole delivery those are redundant,
and they cost a fifth of the sink's CPU time per delivery (decision 0005). These streams take
no per-operation timeout but the connect (and TLS handshake) one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from typing import Any

import httpcore

__all__ = ["AsyncioStream", "open_stream"]

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


class AsyncioStream(httpcore.AsyncNetworkStream):
    """One connection as httpcore sees it. Writes wait for the next read, so that a request's
    head and body leave in one segment. ``connect_timeout`` bounds a TLS handshake that
    httpcore asks for without a timeout of its own."""

    def __init__(
        self, transport: asyncio.Transport, protocol: _Protocol, connect_timeout: float | None
    ) -> None:
        self._transport = transport
        self._protocol = protocol
        self._connect_timeout = connect_timeout
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
        timeout = self._connect_timeout if timeout is None else timeout
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
        return AsyncioStream(transport, self._protocol, self._connect_timeout)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # an idle keep-alive connection the server closed
            return bool(self._protocol.buffer) or self._protocol.eof
        names = {"client_addr": "sockname", "server_addr": "peername"}
        return self._transport.get_extra_info(names.get(info, info))


async def open_stream(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
    port: int,
    timeout: float | None,  # noqa: ASYNC109
    local_address: str | None = None,
) -> AsyncioStream:
    """A connection to ``address`` (never a host name: nothing is resolved here)."""
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
    return AsyncioStream(transport, protocol, timeout)
