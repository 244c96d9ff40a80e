"""Callable sinks for the chaos test, imported by relay processes (this directory is put on
their PYTHONPATH).

Each sink fails a share of its calls at random and records every success in the
``chaos_received`` table (created by ``test_chaos.py``) on a connection of its own, so the
test can check what each sink really received, in which order, how often, and when each
call started. ``alpha`` and
``beta`` are async; ``gamma`` is a plain function, run by the relay on threads of its own.

Two payload markers: ``{"poison": true}`` makes ``alpha`` end the relay process on the spot
(``os._exit(77)``, as a crash in native code would), on every attempt; ``{"hang": true}``
makes ``gamma``'s first attempt hang well past the relay's ``delivery_timeout`` and then
raise, recording nothing. Configured by the environment:

``CHAOS_SINK_DATABASE_URL``   where ``chaos_received`` lives (required)
``CHAOS_SINK_FAILURE_RATE``   share of calls that raise ``RetryableError`` (default 0)
``CHAOS_SINK_HANG_SECONDS``   how long a hanging call hangs (default 5)
``CHAOS_SINK_SYNCHRONOUS_COMMIT``   the receipts' ``synchronous_commit`` (default off)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import threading
import time

import psycopg

from outbox import RetryableError
from outbox.sinks import Event

POISON_EXIT_CODE = 77

_INSERT = """
INSERT INTO chaos_received (sink, event_id, key, attempt, relay_pid, called_at)
VALUES (%s, %s, %s, %s, %s, %s)
"""

_SYNCHRONOUS_COMMIT = "SELECT set_config('synchronous_commit', %s, false)"

_connection: psycopg.AsyncConnection[tuple[object, ...]] | None = None
_connecting = asyncio.Lock()
_threads = threading.local()


def _marked(event: Event, marker: str) -> bool:
    return isinstance(event.payload, dict) and event.payload.get(marker) is True


def _synchronous_commit() -> str:
    """The record is the test's instrument: waiting for a WAL flush per insert would make
    every delivery slow enough to time out on a busy machine, so by default a receipt is
    committed without it. A run that crashes the server must not lose receipts, though: the
    relay may settle a delivery after the restart; that run asks for "on" (its own server
    writes the WAL to the kernel at each commit, which a crash keeps, with no fsync)."""
    return os.environ.get("CHAOS_SINK_SYNCHRONOUS_COMMIT", "off")


def _inject_failure() -> None:
    if random.random() < float(os.environ.get("CHAOS_SINK_FAILURE_RATE", "0")):
        raise RetryableError("chaos: injected failure")


async def _conn() -> psycopg.AsyncConnection[tuple[object, ...]]:
    global _connection
    async with _connecting:
        if _connection is None or _connection.closed:
            _connection = await psycopg.AsyncConnection.connect(
                os.environ["CHAOS_SINK_DATABASE_URL"],
                autocommit=True,
                application_name="chaos-sink",
            )
            await _connection.execute(_SYNCHRONOUS_COMMIT, (_synchronous_commit(),))
        return _connection


def _row(sink: str, event: Event, called_at: dt.datetime) -> tuple[object, ...]:
    return (sink, event.id, event.key, event.attempt, os.getpid(), called_at)


async def _record(sink: str, event: Event, called_at: dt.datetime) -> None:
    _inject_failure()
    conn = await _conn()
    try:
        await conn.execute(_INSERT, _row(sink, event, called_at))
    except psycopg.Error:
        # The connection may be gone (pg_terminate_backend, a restart): the next call
        # reconnects.
        await conn.close()
        raise


def _record_sync(sink: str, event: Event, called_at: dt.datetime) -> None:
    _inject_failure()
    conn: psycopg.Connection[tuple[object, ...]] | None = getattr(_threads, "conn", None)
    if conn is None or conn.closed:
        conn = psycopg.connect(
            os.environ["CHAOS_SINK_DATABASE_URL"],
            autocommit=True,
            application_name="chaos-sink",
        )
        conn.execute(_SYNCHRONOUS_COMMIT, (_synchronous_commit(),))
        _threads.conn = conn
    try:
        conn.execute(_INSERT, _row(sink, event, called_at))
    except psycopg.Error:
        conn.close()
        raise


def _now() -> dt.datetime:
    """When a call started (the machine's clock, which the test's database server shares)."""
    return dt.datetime.now(dt.UTC)


async def alpha(event: Event) -> None:
    called_at = _now()
    if _marked(event, "poison"):
        os._exit(POISON_EXIT_CODE)
    await _record("alpha", event, called_at)


async def beta(event: Event) -> None:
    await _record("beta", event, _now())


def gamma(event: Event) -> None:
    called_at = _now()
    if _marked(event, "hang") and event.attempt == 1:
        time.sleep(float(os.environ.get("CHAOS_SINK_HANG_SECONDS", "5")))
        raise RuntimeError("chaos: hung call returned after its timeout")
    _record_sync("gamma", event, called_at)
