"""The session hook: events recorded on entities are written if and only if their unit of work
commits, including the traps where staging events in a session goes wrong."""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, ForeignKey, String, create_engine, event, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    scoped_session,
    sessionmaker,
)

import outbox
from outbox._urls import sqlalchemy_url


class Base(DeclarativeBase):
    pass


class Order(Base, outbox.EventSource):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(20), default="new")
    lines: Mapped[list[Line]] = relationship(back_populates="order")


class Line(Base, outbox.EventSource):
    __tablename__ = "order_lines"

    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"))
    order: Mapped[Order] = relationship(back_populates="lines")


class Boom(Exception):
    pass


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(sqlalchemy_url(database_url))
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def maker(engine: Engine) -> sessionmaker[Session]:
    """A session factory with the hook installed (on this factory only)."""
    return outbox.install(sessionmaker(engine, expire_on_commit=False))


@pytest.fixture
def order_id(maker: sessionmaker[Session]) -> int:
    """An order that already exists, with no events."""
    with maker.begin() as session:
        order = Order()
        session.add(order)
        session.flush()
        return order.id


def topics(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT topic FROM outbox_events ORDER BY id")]


def stored(url: str) -> list[tuple[int, str, Any]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT id, topic, payload FROM outbox_events ORDER BY id")
        return [(row[0], row[1], row[2]) for row in rows]


# -- trap (a): nothing dirty means no flush ----------------------------------------------


def test_event_on_a_clean_session_is_written_at_commit(
    maker: sessionmaker[Session], order_id: int, database_url: str
) -> None:
    with maker.begin() as session:
        order = session.get_one(Order, order_id)
        recorded = order.record_event("order.viewed", {"order_id": order_id})
        assert not session.is_modified(order)
        assert not session.new
    assert recorded.id is not None
    assert stored(database_url) == [(recorded.id, "order.viewed", {"order_id": order_id})]


def test_explicit_flush_of_a_clean_session_writes_the_event_without_an_update(
    maker: sessionmaker[Session], engine: Engine, order_id: int
) -> None:
    statements: list[str] = []

    def capture(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement.split(None, 1)[0].upper())

    with maker.begin() as session:
        order = session.get_one(Order, order_id)
        event.listen(engine, "before_cursor_execute", capture)
        try:
            recorded = order.record_event("order.viewed", {})
            session.flush()
        finally:
            event.remove(engine, "before_cursor_execute", capture)
        assert recorded.id is not None
    assert statements == ["WITH"]  # the event's INSERT (and NOTIFY); the order is not updated


async def test_event_on_a_clean_async_session_is_written_at_commit(
    async_maker: async_sessionmaker[Any], order_id: int, database_url: str
) -> None:
    async with async_maker() as session, session.begin():
        order = await session.get_one(Order, order_id)
        order.record_event("order.viewed", {})
    assert topics(database_url) == ["order.viewed"]


# -- trap (b): a savepoint that rolls back discards what was recorded inside it ----------


def test_event_recorded_in_a_rolled_back_savepoint_is_not_written(
    maker: sessionmaker[Session], order_id: int, database_url: str
) -> None:
    with maker.begin() as session:
        order = session.get_one(Order, order_id)
        order.record_event("outside.before", {})
        with contextlib.suppress(Boom), session.begin_nested():
            order.record_event("inside", {})
            raise Boom
        order.record_event("outside.after", {})
    assert topics(database_url) == ["outside.before", "outside.after"]


def test_event_flushed_in_a_rolled_back_savepoint_is_not_written(
    maker: sessionmaker[Session], order_id: int, database_url: str
) -> None:
    with maker.begin() as session:
        order = session.get_one(Order, order_id)
        savepoint = session.begin_nested()
        inside = order.record_event("inside", {})
        session.flush()
        assert inside.id is not None
        savepoint.rollback()
        order.record_event("outside", {})
    assert topics(database_url) == ["outside"]


def test_nested_savepoints_discard_only_what_rolled_back(
    maker: sessionmaker[Session], order_id: int, database_url: str
) -> None:
    with maker.begin() as session:
        order = session.get_one(Order, order_id)
        with session.begin_nested():
            order.record_event("level1", {})
            with contextlib.suppress(Boom), session.begin_nested():
                order.record_event("level2.rolled_back", {})
                raise Boom
            with session.begin_nested():
                order.record_event("level2.released", {})
    assert topics(database_url) == ["level1", "level2.released"]


def test_released_savepoint_events_go_when_the_transaction_rolls_back(
    maker: sessionmaker[Session], order_id: int, database_url: str
) -> None:
    with maker() as session:
        order = session.get_one(Order, order_id)
        with session.begin_nested():
            order.record_event("inside.released", {})
        session.rollback()
        session.add(Order())
        session.commit()
    assert topics(database_url) == []


def test_entity_added_in_a_rolled_back_savepoint_takes_its_events_along(
    maker: sessionmaker[Session], database_url: str
) -> None:
    with maker.begin() as session:
        order = Order()
        order.record_event("order.created", {})
        with contextlib.suppress(Boom), session.begin_nested():
            session.add(order)
            raise Boom
        kept = Order()
        kept.record_event("order.created.kept", {})
        session.add(kept)
    assert topics(database_url) == ["order.created.kept"]


# -- trap (c): a full rollback clears the stash ------------------------------------------


def test_rollback_then_commit_does_not_write_stale_events(
    maker: sessionmaker[Session], order_id: int, database_url: str
) -> None:
    with maker() as session:
        order = session.get_one(Order, order_id)
        order.record_event("stale", {})
        Order().record_event("stale.new", {})  # never added, so never written
        session.add(Order())
        session.rollback()
        order = session.get_one(Order, order_id)
        order.status = "paid"
        order.record_event("order.paid", {})
        session.commit()
    assert topics(database_url) == ["order.paid"]


def test_rollback_discards_events_of_new_entities(
    maker: sessionmaker[Session], database_url: str
) -> None:
    with maker() as session:
        order = Order()
        session.add(order)
        order.record_event("order.created", {})
        session.rollback()
        session.commit()
        session.add(order)  # the same object again, in a new transaction
        session.commit()
    assert topics(database_url) == []


@pytest.mark.parametrize("end", ["close", "reset"])
def test_closing_without_commit_does_not_leak_events_into_reuse(
    end: str, maker: sessionmaker[Session], order_id: int, database_url: str
) -> None:
    session = maker()
    order = session.get_one(Order, order_id)
    order.record_event("abandoned", {})
    getattr(session, end)()
    session.add(Order())
    session.commit()
    session.add(order)  # the detached entity comes back: its abandoned event stays gone
    session.commit()
    session.close()
    assert topics(database_url) == []


def test_failed_flush_then_rollback_does_not_write_stale_events(
    maker: sessionmaker[Session], order_id: int, database_url: str
) -> None:
    with maker() as session:
        session.get_one(Order, order_id).record_event("stale", {})
        session.add(Line(order_id=order_id + 1000))
        with pytest.raises(Exception, match="foreign key"):
            session.flush()
        session.rollback()
        session.add(Order())
        session.commit()
    assert topics(database_url) == []


# -- trap (d): async sessions ------------------------------------------------------------


@pytest.fixture
async def async_engine(database_url: str, engine: Engine) -> AsyncIterator[AsyncEngine]:
    async_engine = create_async_engine(sqlalchemy_url(database_url))
    yield async_engine
    await async_engine.dispose()


@pytest.fixture
def async_maker(async_engine: AsyncEngine) -> async_sessionmaker[Any]:
    return outbox.install(async_sessionmaker(async_engine, expire_on_commit=False))


async def test_async_session_writes_recorded_events(
    async_maker: async_sessionmaker[Any], database_url: str
) -> None:
    async with async_maker() as session:
        order = Order()
        first = order.record_event("order.created", {"n": 1})
        session.add(order)
        await session.flush()
        assert first.id is not None
        order.record_event("order.flushed", {"n": 2})
        await session.commit()
        order.record_event("order.rolled_back", {})
        await session.rollback()
    assert [topic for _, topic, _ in stored(database_url)] == ["order.created", "order.flushed"]


async def test_async_savepoint_rollback_discards_its_events(
    async_maker: async_sessionmaker[Any], order_id: int, database_url: str
) -> None:
    async with async_maker() as session, session.begin():
        order = await session.get_one(Order, order_id)
        savepoint = await session.begin_nested()
        order.record_event("inside", {})
        await savepoint.rollback()
        order.record_event("outside", {})
    assert topics(database_url) == ["outside"]


# -- trap (e): threads -------------------------------------------------------------------


def test_concurrent_sessions_in_threads_write_their_own_events_once(
    maker: sessionmaker[Session], database_url: str
) -> None:
    threads, transactions, per_transaction = 2, 20, 5
    barrier = threading.Barrier(threads)
    # The id of each committed transaction, with the events recorded in it.
    recorded: dict[int, list[tuple[str, list[outbox.OutboxEvent]]]] = {
        n: [] for n in range(threads)
    }
    errors: list[BaseException] = []

    def work(thread: int) -> None:
        try:
            for t in range(transactions):
                barrier.wait(timeout=30)
                with maker.begin() as session:
                    order = Order()
                    session.add(order)
                    txid = session.scalar(text("SELECT pg_current_xact_id()::text"))
                    events = recorded[thread]
                    events.append((str(txid), []))
                    for n in range(per_transaction):
                        payload = {"thread": thread, "t": t, "n": n}
                        events[-1][1].append(order.record_event("thread.event", payload))
                        barrier.wait(timeout=30)  # the other thread records in between
        except BaseException as error:  # reported below, not lost in the thread
            errors.append(error)
            barrier.abort()

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert errors == []
    with psycopg.connect(database_url) as conn:
        rows = conn.execute("SELECT id, txid::text, payload FROM outbox_events").fetchall()
    written = {event_id: (txid, payload) for event_id, txid, payload in rows}
    assert len(written) == len(rows) == threads * transactions * per_transaction
    for transactions_of_thread in recorded.values():
        assert len(transactions_of_thread) == transactions
        for txid, events in transactions_of_thread:
            assert len(events) == per_transaction
            for recorded_event in events:
                assert recorded_event.id is not None
                # Written once, by the transaction it was recorded in, with its own payload.
                assert written[recorded_event.id] == (txid, recorded_event.payload)


# -- where the hook can be installed -----------------------------------------------------


def test_install_on_a_session_subclass(engine: Engine, database_url: str) -> None:
    class AppSession(Session):
        pass

    assert outbox.install(AppSession) is AppSession
    with AppSession(engine) as session:
        order = Order()
        order.record_event("order.created", {})
        session.add(order)
        session.commit()
    assert topics(database_url) == ["order.created"]


def test_install_on_a_scoped_session(engine: Engine, database_url: str) -> None:
    scoped = scoped_session(sessionmaker(engine))
    assert outbox.install(scoped) is scoped
    try:
        order = Order()
        order.record_event("order.created", {})
        scoped.add(order)
        scoped.commit()
    finally:
        scoped.remove()
    assert topics(database_url) == ["order.created"]


def test_install_refuses_what_it_cannot_hook() -> None:
    with pytest.raises(TypeError, match="install"):
        outbox.install(object())
    with pytest.raises(TypeError, match="install"):
        outbox.install(Order)


def test_installing_twice_writes_events_once(engine: Engine, database_url: str) -> None:
    scoped = scoped_session(sessionmaker(engine))
    outbox.install(scoped)
    outbox.install(scoped)
    outbox.install(scoped.session_factory)
    outbox.install(scoped.session_factory.class_)
    try:
        order = Order()
        order.record_event("once", {})
        scoped.add(order)
        scoped.flush()
        order.record_event("once.more", {})
        scoped.commit()
    finally:
        scoped.remove()
    assert topics(database_url) == ["once", "once.more"]


# -- what the flush does -----------------------------------------------------------------


def test_recorded_event_gets_its_id_from_the_flush(
    maker: sessionmaker[Session], order_id: int, database_url: str
) -> None:
    with maker.begin() as session:
        order = session.get_one(Order, order_id)
        recorded = order.record_event("order.viewed", {"a": 1}, key="order-1", headers={"h": "v"})
        assert recorded.id is None
        session.flush()
        assert recorded.id is not None
        assert recorded.duplicate is False
        row = session.execute(
            text("SELECT topic, key, headers FROM outbox_events WHERE id = :id"),
            {"id": recorded.id},
        ).one()
        assert tuple(row) == ("order.viewed", "order-1", {"h": "v"})


def test_event_recorded_before_add_is_written_by_the_flush_that_inserts_the_entity(
    maker: sessionmaker[Session], database_url: str
) -> None:
    with maker.begin() as session:
        order = Order()
        created = order.record_event("order.created", {})
        session.add(order)
        session.flush()
        assert order.id is not None
        assert created.id is not None
        visible = session.execute(text("SELECT count(*) FROM outbox_events")).scalar_one()
        assert visible == 1


def test_event_of_an_entity_added_through_a_relationship_is_written(
    maker: sessionmaker[Session], database_url: str
) -> None:
    with maker.begin() as session:
        order = Order()
        line = Line()
        line.record_event("line.added", {})
        order.lines.append(line)  # cascades into the session with the order
        session.add(order)
    assert topics(database_url) == ["line.added"]


def test_ids_follow_record_order_across_entities(
    maker: sessionmaker[Session], database_url: str
) -> None:
    with maker.begin() as session:
        first, second = Order(), Order()
        before_add = first.record_event("e1", {})
        session.add_all([first, second])
        events = [before_add]
        for topic, entity in [("e2", second), ("e3", first), ("e4", second), ("e5", first)]:
            events.append(entity.record_event(topic, {}))
    assert topics(database_url) == ["e1", "e2", "e3", "e4", "e5"]
    ids = [recorded.id for recorded in events]
    assert ids == sorted(ids)  # type: ignore[type-var]


def test_event_of_an_entity_deleted_in_the_same_flush_is_written(
    maker: sessionmaker[Session], order_id: int, database_url: str
) -> None:
    with maker.begin() as session:
        order = session.get_one(Order, order_id)
        order.record_event("order.deleted", {"order_id": order_id})
        session.delete(order)
    assert topics(database_url) == ["order.deleted"]


def test_event_recorded_during_the_flush_is_written_by_that_flush(
    maker: sessionmaker[Session], database_url: str
) -> None:
    def record_created(mapper: object, connection: object, target: Order) -> None:
        target.record_event("order.created", {"order_id": target.id})

    event.listen(Order, "after_insert", record_created)
    try:
        with maker.begin() as session:
            txid = session.scalar(text("SELECT pg_current_xact_id()::text"))
            session.add(Order(id=41))
        # The commit's own flush inserted the order: the event is in the same transaction.
        with psycopg.connect(database_url) as conn:
            rows = conn.execute("SELECT topic, payload, txid::text FROM outbox_events").fetchall()
        assert rows == [("order.created", {"order_id": 41}, txid)]
    finally:
        event.remove(Order, "after_insert", record_created)


def test_duplicate_dedup_keys_in_one_flush(
    maker: sessionmaker[Session], order_id: int, database_url: str
) -> None:
    with maker.begin() as session:
        earlier = session.get_one(Order, order_id).record_event("a", {}, dedup_key="old")
    with maker.begin() as session:
        order = session.get_one(Order, order_id)
        batch = [
            order.record_event("b", {}, dedup_key="new"),
            order.record_event("c", {}),
            order.record_event("d", {}, dedup_key="old"),
            order.record_event("e", {}, dedup_key="new"),
            order.record_event("f", {}),
        ]
    assert [recorded.duplicate for recorded in batch] == [False, False, True, True, False]
    assert batch[2].id == earlier.id
    assert batch[3].id == batch[0].id
    assert topics(database_url) == ["a", "b", "c", "f"]
    rows = [event_id for event_id, _, _ in stored(database_url)]
    assert rows == [earlier.id, batch[0].id, batch[1].id, batch[4].id]


def test_invalid_event_is_refused_at_record_time_and_nothing_is_staged(
    maker: sessionmaker[Session], order_id: int, database_url: str
) -> None:
    with maker.begin() as session:
        order = session.get_one(Order, order_id)
        with pytest.raises(outbox.PublishError, match="topic"):
            order.record_event("not a topic", {})
        order.record_event("ok", {})
    assert topics(database_url) == ["ok"]


def test_events_and_business_rows_commit_together(
    maker: sessionmaker[Session], database_url: str
) -> None:
    with contextlib.suppress(Boom), maker.begin() as session:
        order = Order()
        order.record_event("order.created", {})
        session.add(order)
        session.flush()
        raise Boom
    with maker() as session:
        assert session.scalars(select(Order)).all() == []
    assert topics(database_url) == []


# -- events ride on the flush's INSERT ---------------------------------------------------


@contextlib.contextmanager
def statements_sent(engine: Engine) -> Iterator[list[str]]:
    """The statements sent to the server, as sent (after the hook rewrote them)."""
    sent: list[str] = []

    def capture(conn: object, cursor: object, statement: str, *args: object) -> None:
        sent.append(statement)

    event.listen(engine, "after_cursor_execute", capture)
    try:
        yield sent
    finally:
        event.remove(engine, "after_cursor_execute", capture)


def test_events_ride_on_the_insert_of_their_entity(
    maker: sessionmaker[Session], engine: Engine, database_url: str
) -> None:
    with maker.begin() as session:
        order = Order()
        first = order.record_event("order.created", {"n": 1})
        second = outbox.publish(session, "order.audited", {"n": 2})
        session.add(order)
        with statements_sent(engine) as sent:
            session.flush()
        assert first.id is not None
        assert second.id == first.id + 1
        assert (first.duplicate, second.duplicate) == (False, False)
    assert len(sent) == 1, sent  # one statement wrote the order and both events
    assert sent[0].split()[:5] == ["WITH", "_outbox_written", "AS", "(INSERT", "INTO"]
    assert stored(database_url) == [
        (first.id, "order.created", {"n": 1}),
        (second.id, "order.audited", {"n": 2}),
    ]
    with maker() as session:
        assert session.get(Order, order.id) is not None


def test_a_flush_without_an_insert_writes_its_events_in_a_statement_of_their_own(
    maker: sessionmaker[Session], engine: Engine, order_id: int, database_url: str
) -> None:
    with maker.begin() as session:
        order = session.get_one(Order, order_id)
        order.status = "paid"
        recorded = order.record_event("order.paid", {})
        with statements_sent(engine) as sent:
            session.flush()
        assert recorded.id is not None
    assert [statement.split(None, 1)[0] for statement in sent] == ["UPDATE", "WITH"]
    assert "INSERT INTO" in sent[1]
    assert "outbox_events" in sent[1]
    assert topics(database_url) == ["order.paid"]


def test_events_of_a_multi_row_flush_are_one_statement_in_record_order(
    maker: sessionmaker[Session], engine: Engine, database_url: str
) -> None:
    with maker.begin() as session:
        orders = [Order() for _ in range(3)]
        recorded = [order.record_event(f"order.{n}", {}) for n, order in enumerate(orders)]
        session.add_all(orders)
        with statements_sent(engine) as sent:
            session.flush()
    outbox_inserts = [s for s in sent if "outbox_events" in s]
    assert len(outbox_inserts) == 1
    assert stored(database_url) == [(r.id, r.topic, {}) for r in recorded]


def test_ids_are_found_when_a_trigger_skips_the_carrying_insert(
    maker: sessionmaker[Session], engine: Engine, database_url: str
) -> None:
    # A mapper event's INSERT ... RETURNING runs first in the flush and carries the events;
    # a trigger skips its row, so no row brings their ids back.
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE skipped (id serial PRIMARY KEY, note text)"))
        conn.execute(
            text(
                "CREATE FUNCTION skip_row() RETURNS trigger LANGUAGE plpgsql "
                "AS $$ BEGIN RETURN NULL; END $$"
            )
        )
        conn.execute(
            text(
                "CREATE TRIGGER skip_all BEFORE INSERT ON skipped "
                "FOR EACH ROW EXECUTE FUNCTION skip_row()"
            )
        )

    def audit(mapper: object, connection: Any, target: object) -> None:
        connection.execute(text("INSERT INTO skipped (note) VALUES ('x') RETURNING id"))

    event.listen(Order, "before_insert", audit)
    try:
        with psycopg.connect(database_url, autocommit=True) as listener:
            listener.execute("LISTEN outbox")
            with maker.begin() as session:
                order = Order()
                recorded = [order.record_event(f"order.{n}", {}) for n in range(2)]
                session.add(order)
                with statements_sent(engine) as sent:
                    session.flush()
                assert all(r.id is not None for r in recorded)
            # The carrier's RETURNING, and its NOTIFY, never ran: the id lookup notified.
            notified = list(listener.notifies(timeout=2, stop_after=1))
    finally:
        event.remove(Order, "before_insert", audit)
    assert "_outbox_written" in sent[0]
    assert "skipped" in sent[0]
    assert [row[:2] for row in stored(database_url)] == [(r.id, r.topic) for r in recorded]
    assert [(n.channel, n.payload) for n in notified] == [("outbox", "")]


def test_a_failed_carrying_insert_leaves_nothing_behind(
    maker: sessionmaker[Session], engine: Engine, order_id: int, database_url: str
) -> None:
    with maker() as session:
        clash = Order(id=order_id)
        clash.record_event("order.clash", {})
        session.add(clash)
        with pytest.raises(Exception, match="duplicate key"):
            session.flush()
        session.rollback()
        fresh = Order()
        kept = fresh.record_event("order.fresh", {})
        session.add(fresh)
        session.commit()
    assert stored(database_url) == [(kept.id, "order.fresh", {})]


def test_a_riding_event_keeps_its_key_headers_and_schedule(
    maker: sessionmaker[Session], engine: Engine, database_url: str
) -> None:
    with maker.begin() as session:
        order = Order()
        recorded = order.record_event(
            "order.created", {"n": 1}, key="k-1", headers={"h": "v"}, delay=3600
        )
        session.add(order)
        with statements_sent(engine) as sent:
            session.flush()
        assert len(sent) == 1
        assert "_outbox_written" in sent[0]
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT key, headers, payload, process_at - created_at > interval '59 minutes' "
            "FROM outbox_events WHERE id = %s",
            (recorded.id,),
        ).fetchone()
    assert row == ("k-1", {"h": "v"}, {"n": 1}, True)


def test_a_carrying_insert_notifies_the_relays_once_at_commit(
    maker: sessionmaker[Session], database_url: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN outbox")
        with maker.begin() as session:
            for n in range(3):
                order = Order()
                order.record_event("order.created", {"n": n})
                session.add(order)
                session.flush()  # three carrying INSERTs in one transaction
            assert list(listener.notifies(timeout=0.2)) == []  # nothing before the commit
        received = list(listener.notifies(timeout=2, stop_after=2))
    assert [(notify.channel, notify.payload) for notify in received] == [("outbox", "")]


def test_a_riding_event_keeps_its_process_at(
    maker: sessionmaker[Session], engine: Engine, database_url: str
) -> None:
    at = dt.datetime(2031, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
    with maker.begin() as session:
        order = Order()
        recorded = order.record_event("order.scheduled", [1, "two"], process_at=at)
        session.add(order)
        with statements_sent(engine) as sent:
            session.flush()
        assert len(sent) == 1
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT key, headers, payload, process_at FROM outbox_events WHERE id = %s",
            (recorded.id,),
        ).fetchone()
    assert row == (None, {}, [1, "two"], at)


def test_a_riding_event_keeps_its_headers_and_a_missing_key(
    maker: sessionmaker[Session], engine: Engine, database_url: str
) -> None:
    with maker.begin() as session:
        order = Order()
        recorded = order.record_event("order.created", {"n": 1}, headers={"h": "v"})
        session.add(order)
        with statements_sent(engine) as sent:
            session.flush()
        assert len(sent) == 1
        assert "_outbox_written" in sent[0]
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT key, headers, payload, process_at = created_at FROM outbox_events "
            "WHERE id = %s",
            (recorded.id,),
        ).fetchone()
    assert row == (None, {"h": "v"}, {"n": 1}, True)
