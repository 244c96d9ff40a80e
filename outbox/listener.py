"""The listener: wakes the relay's workers when an event is published.

One connection LISTENs on the channel :func:`outbox.publish` notifies, and every
notification sets the workers' wake-up event. Each time it (re)connects it wakes them
anyway, to catch up on what was published while it was not listening. A silent network
failure shows up in the round trip it makes between waits; a lost connection, or any error
the server sends, has it open a new one, with backoff.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from outbox.exceptions import DatabaseError
from outbox.reconnects import reconnect_delay
from outbox.store import Connection, Connector, Store, close_quietly, describe

SINKS_CHANGED = "sinks"
"""The payload with which ``outbox.sink_switches`` tells relays to read the switches now."""

logger = logging.getLogger(__name__)


class Listener:
    """Forwards NOTIFYs on ``channel`` to ``wake`` until ``stopping`` is set."""

    def __init__(
        self,
        store: Store,
        connector: Connector,
        *,
        channel: str,
        poll_interval: float,
        wake: asyncio.Event,
        stopping: asyncio.Event,
        sinks_changed: Callable[[], None],
    ) -> None:
        self._store = store
        self._connector = connector
        self._channel = channel
        self._poll_interval = poll_interval
        self._wake = wake
        self._stopping = stopping
        self._sinks_changed = sinks_changed
        self.listening = False
        """True while the LISTEN connection is up."""

    async def run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            conn: Connection | None = None
            try:
                conn = await self._connector.connect()
                await self._store.listen(conn, self._channel)
                self.listening, failures = True, 0
                logger.info("listening on channel %s", self._channel)
                self._wake.set()  # catch up on what was published while not listening
                await self._forward_notifications(conn)
            except DatabaseError as error:  # lost, or any error the server sent: reconnect
                failures += 1
                logger.warning(
                    "listener failed (%s); reconnecting",
                    describe(error),
                    extra={"relay": self._connector.relay},
                )
            finally:
                self.listening = False
                await close_quietly(conn)
            await asyncio.sleep(reconnect_delay(failures))

    async def _forward_notifications(self, conn: Connection) -> None:
        while not self._stopping.is_set():
            async for payload in self._store.notifications(conn, seconds=self._poll_interval * 10):
                if payload == SINKS_CHANGED:  # a sink paused, resumed, disabled or enabled
                    self._sinks_changed()
                self._wake.set()
            await self._store.ping(conn)  # a silent network failure shows up here
