"""Events published into the outbox reach RabbitMQ through real ``outbox relay`` processes:
drained, through relays SIGKILLed again and again, and through a broker that goes away."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from outbox.end_to_end import (
    Planned,
    RelayProcess,
    drain,
    kill_repeatedly,
    planned_events,
    publish_events,
    require_module,
    wait_until_done,
    write_config,
)

require_module("outbox_rabbitmq", hint="pip install -e plugins/outbox-rabbitmq")
require_module("aio_pika", hint="pip install -e plugins/outbox-rabbitmq")

from outbox_rabbitmq.testing import Destination, Received  # noqa: E402

from outbox.server_control import TcpProxy, require_server  # noqa: E402

ADDRESS = "127.0.0.1:5672"
URL = f"amqp://guest:guest@{ADDRESS}/"
ROUTING_KEY = "{topic}.{key}"

pytestmark = pytest.mark.acceptance


@pytest.fixture
async def destination() -> AsyncIterator[Destination]:
    require_server("RabbitMQ", ADDRESS, hint="start rabbitmq-server (guest/guest)")
    async with Destination.create(URL) as destination:
        await destination.bind("order.created.*")
        yield destination


def options(destination: Destination, url: str = URL) -> dict[str, object]:
    return {"url": url, "exchange": destination.exchange, "routing_key": ROUTING_KEY}


def by_id(ids: Sequence[int], events: Sequence[Planned]) -> dict[str, Planned]:
    return {str(event_id): planned for event_id, planned in zip(ids, events, strict=True)}


def assert_in_order_per_key(received: Sequence[Received], ids: Sequence[int]) -> None:
    """Per key, the first copy of each event comes in id order (a redelivered copy may
    come later)."""
    firsts: dict[str, list[int]] = {}
    seen: set[int] = set()
    for message in received:
        event_id = int(message.message_id or 0)
        if event_id not in seen:
            seen.add(event_id)
            firsts.setdefault(message.headers["outbox-key"], []).append(event_id)
    assert sorted(seen) == sorted(ids), "every event arrived"
    for key, order in firsts.items():
        assert order == sorted(order), f"{key} out of order"


async def test_events_arrive_as_published(
    destination: Destination, database_url: str, tmp_path: Path
) -> None:
    events = planned_events(200, keys=5)
    ids = await asyncio.to_thread(publish_events, database_url, events)
    config = write_config(tmp_path, "rabbitmq", options(destination))
    await asyncio.to_thread(drain, config, database_url)

    received = await destination.take()
    planned = by_id(ids, events)
    assert sorted(int(message.message_id or 0) for message in received) == sorted(ids)
    for message in received:
        event_id = message.message_id or ""
        event = planned[event_id]
        assert message.routing_key == f"order.created.{event.key}"
        assert (
            message.body
            == json.dumps(event.payload, ensure_ascii=False, separators=(",", ":")).encode()
        )
        assert message.content_type == "application/json"
        assert message.headers == {
            "outbox-id": event_id,
            "outbox-topic": "order.created",
            "outbox-key": event.key,
            "traceparent": event.headers["traceparent"],
        }
    assert_in_order_per_key(received, ids)


async def test_relays_killed_again_and_again_lose_nothing(
    destination: Destination, database_url: str, tmp_path: Path
) -> None:
    events = planned_events(1000, keys=5)
    config = write_config(tmp_path, "rabbitmq", options(destination))
    ids = await asyncio.to_thread(kill_repeatedly, config, database_url, events, kills=5)

    received = await destination.take()
    assert_in_order_per_key(received, ids)
    first: dict[str, Received] = {}
    duplicates = 0
    for message in received:
        event_id = message.message_id or ""
        if event_id in first:  # a copy: the same event, sent again after a kill
            duplicates += 1
            assert message.headers["outbox-id"] == event_id
            assert message.body == first[event_id].body
        else:
            first[event_id] = message
    planned = by_id(ids, events)
    assert all(message.payload == planned[id_].payload for id_, message in first.items())
    print(
        f"rabbitmq SIGKILL: {len(ids)} published, {len(received)} received, {duplicates} duplicates"
    )


async def test_a_broker_outage_holds_events_back_until_it_returns(
    destination: Destination, database_url: str, tmp_path: Path
) -> None:
    events = planned_events(300, keys=5)
    with TcpProxy(ADDRESS) as proxy:
        config = write_config(
            tmp_path, "rabbitmq", options(destination, f"amqp://guest:guest@{proxy.address}/")
        )
        with RelayProcess(config, database_url) as relay:
            publisher = threading.Thread(
                target=publish_events,
                args=(database_url, events),
                kwargs={"per_commit": 10, "pause": 0.05},
            )
            publisher.start()
            try:
                await asyncio.sleep(0.7)  # the relay is delivering
                proxy.cut()
                await asyncio.sleep(3.0)  # the outage
                assert relay.process.poll() is None, relay.output()
                proxy.restore()
            finally:
                await asyncio.to_thread(publisher.join)
            await asyncio.to_thread(wait_until_done, database_url, len(events), relay)
            assert relay.process.poll() is None, "the relay stays up through the outage"
            assert relay.stop() == 0
    received = await destination.take()
    assert len({message.message_id for message in received}) == len(events)
    assert "cannot reach RabbitMQ at" in relay.output() or "lost the connection" in relay.output()
