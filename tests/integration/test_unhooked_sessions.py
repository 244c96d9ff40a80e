"""Sessions nobody called ``outbox.install()`` on: no event is ever silently dropped.

Every session writes the events staged on it (recorded by entities or given to publish()),
whether or not its factory was installed: a business row committed means its events are
there too. Sessions with nothing staged write nothing.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, String, create_engine, event
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

import outbox
from outbox._urls import sqlalchemy_url


class Base(DeclarativeBase):
    pass


class Invoice(Base, outbox.EventSource):
    __tablename__ = "invoices"

    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(20), default="new")


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(sqlalchemy_url(database_url))
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
async def async_engine(database_url: str, engine: Engine) -> AsyncIterator[AsyncEngine]:
    async_engine = create_async_engine(sqlalchemy_url(database_url))
    yield async_engine
    await async_engine.dispose()


def committed(url: str) -> tuple[list[str], list[tuple[str, Any]]]:
    """The invoices' statuses and the events' topics and payloads, as committed."""
    with psycopg.connect(url) as conn:
        invoices = [row[0] for row in conn.execute("SELECT status FROM invoices ORDER BY id")]
        events = conn.execute("SELECT topic, payload FROM outbox_events ORDER BY id").fetchall()
    return invoices, [(row[0], row[1]) for row in events]


# -- sync ORM ----------------------------------------------------------------------------


def test_record_event_on_a_sessionmaker_never_installed_is_written(
    engine: Engine, database_url: str
) -> None:
    outbox.install(sessionmaker(engine))  # the application's factory; the worker's is not
    worker_sessions = sessionmaker(engine)
    with worker_sessions.begin() as session:
        invoice = Invoice(status="paid")
        session.add(invoice)
        session.flush()
        recorded = invoice.record_event("invoice.paid", {"invoice": invoice.id})
    assert recorded.id is not None
    assert committed(database_url) == (["paid"], [("invoice.paid", {"invoice": 1})])


def test_record_event_before_add_on_a_plain_session_is_written(
    engine: Engine, database_url: str
) -> None:
    invoice = Invoice(status="new")
    invoice.record_event("invoice.created", {})
    with Session(engine) as session, session.begin():
        session.add(invoice)
    assert committed(database_url) == (["new"], [("invoice.created", {})])


def test_record_event_on_a_clean_unhooked_session_is_written_at_commit(
    engine: Engine, database_url: str
) -> None:
    with Session(engine) as session, session.begin():
        session.add(Invoice(status="sent"))
    with sessionmaker(engine).begin() as session:
        invoice = session.get_one(Invoice, 1)
        invoice.record_event("invoice.viewed", {"n": 1})
    assert committed(database_url) == (["sent"], [("invoice.viewed", {"n": 1})])


def test_publish_on_a_second_sessionmaker_is_written(engine: Engine, database_url: str) -> None:
    outbox.install(sessionmaker(engine))
    second = sessionmaker(engine)
    with second.begin() as session:
        session.add(Invoice(status="sent"))
        outbox.publish(session, "invoice.sent", {"n": 2})
    assert committed(database_url) == (["sent"], [("invoice.sent", {"n": 2})])


def test_publish_starts_the_hook_in_a_process_with_no_entity_class_and_no_install(
    engine: Engine, database_url: str
) -> None:
    # In this test process the EventSource classes above have started the hook already.
    script = textwrap.dedent(
        """
        import sys
        from sqlalchemy import create_engine, text
        from sqlalchemy.orm import Session
        import outbox
        from outbox._urls import sqlalchemy_url

        engine = create_engine(sqlalchemy_url(sys.argv[1]))
        with Session(engine) as session, session.begin():
            session.execute(text("INSERT INTO invoices (status) VALUES ('alone')"))
            outbox.publish(session, "invoice.alone", {})
        """
    )
    subprocess.run([sys.executable, "-c", script, database_url], check=True, timeout=60)
    assert committed(database_url) == (["alone"], [("invoice.alone", {})])


def test_unhooked_session_still_discards_a_rolled_back_savepoint(
    engine: Engine, database_url: str
) -> None:
    with sessionmaker(engine).begin() as session:
        invoice = Invoice(status="draft")
        session.add(invoice)
        savepoint = session.begin_nested()
        invoice.record_event("invoice.discarded", {})
        savepoint.rollback()
        invoice.record_event("invoice.kept", {})
    assert committed(database_url) == (["draft"], [("invoice.kept", {})])


def test_unhooked_session_rollback_writes_neither_rows_nor_events(
    engine: Engine, database_url: str
) -> None:
    with sessionmaker(engine)() as session:
        invoice = Invoice()
        session.add(invoice)
        invoice.record_event("invoice.created", {})
        session.rollback()
        session.add(Invoice(status="second"))
        session.commit()
    assert committed(database_url) == (["second"], [])


def test_a_session_with_nothing_staged_writes_nothing_of_the_outbox(engine: Engine) -> None:
    outbox.install(sessionmaker(engine))
    statements: list[str] = []

    def capture(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", capture)
    try:
        with sessionmaker(engine).begin() as session:
            session.add(Invoice(status="quiet"))
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    assert statements
    assert not [statement for statement in statements if "outbox" in statement]


def test_install_still_accepts_every_kind_of_factory(
    engine: Engine, async_engine: AsyncEngine
) -> None:
    maker = sessionmaker(engine)
    assert outbox.install(maker) is maker
    async_maker = async_sessionmaker(async_engine)
    assert outbox.install(async_maker) is async_maker
    with pytest.raises(TypeError, match="install"):
        outbox.install(Invoice)


# -- async ORM ---------------------------------------------------------------------------


async def test_record_event_on_an_async_sessionmaker_never_installed_is_written(
    async_engine: AsyncEngine, database_url: str
) -> None:
    async_sessions = async_sessionmaker(async_engine, expire_on_commit=False)
    async with async_sessions() as session, session.begin():
        invoice = Invoice(status="paid")
        session.add(invoice)
        await session.flush()
        recorded = invoice.record_event("invoice.paid", {"invoice": invoice.id})
    assert recorded.id is not None
    assert committed(database_url) == (["paid"], [("invoice.paid", {"invoice": 1})])


async def test_record_event_on_a_plain_async_session_is_written_at_commit(
    async_engine: AsyncEngine, database_url: str
) -> None:
    async with AsyncSession(async_engine) as session, session.begin():
        session.add(Invoice(status="sent"))
    async with AsyncSession(async_engine) as session, session.begin():
        invoice = await session.get_one(Invoice, 1)
        invoice.record_event("invoice.viewed", {})
    assert committed(database_url) == (["sent"], [("invoice.viewed", {})])


async def test_async_rollback_on_an_unhooked_session_discards_the_events(
    async_engine: AsyncEngine, database_url: str
) -> None:
    async with AsyncSession(async_engine) as session:
        invoice = Invoice()
        session.add(invoice)
        invoice.record_event("invoice.created", {})
        await session.rollback()
        session.add(Invoice(status="second"))
        await session.commit()
    assert committed(database_url) == (["second"], [])


async def test_publish_on_an_async_session_of_a_second_factory_is_written(
    async_engine: AsyncEngine, database_url: str
) -> None:
    outbox.install(async_sessionmaker(async_engine))
    async with async_sessionmaker(async_engine)() as session, session.begin():
        session.add(Invoice(status="sent"))
        await outbox.publish(session, "invoice.sent", {})
    assert committed(database_url) == (["sent"], [("invoice.sent", {})])
