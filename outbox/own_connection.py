"""A connection of the relay's own beside its workers' (lock mode's claim journal, the rate
limiter's buckets): opened when first used, one statement at a time, and closed after any
error the server sends, so that the next use opens it again."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

from outbox.exceptions import DatabaseError
from outbox.store import Connection, Connector, close_quietly


class OwnConnection:
    """``connector``'s connection, set up by ``prepare`` each time it is opened."""

    def __init__(
        self,
        connector: Connector,
        prepare: Callable[[Connection], Awaitable[None]] | None = None,
    ) -> None:
        self._connector = connector
        self._prepare = prepare
        self._conn: Connection | None = None
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[Connection]:
        """The connection, for this caller alone until the block ends; a DatabaseError
        raised in the block closes it and goes on."""
        async with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = await self._connector.connect()
                    if self._prepare is not None:
                        await self._prepare(self._conn)
                yield self._conn
            except DatabaseError:
                await self._close()
                raise

    async def aclose(self) -> None:
        async with self._lock:
            await self._close()

    async def _close(self) -> None:
        await close_quietly(self._conn)
        self._conn = None
