"""Callable sinks for the chaos test, imported by relay processes (this directory is put on
their PYTHONPATH).

Each sink fails a share of its calls at random and records every success in the
``chaos_received`` table (created by ``test_chaos.py``) on a connection of its own, so the
test can check what each sink really received, in which order, and how often. Configured
by the environment:

``CHAOS_SINK_DATABASE_URL``   where ``chaos_received`` lives (required)
``CHAOS_SINK_FAILURE_RATE``   share of calls that raise ``RetryableError`` (default 0)
"""

from __future__ import annotations

import asyncio
import os
import random

import psycopg

from outbox import RetryableError
from outbox.sinks import Event

_INSERT = """
INSERT INTO chaos_received (sink, event_id, key, attempt, relay_pid) VALUES (%s, %s, %s, %s, %s)
"""

_connection: psycopg.AsyncConnection[tuple[object, ...]] | None = None
_connecting = asyncio.Lock()


async def _conn() -> psycopg.AsyncConnection[tuple[object, ...]]:
    global _connection
    async with _connecting:
        if _connection is None or _connection.closed:
            _connection = await psycopg.AsyncConnection.connect(
                os.environ["CHAOS_SINK_DATABASE_URL"],
                autocommit=True,
                application_name="chaos-sink",
            )
            # The record is the test's instrument: waiting for a WAL flush per insert would
            # make every delivery slow enough to time out on a busy machine.
            await _connection.execute("SET synchronous_commit = off")
        return _connection


async def _record(sink: str, event: Event) -> None:
    if random.random() < float(os.environ.get("CHAOS_SINK_FAILURE_RATE", "0")):
        raise RetryableError("chaos: injected failure")
    conn = await _conn()
    try:
        await conn.execute(_INSERT, (sink, event.id, event.key, event.attempt, os.getpid()))
    except psycopg.Error:
        # The connection may be gone (pg_terminate_backend): the next call reconnects.
        await conn.close()
        raise


async def alpha(event: Event) -> None:
    await _record("alpha", event)


async def beta(event: Event) -> None:
    await _record("beta", event)
