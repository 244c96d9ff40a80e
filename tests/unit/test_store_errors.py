"""The store is the one place driver errors become the library's own: a lost or refused
connection is DatabaseUnavailable, any other driver error DatabaseError, the driver's error
kept as the cause. No database: the connection is a stand-in that fails on purpose."""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg
import pytest

from outbox.exceptions import DatabaseError, DatabaseUnavailable, MigrationError
from outbox.store import Store, sink_savepoint, transaction


class Failing:
    """A connection whose every statement raises ``error``."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        raise self.error

    def transaction(self) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()


def failing(error: BaseException) -> Any:
    """A stand-in connection, typed as the real thing is."""
    return Failing(error)


async def test_a_lost_connection_is_unavailable() -> None:
    error = psycopg.OperationalError("server closed the connection unexpectedly")
    with pytest.raises(DatabaseUnavailable, match="server closed") as raised:
        await Store().claim(failing(error), limit=1, relay="r", lease_seconds=1, take_suspect=False)
    assert raised.value.__cause__ is error


async def test_any_other_driver_error_is_a_database_error() -> None:
    error = psycopg.errors.InsufficientPrivilege("permission denied for table outbox_events")
    with pytest.raises(DatabaseError) as raised:
        await Store().settle(failing(error), [])
    assert not isinstance(raised.value, DatabaseUnavailable)
    assert raised.value.__cause__ is error


async def test_a_missing_table_at_start_says_to_migrate() -> None:
    error = psycopg.errors.UndefinedTable('relation "app.outbox_sinks" does not exist')
    with pytest.raises(MigrationError, match="schema 'app'") as raised:
        await Store("app").held_sinks(failing(error))
    assert raised.value.__cause__ is error
    # Elsewhere a missing table is a database error like any other.
    with pytest.raises(DatabaseError):
        await Store("app").next_due(failing(error))


async def test_errors_that_are_not_the_drivers_pass_unchanged() -> None:
    with pytest.raises(KeyError):
        await Store().has_outstanding(failing(KeyError("not a driver error")))


async def test_a_transaction_translates_what_fails_inside() -> None:
    error = psycopg.OperationalError("connection lost")
    with pytest.raises(DatabaseUnavailable):
        async with transaction(failing(error)):
            raise error


async def test_a_sink_savepoint_keeps_the_sinks_own_errors() -> None:
    """A transactional sink's errors are its delivery results, recorded as it raised them;
    only a lost connection ends the batch."""
    conn = failing(RuntimeError("unused"))
    refused = psycopg.errors.UniqueViolation("duplicate key value")
    with pytest.raises(psycopg.errors.UniqueViolation):
        async with sink_savepoint(conn):
            raise refused
    with pytest.raises(DatabaseUnavailable):
        async with sink_savepoint(conn):
            raise psycopg.OperationalError("connection lost")
