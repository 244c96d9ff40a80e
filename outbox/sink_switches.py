"""The operator's switches for a sink: pause, resume, disable, enable (``outbox sinks ...``).

A held sink (paused, or disabled by an operator or by a ``410 Gone``) is called for nothing:
its deliveries wait, counting no attempt, and every other sink receives every event as if it
did not exist (docs/decisions/0011-sinks-held-independently.md). Switching it back on makes
its waiting deliveries due at once, with no ``outbox retry``. Relays read the switches every
maintenance round, and at once when told (a NOTIFY on the relays' channel, payload
``sinks``); a batch already in flight finishes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import psycopg

from outbox import _queries
from outbox.store import driver_errors

Connection = psycopg.AsyncConnection[Any]


@dataclasses.dataclass(frozen=True)
class Switches:
    """The switches of the sinks in ``schema``, telling the relays on ``channel``."""

    schema: str = "public"
    channel: str = "outbox"

    async def pause(self, conn: Connection, name: str, reason: str | None = None) -> bool:
        """Pause sink ``name``; False if it already was."""
        record = await self._switch(conn, "pause_sink", {"name": name, "reason": reason})
        return bool(record and record[0])

    async def resume(self, conn: Connection, name: str) -> bool:
        """Resume sink ``name`` (its waiting deliveries flow unless it is also disabled);
        False if it was not paused."""
        return await self._switch(conn, "resume_sink", {"name": name}) is not None

    async def disable(
        self, conn: Connection, name: str, reason: str = "disabled by an operator"
    ) -> None:
        """Disable sink ``name``, keeping the first reason if it already was."""
        await self._switch(conn, "disable_sink", {"name": name, "reason": reason})

    async def enable(self, conn: Connection, name: str) -> bool:
        """Enable sink ``name`` (its waiting deliveries flow unless it is also paused);
        False if it was not disabled."""
        return await self._switch(conn, "enable_sink", {"name": name}) is not None

    async def _switch(
        self, conn: Connection, statement: str, params: dict[str, Any]
    ) -> tuple[Any, ...] | None:
        statements = _queries.for_schema(self.schema)
        with driver_errors():
            async with conn.transaction():
                cursor = await conn.execute(statements[statement], params)
                record = await cursor.fetchone() if cursor.description else None
                await conn.execute(statements["sinks_changed"], {"channel": self.channel})
        return record
