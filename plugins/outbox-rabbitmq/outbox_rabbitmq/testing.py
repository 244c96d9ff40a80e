"""A destination to test against: a fresh topic exchange and a queue of its own, read back
with aio-pika, then deleted. The plugin's tests use it; so can an application's.

    async with Destination.create("amqp://guest:guest@127.0.0.1:5672/") as destination:
        await destination.bind("order.#")
        ...  # a rabbitmq sink with exchange=destination.exchange delivers
        messages = await destination.take()
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import aio_pika.abc

__all__ = ["Destination", "Received"]


@dataclasses.dataclass(frozen=True)
class Received:
    """A message read back from the queue."""

    routing_key: str
    message_id: str | None
    headers: dict[str, Any]
    body: bytes
    content_type: str | None
    delivery_mode: int | None

    @property
    def payload(self) -> Any:
        return json.loads(self.body)


@dataclasses.dataclass(frozen=True)
class Destination:
    """A topic exchange and a durable queue, both named ``exchange``, bound for nothing
    until :meth:`bind`."""

    url: str
    channel: aio_pika.abc.AbstractChannel
    exchange: str
    queue: str

    @classmethod
    @contextlib.asynccontextmanager
    async def create(cls, url: str, prefix: str = "outbox-test") -> AsyncIterator[Destination]:
        """A fresh destination on the broker at ``url``, deleted when the block ends."""
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        async with await aio_pika.connect(url) as connection:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC)
            queue = await channel.declare_queue(name, durable=True)
            try:
                yield cls(url, channel, name, name)
            finally:
                await queue.delete(if_unused=False, if_empty=False)
                await exchange.delete()

    async def bind(self, routing_key: str) -> None:
        """Route the messages whose routing key matches ``routing_key`` to the queue."""
        queue = await self.channel.get_queue(self.queue)
        await queue.bind(self.exchange, routing_key)

    async def take(self) -> list[Received]:
        """Every message in the queue, in queue order, taken out of it."""
        queue = await self.channel.get_queue(self.queue)
        taken = []
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            taken.append(
                Received(
                    routing_key=message.routing_key or "",
                    message_id=message.message_id,
                    headers=dict(message.headers),
                    body=message.body,
                    content_type=message.content_type,
                    delivery_mode=message.delivery_mode,
                )
            )
        return taken
