"""What the table stores for a payload, on every kind of connection: the encoding of values
JSON does not know, and payloads refused at the call (``None``) with nothing written."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import decimal
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, String, create_engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import outbox
from outbox._urls import sqlalchemy_url
from outbox._validation import set_json_default


class Base(DeclarativeBase):
    pass


class Shipment(Base, outbox.EventSource):
    __tablename__ = "shipments"

    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(20), default="new")


@dataclasses.dataclass(frozen=True)
class Parcel:
    weight_kg: decimal.Decimal
    shipped_on: dt.date


SHIPMENT_ID = uuid.UUID("0b7e2c4a-58f1-4d2c-9a43-6f1e2d3c4b5a")
PAYLOAD = {
    "id": SHIPMENT_ID,
    "total": decimal.Decimal("1234.50"),
    "at": dt.datetime(2030, 5, 6, 7, 8, 9, 120000, tzinfo=dt.UTC),
    "parcels": [Parcel(decimal.Decimal("0.750"), dt.date(2030, 5, 6))],
}
STORED = {
    "id": "0b7e2c4a-58f1-4d2c-9a43-6f1e2d3c4b5a",
    "total": "1234.50",
    "at": "2030-05-06T07:08:09.120000+00:00",
    "parcels": [{"weight_kg": "0.750", "shipped_on": "2030-05-06"}],
}
SYNC_KINDS = ["session", "session_with_row", "connection", "psycopg"]
ASYNC_KINDS = ["async_session", "async_connection", "async_psycopg"]


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


@pytest.fixture
def json_default() -> Iterator[None]:
    yield
    set_json_default(None)


@contextlib.contextmanager
def sync_target(kind: str, engine: Engine, url: str) -> Iterator[Any]:
    """A target that commits when the block ends. ``session_with_row`` adds a shipment,
    whose INSERT carries the event (the flush path); ``session`` writes it at commit."""
    if kind.startswith("session"):
        with Session(engine) as session, session.begin():
            if kind == "session_with_row":
                session.add(Shipment(status="packed"))
            yield session
    elif kind == "connection":
        with engine.begin() as connection:
            yield connection
    else:
        with psycopg.connect(url) as connection:
            yield connection


@contextlib.asynccontextmanager
async def async_target(kind: str, engine: AsyncEngine, url: str) -> AsyncIterator[Any]:
    if kind == "async_session":
        async with AsyncSession(engine) as session, session.begin():
            yield session
    elif kind == "async_connection":
        async with engine.begin() as connection:
            yield connection
    else:
        async with await psycopg.AsyncConnection.connect(url) as connection:
            yield connection


def payloads(url: str) -> list[Any]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT payload FROM outbox_events ORDER BY id")]


def shipments(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT status FROM shipments ORDER BY id")]


# -- what is stored ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", SYNC_KINDS)
def test_values_json_does_not_know_are_stored_as_documented(
    kind: str, engine: Engine, database_url: str
) -> None:
    with sync_target(kind, engine, database_url) as target:
        outbox.publish(target, "shipment.packed", PAYLOAD)
    assert payloads(database_url) == [STORED]


@pytest.mark.parametrize("kind", ASYNC_KINDS)
async def test_values_json_does_not_know_are_stored_as_documented_async(
    kind: str, async_engine: AsyncEngine, database_url: str
) -> None:
    async with async_target(kind, async_engine, database_url) as target:
        await outbox.publish(target, "shipment.packed", PAYLOAD)
    assert payloads(database_url) == [STORED]


def test_a_recorded_event_is_encoded_like_a_published_one(
    engine: Engine, database_url: str
) -> None:
    with Session(engine) as session, session.begin():
        shipment = Shipment(status="packed")
        session.add(shipment)
        shipment.record_event("shipment.packed", PAYLOAD)
    assert payloads(database_url) == [STORED]


@pytest.mark.usefixtures("json_default")
def test_json_default_decides_what_is_stored(engine: Engine, database_url: str) -> None:
    def money_as_cents(value: Any) -> Any:
        if isinstance(value, decimal.Decimal):
            return int(value * 100)
        raise TypeError

    outbox.configure(json_default=money_as_cents)
    with engine.begin() as connection:
        outbox.publish(connection, "shipment.paid", {"total": decimal.Decimal("12.34")})
    assert payloads(database_url) == [{"total": 1234}]


def test_a_pydantic_model_is_stored_as_its_json_dump(engine: Engine, database_url: str) -> None:
    pydantic = pytest.importorskip("pydantic", reason="pydantic is not installed")

    class Label(pydantic.BaseModel):  # type: ignore[name-defined,misc]
        shipment: uuid.UUID
        printed_at: dt.datetime

    label = Label(shipment=SHIPMENT_ID, printed_at=dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
    with engine.begin() as connection:
        outbox.publish(connection, "label.printed", label)
    assert payloads(database_url) == [label.model_dump(mode="json")]


# -- None: refused at the call, the transaction goes on ----------------------------------


@pytest.mark.parametrize("kind", SYNC_KINDS)
def test_none_payload_is_refused_at_the_call_and_the_transaction_goes_on(
    kind: str, engine: Engine, database_url: str
) -> None:
    with sync_target(kind, engine, database_url) as target:
        with pytest.raises(outbox.PublishError, match=r"payload of 'shipment\.lost' is None"):
            outbox.publish(target, "shipment.lost", None)
        outbox.publish(target, "shipment.found", {})
    assert payloads(database_url) == [{}]


@pytest.mark.parametrize("kind", ASYNC_KINDS)
async def test_none_payload_is_refused_at_the_call_and_the_transaction_goes_on_async(
    kind: str, async_engine: AsyncEngine, database_url: str
) -> None:
    async with async_target(kind, async_engine, database_url) as target:
        with pytest.raises(outbox.PublishError, match=r"payload of 'shipment\.lost' is None"):
            await outbox.publish(target, "shipment.lost", None)
        await outbox.publish(target, "shipment.found", {})
    assert payloads(database_url) == [{}]


def test_record_event_refuses_none_and_the_business_row_commits_without_it(
    engine: Engine, database_url: str
) -> None:
    with Session(engine) as session, session.begin():
        shipment = Shipment(status="packed")
        session.add(shipment)
        with pytest.raises(outbox.PublishError, match="is None"):
            shipment.record_event("shipment.lost", None)
    assert (shipments(database_url), payloads(database_url)) == (["packed"], [])
