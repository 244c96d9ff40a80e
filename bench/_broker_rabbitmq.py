"""RabbitMQ's part of ``bench/brokers.py``: the destination is a topic exchange with a durable
queue of the same name bound for every routing key, and the bare producer is aio-pika with
the sink's settings (one channel with publisher confirms and ``on_return_raises``,
persistent ``mandatory`` messages, a batch published at once and awaited to its confirms).
"""

from __future__ import annotations

import asyncio
import json
import time

import aio_pika

TOPIC = "bench.event"  # the topic of bench/_common.py's events: the sink's routing key


def _url(address: str) -> str:
    return f"amqp://guest:guest@{address}/"


def sink_options(address: str, destination: str) -> dict[str, object]:
    """The rabbitmq sink publishing to the exchange ``destination``, routing key = topic."""
    return {"url": _url(address), "exchange": destination}


def prepare(address: str, destination: str) -> None:
    """A topic exchange and a durable queue, both named ``destination``, bound with ``#``."""

    async def declare() -> None:
        async with await aio_pika.connect(_url(address)) as connection:
            channel = await connection.channel()
            await channel.declare_exchange(destination, aio_pika.ExchangeType.TOPIC)
            queue = await channel.declare_queue(destination, durable=True)
            await queue.bind(destination, "#")

    asyncio.run(declare())


def cleanup(address: str, destination: str) -> None:
    async def delete() -> None:
        async with await aio_pika.connect(_url(address)) as connection:
            channel = await connection.channel()
            await channel.queue_delete(destination)
            await channel.exchange_delete(destination)

    asyncio.run(delete())


def received(address: str, destination: str) -> int:
    """Messages in the queue ``destination``."""

    async def count() -> int:
        async with await aio_pika.connect(_url(address)) as connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(destination, passive=True)
            return int(queue.declaration_result.message_count or 0)

    return asyncio.run(count())


def _message(n: int) -> aio_pika.Message:
    """What the sink sends for bench/_common.py's event ``n``: the same body and headers."""
    body = json.dumps({"n": n, "text": "x" * 100}, separators=(",", ":")).encode()
    return aio_pika.Message(
        body,
        headers={"outbox-id": str(n), "outbox-topic": TOPIC},
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=str(n),
        timestamp=time.time(),
    )


def bare_producer(address: str, destination: str, events: int, batch_size: int) -> float:
    """Seconds to publish ``events`` messages, ``batch_size`` at a time, each batch
    published at once and awaited to its confirms before the next, as the sink does."""

    async def produce() -> float:
        async with await aio_pika.connect(_url(address)) as connection:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            exchange = await channel.get_exchange(destination, ensure=False)
            start = time.perf_counter()
            for first in range(1, events + 1, batch_size):
                batch = range(first, min(first + batch_size, events + 1))
                await asyncio.gather(
                    *(exchange.publish(_message(n), TOPIC, mandatory=True) for n in batch)
                )
            return time.perf_counter() - start

    return asyncio.run(produce())
