"""Maintenance: what a relay does every ``maintenance_interval`` besides relaying.

Each round, on a connection of its own: reload which sinks are disabled, make rows whose
lease expired claimable again (their relay died or stalled), delete ``done`` rows older
than the retention a bounded batch at a time, and, if the observer wants it, sample the
backlog. A round that reaches the database is what the relay's readiness reports; a lost
connection is opened again at the next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from outbox.exceptions import DatabaseUnavailable
from outbox.observer import RelayObserver
from outbox.store import Connection, Connector, Store, close_quietly

logger = logging.getLogger(__name__)

_PURGE_ROUNDS = 100
"""At most this many retention batches per round; what is left waits for the next one."""


class Maintenance:
    """Runs maintenance rounds until ``stopping`` is set (or the task is cancelled)."""

    def __init__(
        self,
        store: Store,
        connector: Connector,
        *,
        interval: float,
        max_attempts: int,
        retention_seconds: float,
        retention_batch: int,
        observer: RelayObserver,
        disabled_sinks: Callable[[set[str]], None],
        wake: asyncio.Event,
        stopping: asyncio.Event,
    ) -> None:
        self._store = store
        self._connector = connector
        self._interval = interval
        self._max_attempts = max_attempts
        self._retention_seconds = retention_seconds
        self._retention_batch = retention_batch
        self._observer = observer
        self._disabled_sinks = disabled_sinks
        self._wake = wake
        self._stopping = stopping
        self.database_seen: float | None = None
        """``time.monotonic()`` of the last round that reached the database."""

    async def run(self) -> None:
        conn: Connection | None = None
        try:
            while not self._stopping.is_set():
                try:
                    if conn is None or conn.closed:
                        conn = await self._connector.connect()
                    await self._round(conn)
                    self.database_seen = time.monotonic()
                except DatabaseUnavailable as error:
                    await close_quietly(conn)
                    conn = None
                    logger.warning("maintenance connection lost: %s", error)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._interval):
                        await self._stopping.wait()
        finally:  # the relay cancels this task: close on the way out
            await close_quietly(conn)

    async def _round(self, conn: Connection) -> None:
        self._disabled_sinks(await self._store.disabled_sinks(conn))
        await self._recover(conn)
        await self._purge(conn)
        if self._observer.wants_backlog:
            self._observer.backlog(*await self._store.backlog(conn))

    async def _recover(self, conn: Connection) -> None:
        recovered = await self._store.recover_expired(conn, max_attempts=self._max_attempts)
        relay = self._connector.relay
        for event_id, status in recovered:
            logger.warning(
                "lease expired for event %d: now %s",
                event_id,
                status,
                extra={"event_id": event_id, "relay": relay},
            )
        if recovered:
            self._wake.set()

    async def _purge(self, conn: Connection) -> None:
        total = 0
        for _ in range(_PURGE_ROUNDS):
            deleted = await self._store.purge_done(
                conn, keep_seconds=self._retention_seconds, limit=self._retention_batch
            )
            total += deleted
            if deleted < self._retention_batch:
                break
        if total:
            logger.info("retention deleted %d done events", total)
