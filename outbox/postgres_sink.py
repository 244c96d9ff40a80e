"""The ``postgres`` sink: each event becomes a row of a table in another schema or database.

    [sinks.audit]
    type = "postgres"
    schema = "audit"
    table = "events"
    # dsn = { env = "AUDIT_DATABASE_URL" }   # another database; omit for the outbox's own
    create_table = true

System schemas (``pg_*``, ``information_schema``) and the outbox's own table names
(``outbox_events``, ``outbox_sinks``, ``outbox_migrations``, ``outbox_claims``, in any schema)
are refused.

The table has one row per event, keyed by ``event_id``, so a repeated delivery changes
nothing. Without ``dsn`` the insert runs inside the transaction that marks the event
``done``: the row appears exactly once, even if the relay dies between the two.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any, ClassVar

import psycopg
from psycopg import sql
from pydantic import BaseModel, ConfigDict, Field, field_validator

from outbox._identifiers import validate_identifier
from outbox._queries import render
from outbox._urls import libpq_url
from outbox.exceptions import PermanentError, RetryableError
from outbox.hookspecs import RegisterSink, hookimpl
from outbox.secrets import Secret
from outbox.sinks import Event, Sink, timed_out

# The outbox's own tables (outbox/schema.py): a sink writing into them would corrupt the bus.
_OUTBOX_TABLES = frozenset({"outbox_events", "outbox_sinks", "outbox_migrations", "outbox_claims"})


class PostgresOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    db_schema: str = Field("public", alias="schema", description="Schema of the target table.")
    table: str = Field(description="Name of the target table.")
    dsn: Secret | None = Field(None, description="Another database; omit for the outbox's own.")
    create_table: bool = Field(True, description="Create the schema and table if missing.")

    @field_validator("db_schema", "table")
    @classmethod
    def _identifier(cls, value: str) -> str:
        return validate_identifier(value, "identifier")

    @field_validator("db_schema")
    @classmethod
    def _not_a_system_schema(cls, value: str) -> str:
        lowered = value.lower()
        if lowered.startswith("pg_") or lowered == "information_schema":
            raise ValueError(f"{value!r} is a system schema; choose a schema of your own")
        return value

    @field_validator("table")
    @classmethod
    def _not_an_outbox_table(cls, value: str) -> str:
        # The options do not know the outbox's schema: refuse these names in every schema.
        if value.lower() in _OUTBOX_TABLES:
            raise ValueError(
                f"{value!r} is the name of the outbox's own table; choose another table"
            )
        return value


class PostgresSink(Sink):
    """Writes events into a table, idempotently on the event id."""

    Options: ClassVar[type[BaseModel]] = PostgresOptions

    def __init__(self, options: PostgresOptions) -> None:
        super().__init__()
        self._options = options
        self.transactional = options.dsn is None
        target = sql.Identifier(options.db_schema, options.table)
        self._create = render(
            "create_sink_table",
            lock_key=sql.Literal(f"outbox-sink:{options.db_schema}.{options.table}"),
            target_schema=sql.Identifier(options.db_schema),
            target=target,
        )
        self._insert = render("insert_sink_rows", target=target)
        self._created = not options.create_table
        self._conn: psycopg.AsyncConnection[Any] | None = None
        # One connection, one transaction at a time: concurrent batches would nest as
        # savepoints of each other and open a connection each on first use.
        self._lock = asyncio.Lock()

    async def deliver(self, event: Event) -> None:
        errors = await self.deliver_batch([event])
        if errors[0] is not None:
            raise errors[0]

    async def deliver_in_transaction(
        self, conn: psycopg.AsyncConnection[Any], events: Sequence[Event]
    ) -> list[BaseException | None]:
        await self._write(conn, events)
        return [None] * len(events)

    async def deliver_batch(
        self,
        events: Sequence[Event],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the base class's signature)
    ) -> list[BaseException | None]:
        """Write ``events`` in one transaction, all within the shorter of ``timeout`` and
        :attr:`delivery_timeout` (waiting for an earlier batch included), or none of them."""
        deadline = self.deadline(timeout)
        cutoff = asyncio.timeout(deadline)
        try:
            async with cutoff, self._lock:
                return await self._deliver_batch(events)
        except TimeoutError:
            if not cutoff.expired():
                raise
            # psycopg cancelled the statement on the server; the transaction rolled back.
            return [timed_out(deadline)] * len(events)

    async def _deliver_batch(self, events: Sequence[Event]) -> list[BaseException | None]:
        try:
            conn = await self._connection()
            async with conn.transaction():
                await self._write(conn, events)
        except psycopg.OperationalError as error:
            await self._close()
            return [RetryableError(f"postgres sink: {error}")] * len(events)
        except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as error:
            return [PermanentError(f"postgres sink: {error}")] * len(events)
        except psycopg.Error as error:
            return [RetryableError(f"postgres sink: {error}")] * len(events)
        return [None] * len(events)

    async def _write(self, conn: psycopg.AsyncConnection[Any], events: Sequence[Event]) -> None:
        if not self._created:
            async with conn.transaction():
                await conn.execute(self._create)
            self._created = True
        try:
            await conn.execute(self._insert, {"rows": _rows_json(events)})
        except psycopg.errors.UndefinedTable:
            # The transaction that created the table was rolled back: create it next time.
            self._created = not self._options.create_table
            raise

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            assert self._options.dsn is not None
            url = libpq_url(self._options.dsn.get_secret_value())
            self._conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
        return self._conn

    async def aclose(self) -> None:
        async with self._lock:
            await self._close()

    async def _close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()


def _rows_json(events: Sequence[Event]) -> str:
    return json.dumps(
        [
            {
                "event_id": event.id,
                "topic": event.topic,
                "key": event.key,
                "payload": event.payload,
                "headers": dict(event.headers),
                "created_at": event.created_at.isoformat(),
            }
            for event in events
        ]
    )


@hookimpl
def outbox_register_sinks(register: RegisterSink) -> None:
    register("postgres", PostgresSink)
