"""NATS JetStream's part of ``bench/brokers.py``: the destination is a stream of that name
capturing ``<destination>.>``, the sink publishes to ``<destination>.{topic}`` with
``stream`` set, and the bare producer is nats-py as the sink uses it (one connection, one
JetStream publish per message with the same headers and expected stream, a batch published
at once and awaited to its PubAcks before the next).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

TOPIC = "bench.event"  # the topic of bench/_common.py's events
T = TypeVar("T")


def _url(address: str) -> str:
    return f"nats://{address}"


def _run(address: str, action: Callable[[JetStreamContext], Awaitable[T]]) -> T:
    async def call() -> T:
        client = await nats.connect(_url(address))
        try:
            return await action(client.jetstream())
        finally:
            await client.close()

    return asyncio.run(call())


def sink_options(address: str, destination: str) -> dict[str, object]:
    """The nats sink publishing to ``<destination>.{topic}``, stored by the stream."""
    return {"servers": _url(address), "subject": destination + ".{topic}", "stream": destination}


def prepare(address: str, destination: str) -> None:
    """A file-backed stream named ``destination`` capturing ``<destination>.>``."""
    config = StreamConfig(name=destination, subjects=[f"{destination}.>"])
    _run(address, lambda jetstream: jetstream.add_stream(config))


def cleanup(address: str, destination: str) -> None:
    _run(address, lambda jetstream: jetstream.delete_stream(destination))


def received(address: str, destination: str) -> int:
    """Messages in the stream ``destination``."""

    async def count(jetstream: JetStreamContext) -> int:
        return int((await jetstream.stream_info(destination)).state.messages)

    return _run(address, count)


def _headers(n: int, destination: str) -> dict[str, str]:
    """What the sink sends with bench/_common.py's event ``n`` (unkeyed)."""
    return {"outbox-id": str(n), "outbox-topic": TOPIC, "Nats-Msg-Id": str(n)}


def _body(n: int) -> bytes:
    return json.dumps({"n": n, "text": "x" * 100}, separators=(",", ":")).encode()


def bare_producer(address: str, destination: str, events: int, batch_size: int) -> float:
    """Seconds to publish ``events`` messages, ``batch_size`` at a time, each batch
    published at once and awaited to its PubAcks before the next, as the sink does."""
    subject = f"{destination}.{TOPIC}"

    async def produce(jetstream: JetStreamContext) -> float:
        await jetstream.account_info()  # as the sink does when it connects
        start = time.perf_counter()
        for first in range(1, events + 1, batch_size):
            batch = range(first, min(first + batch_size, events + 1))
            await asyncio.gather(
                *(
                    jetstream.publish(
                        subject,
                        _body(n),
                        timeout=30,
                        stream=destination,
                        headers=_headers(n, destination),
                    )
                    for n in batch
                )
            )
        return time.perf_counter() - start

    return _run(address, produce)
