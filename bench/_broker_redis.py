"""Redis Streams' part of ``bench/brokers.py``: the destination is a stream of that name
(XADD makes it), the sink appends every event to it, and the bare producer is redis-py's
asyncio client with the sink's settings (``outbox_redis.make_client``: no retries of its
own), appending the same entries as the sink, a batch as one pipeline of XADDs
(``transaction=False``) awaited to its replies before the next.
"""

from __future__ import annotations

import asyncio
import json
import time

import redis
from outbox_redis import RedisOptions, make_client
from redis.typing import EncodableT, FieldT

TOPIC = "bench.event"  # the topic of bench/_common.py's events


def _url(address: str) -> str:
    return f"redis://{address}/0"


def sink_options(address: str, destination: str) -> dict[str, object]:
    """The redis sink appending every event to the stream ``destination``."""
    return {"url": _url(address), "stream": destination}


def prepare(address: str, destination: str) -> None:
    """Nothing to make (the first XADD makes the stream); a stale key is removed."""
    cleanup(address, destination)


def cleanup(address: str, destination: str) -> None:
    with redis.Redis.from_url(_url(address)) as client:
        client.delete(destination)


def received(address: str, destination: str) -> int:
    """Entries in the stream ``destination``."""
    with redis.Redis.from_url(_url(address)) as client:
        return int(client.xlen(destination))


def _fields(n: int) -> dict[FieldT, EncodableT]:
    """The entry the sink appends for bench/_common.py's event ``n`` (unkeyed)."""
    headers = {"outbox-id": str(n), "outbox-topic": TOPIC}
    return {
        "id": str(n),
        "topic": TOPIC,
        "payload": json.dumps({"n": n, "text": "x" * 100}, separators=(",", ":")).encode(),
        "headers": json.dumps(headers, ensure_ascii=False, separators=(",", ":")),
    }


def bare_producer(address: str, destination: str, events: int, batch_size: int) -> float:
    """Seconds to append ``events`` entries, ``batch_size`` at a time, each batch one
    pipeline awaited to its replies before the next, as the sink does."""
    options = RedisOptions.model_validate(sink_options(address, destination))

    async def produce() -> float:
        client = make_client(options)
        try:
            await client.ping()  # connected before the clock starts
            start = time.perf_counter()
            for first in range(1, events + 1, batch_size):
                pipeline = client.pipeline(transaction=False)
                for n in range(first, min(first + batch_size, events + 1)):
                    pipeline.xadd(destination, _fields(n))
                replies = await pipeline.execute(raise_on_error=False)
                failed = [reply for reply in replies if isinstance(reply, Exception)]
                if failed:
                    raise SystemExit(f"bare redis: {failed[0]}")
            return time.perf_counter() - start
        finally:
            await client.aclose()

    return asyncio.run(produce())
