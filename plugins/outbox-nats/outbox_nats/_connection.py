"""One NATS connection for a sink's life, and what a failure to connect or publish means.

nats-py reconnects by itself after a drop, but only for a few attempts (a blip); when the
server stays away the client gives up and closes, and the sink's next delivery connects
afresh. Meanwhile deliveries fail at once with a :class:`~outbox.RetryableError` that says
where and why ("cannot reach NATS at 127.0.0.1:4222: connection refused") rather than
queueing in the client's buffer, so the relay's backoff, not a hidden buffer, paces retries.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from outbox.exceptions import PermanentError, RetryableError

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 2.0
"""Seconds for one TCP connect and handshake; a delivery's deadline may shorten it."""
RECONNECT_WAIT = 0.25
"""Seconds between attempts at one server, when connecting and when reconnecting."""
RECONNECT_ATTEMPTS = 2
"""Attempts per server before nats-py gives up (and the sink connects afresh later)."""
FLUSH_TIMEOUT = 5.0
"""The most a publish waits for a full outgoing buffer to drain (nats-py: forever)."""


def describe_servers(servers: Sequence[str]) -> str:
    """``host:port`` of each server, comma separated: never a user, password or token."""
    addresses = []
    for server in servers:
        url = server if "://" in server else f"nats://{server}"
        try:
            parts = urlsplit(url)
            addresses.append(f"{parts.hostname or '?'}:{parts.port or 4222}")
        except ValueError:
            addresses.append("(an invalid URL)")
    return ", ".join(addresses)


def is_authorization_failure(error: BaseException) -> bool:
    """The server refused our credentials (nats-py raises its plain ``Error`` for it)."""
    return isinstance(error, nats.errors.AuthorizationError) or (
        "authorization violation" in str(error).lower()
    )


def _reason(error: BaseException | None) -> str:
    """Why a connection failed, in a few words, with no credentials in them."""
    if error is None:
        return "not connected"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, TimeoutError):  # nats.errors.TimeoutError included
        return "timed out"
    if isinstance(error, OSError) and error.errno is not None:
        return os.strerror(error.errno).lower() if error.errno != errno.ECONNRESET else "reset"
    text = str(error).removeprefix("nats: ").strip("'")
    return text or type(error).__name__


class Connection:
    """The sink's one NATS connection, made on first use and again after nats-py gives up.

    Concurrent deliveries share it; a lock makes sure only one of them connects.
    """

    def __init__(self, servers: Sequence[str], credentials: dict[str, Any]) -> None:
        self._servers = list(servers)
        self._credentials = credentials
        self.where = describe_servers(servers)
        self._client: Client | None = None
        self._jetstream: JetStreamContext | None = None
        self._last_error: BaseException | None = None
        self._lock = asyncio.Lock()

    async def jetstream(self, within: float | None) -> JetStreamContext:
        """The JetStream context of a live connection, connecting (``within`` seconds at
        most) if there is none; RetryableError, or PermanentError for refused credentials,
        if that fails."""
        client = self._client
        if client is not None and client.is_connected and self._jetstream is not None:
            return self._jetstream
        if client is not None and not client.is_closed:  # nats-py is reconnecting
            raise self.unreachable()
        try:
            async with asyncio.timeout(within), self._lock:
                if self._client is not None and self._client.is_connected:
                    assert self._jetstream is not None
                    return self._jetstream
                await self._close_client()
                return await self._connect(within)
        except TimeoutError:
            raise RetryableError(f"cannot reach NATS at {self.where}: timed out") from None

    def is_up(self) -> bool:
        """Connected now: not before the first delivery, nor while nats-py reconnects."""
        return self._client is not None and self._client.is_connected

    def unreachable(self, error: BaseException | None = None) -> RetryableError:
        """The error of a delivery that found no connection: where, and the latest reason."""
        reason = _reason(error or self._last_error)
        return RetryableError(f"cannot reach NATS at {self.where}: {reason}")

    async def _connect(self, within: float | None) -> JetStreamContext:
        client = Client()
        connect_timeout = CONNECT_TIMEOUT if within is None else min(CONNECT_TIMEOUT, within)
        self._last_error = None
        try:
            await client.connect(
                servers=self._servers,
                error_cb=self._on_error,
                connect_timeout=connect_timeout,  # type: ignore[arg-type]  # a float works
                reconnect_time_wait=RECONNECT_WAIT,  # type: ignore[arg-type]
                max_reconnect_attempts=RECONNECT_ATTEMPTS,
                flush_timeout=FLUSH_TIMEOUT,
                allow_reconnect=True,
                **self._credentials,
            )
            jetstream = client.jetstream()
            # A first request sets up the client's reply subscription now: left to the first
            # batch, its events' concurrent publishes could reach the wire out of order.
            await jetstream.account_info()
        except BaseException as error:
            await _close_quietly(client)
            raise self._connect_failure(error) from None
        self._client, self._jetstream = client, jetstream
        return jetstream

    def _connect_failure(self, error: BaseException) -> BaseException:
        cause = self._last_error if isinstance(error, nats.errors.NoServersError) else error
        if cause is not None and is_authorization_failure(cause):
            return PermanentError(f"NATS at {self.where} refused the credentials: {_reason(cause)}")
        if isinstance(error, nats.js.errors.ServiceUnavailableError):
            return PermanentError(f"JetStream is not enabled on NATS at {self.where}")
        if isinstance(error, Exception):
            return self.unreachable(cause)
        return error  # a cancellation goes on as it is

    async def _on_error(self, error: Exception) -> None:
        """nats-py's report of a failed attempt or a dropped connection: kept for the next
        error message (the default callback would log a traceback per attempt)."""
        self._last_error = error
        logger.debug("NATS at %s: %s", self.where, _reason(error))

    async def aclose(self) -> None:
        async with self._lock:
            await self._close_client()

    async def _close_client(self) -> None:
        client, self._client, self._jetstream = self._client, None, None
        if client is not None:
            await _close_quietly(client)


async def _close_quietly(client: Client) -> None:
    """Close ``client``, whatever state it is in; a failure to close changes nothing."""
    try:
        await client.close()
    except Exception as error:
        logger.debug("closing a NATS connection failed: %s", error)
