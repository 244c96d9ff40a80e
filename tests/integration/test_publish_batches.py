"""Batches of events written as a statement of their own: many business rows in one flush
(their INSERT is executemany, so it cannot carry the events), with and without dedup keys.
Every event is written once, with its own fields, its id in publish order."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, String, create_engine, event, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import outbox
from outbox._urls import sqlalchemy_url


class Base(DeclarativeBase):
    pass


class Parcel(Base, outbox.EventSource):
    __tablename__ = "parcels"

    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(String(40))


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(sqlalchemy_url(database_url))
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def maker(engine: Engine) -> sessionmaker[Session]:
    return outbox.install(sessionmaker(engine, expire_on_commit=False))


def stored(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT id, topic, key, payload, headers, dedup_key, process_at > now() "
            "FROM outbox_events ORDER BY id"
        ).fetchall()


def test_many_rows_in_one_flush_write_every_event_with_its_fields_in_order(
    maker: sessionmaker[Session], database_url: str
) -> None:
    with maker.begin() as session:
        parcels = [Parcel(label=f"p{n}") for n in range(50)]
        session.add_all(parcels)
        published = [
            outbox.publish(
                session,
                "parcel.labelled",
                {"n": n, "label": parcel.label, "tags": ["a", "ü"]},
                key=f"k{n % 3}" if n % 2 else None,
                headers={"h": str(n)} if n % 5 == 0 else None,
                delay=60 if n == 7 else None,
            )
            for n, parcel in enumerate(parcels)
        ]
    rows = stored(database_url)
    assert [row[0] for row in rows] == [event.id for event in published]
    assert [event.duplicate for event in published] == [False] * 50
    assert sorted(event.id or 0 for event in published) == [event.id for event in published]
    for n, row in enumerate(rows):
        assert row[1:] == (
            "parcel.labelled",
            f"k{n % 3}" if n % 2 else None,
            {"n": n, "label": f"p{n}", "tags": ["a", "ü"]},
            {"h": str(n)} if n % 5 == 0 else {},
            None,
            n == 7,
        )


def test_recorded_events_of_many_rows_get_ids_in_record_order(
    maker: sessionmaker[Session], database_url: str
) -> None:
    parcels = [Parcel(label=f"p{n}") for n in range(20)]
    recorded = [parcel.record_event("parcel.created", {"n": n}) for n, parcel in enumerate(parcels)]
    with maker.begin() as session:
        session.add_all(parcels)
    assert [row[3] for row in stored(database_url)] == [{"n": n} for n in range(20)]
    assert [event.id for event in recorded] == [row[0] for row in stored(database_url)]


def test_a_batch_with_dedup_keys_skips_the_duplicates_and_returns_their_ids(
    maker: sessionmaker[Session], database_url: str
) -> None:
    with maker.begin() as session:
        first = outbox.publish(session, "parcel.created", {"n": 0}, dedup_key="d0")
    with maker.begin() as session:
        session.add_all([Parcel(label=f"p{n}") for n in range(3)])
        again = [
            outbox.publish(session, "parcel.created", {"n": 1}, dedup_key="d0"),
            outbox.publish(session, "parcel.created", {"n": 2}),
            outbox.publish(session, "parcel.created", {"n": 3}, dedup_key="d3"),
        ]
    assert (again[0].id, again[0].duplicate) == (first.id, True)
    assert [event.duplicate for event in again[1:]] == [False, False]
    assert [row[3] for row in stored(database_url)] == [{"n": 0}, {"n": 2}, {"n": 3}]


def test_a_batch_on_a_connection_notifies_and_gets_ids_in_order(
    engine: Engine, database_url: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN outbox")
        with engine.begin() as conn:
            written = [outbox.publish(conn, "parcel.created", {"n": n}) for n in range(3)]
        assert len(list(listener.notifies(timeout=2, stop_after=1))) == 1
    assert [event.id for event in written] == [row[0] for row in stored(database_url)]


def test_a_trigger_that_skips_the_rows_leaves_the_events_without_ids(
    maker: sessionmaker[Session], engine: Engine, database_url: str
) -> None:
    # A BEFORE trigger that returns NULL inserts nothing: the events say so, as before.
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE FUNCTION skip_row() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RETURN NULL; END $$;"
                "CREATE TRIGGER skip BEFORE INSERT ON outbox_events "
                "FOR EACH ROW EXECUTE FUNCTION skip_row()"
            )
        )
    with engine.begin() as conn:
        skipped = [outbox.publish(conn, "parcel.created", {"n": n}) for n in range(2)]
    assert [(event.id, event.duplicate) for event in skipped] == [(None, True)] * 2
    assert stored(database_url) == []


@pytest.mark.parametrize("when", ["process_at", "delay"])
def test_a_scheduled_event_in_a_batch_keeps_its_schedule(
    when: str, maker: sessionmaker[Session], database_url: str
) -> None:
    later = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
    schedule: dict[str, Any] = {"process_at": later} if when == "process_at" else {"delay": 3600}
    with maker.begin() as session:
        session.add_all([Parcel(label="a"), Parcel(label="b")])
        outbox.publish(session, "parcel.created", {"n": 0})
        outbox.publish(session, "parcel.created", {"n": 1}, **schedule)
    assert [row[6] for row in stored(database_url)] == [False, True]


def test_executemany_inserts_are_what_these_tests_exercise(
    maker: sessionmaker[Session], engine: Engine
) -> None:
    # These tests mean the events' own statement: the flush's INSERT of several rows must be
    # one that cannot carry them (executemany, as SQLAlchemy reports insertmanyvalues).
    seen: list[bool] = []
    event.listen(engine, "before_cursor_execute", lambda *args: seen.append(args[-1]))
    with maker.begin() as session:
        session.add_all([Parcel(label="a"), Parcel(label="b")])
        session.flush()
    assert seen[0] is True
