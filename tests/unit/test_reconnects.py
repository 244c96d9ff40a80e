"""When a relay's loop tries again after a database error, and when it gives up (``--drain``
and ``--once`` only). Pure: no database, no sleeping."""

from __future__ import annotations

import psycopg
import pytest

from outbox.exceptions import DatabaseError, DatabaseUnavailable
from outbox.reconnects import Reconnects
from outbox.store import describe


def unavailable(message: str) -> DatabaseUnavailable:
    try:
        try:
            raise psycopg.OperationalError(message)
        except psycopg.OperationalError as driver:
            raise DatabaseUnavailable(message) from driver
    except DatabaseUnavailable as error:
        return error


def test_a_relay_run_for_ever_never_gives_up() -> None:
    reconnects = Reconnects()
    delays = [reconnects.failed(unavailable("refused")) for _ in range(50)]
    assert all(0 < delay <= 10.0 for delay in delays)


def test_give_up_says_how_long_and_why_in_one_line() -> None:
    reconnects = Reconnects(give_up_after=0.0)
    error = unavailable('FATAL:  database "nope" does not exist\nDETAIL: x')
    with pytest.raises(DatabaseUnavailable) as raised:
        reconnects.failed(error)
    assert str(raised.value) == (
        'cannot reach the database for 0s: FATAL:  database "nope" does not exist'
    )
    assert raised.value.__cause__ is error


def test_a_server_error_that_lasts_is_named_as_such() -> None:
    with pytest.raises(DatabaseUnavailable, match=r"^the database keeps failing for 0s: boom$"):
        Reconnects(give_up_after=0.0).failed(DatabaseError("boom"))


def test_the_wait_never_passes_the_give_up_time() -> None:
    reconnects = Reconnects(give_up_after=0.05)
    for _ in range(20):
        reconnects.succeeded()
        assert reconnects.failed(unavailable("refused")) <= 0.05


def test_describe_names_the_drivers_class_and_the_first_line() -> None:
    assert describe(unavailable("server closed\nmore")) == "OperationalError: server closed"
    assert describe(DatabaseError("plain")) == "DatabaseError: plain"
