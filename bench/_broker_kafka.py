"""Kafka's part of ``bench/brokers.py``: the destination is a topic of 3 partitions, and the
bare producer is confluent-kafka with the sink's settings (one idempotent ``acks=all``
producer polled by a thread of its own, a batch produced at once and awaited to its
delivery reports before the next).
"""

from __future__ import annotations

import json
import threading
import time

from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient
from outbox_kafka.options import KafkaOptions
from outbox_kafka.testing import Kafka

TOPIC = "bench.event"  # the topic of bench/_common.py's events
PARTITIONS = 3


def sink_options(address: str, destination: str) -> dict[str, object]:
    """The kafka sink producing every event to the topic ``destination``."""
    return {"bootstrap_servers": address, "topic": destination}


def prepare(address: str, destination: str) -> None:
    """The topic ``destination``, of 3 partitions."""
    Kafka(address).create_topic(destination, PARTITIONS)


def cleanup(address: str, destination: str) -> None:
    admin = AdminClient({"bootstrap.servers": address})
    for future in admin.delete_topics([destination]).values():
        future.result(timeout=10)


def received(address: str, destination: str) -> int:
    """Messages in the topic ``destination``."""
    return len(Kafka(address).read(destination))


def _message(n: int) -> tuple[bytes, list[tuple[str, str | bytes | None]]]:
    """What the sink sends for bench/_common.py's unkeyed event ``n``: body and headers."""
    body = json.dumps({"n": n, "text": "x" * 100}, separators=(",", ":")).encode()
    return body, [("outbox-id", str(n).encode()), ("outbox-topic", TOPIC.encode())]


def bare_producer(address: str, destination: str, events: int, batch_size: int) -> float:
    """Seconds to produce ``events`` messages, ``batch_size`` at a time, each batch
    produced at once and awaited to its delivery reports before the next, as the sink
    does (with the sink's producer configuration, its 120 s default delivery timeout)."""
    config = KafkaOptions(bootstrap_servers=address).client_config(None)
    producer = Producer(config)
    stopping = threading.Event()

    def poll() -> None:  # the sink's poll thread
        while not stopping.is_set():
            producer.poll(0.1)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        started = time.perf_counter()
        for first in range(0, events, batch_size):
            _produce_batch(producer, destination, range(first, min(first + batch_size, events)))
        return time.perf_counter() - started
    finally:
        stopping.set()
        poller.join()
        producer.flush(10)


def _produce_batch(producer: Producer, destination: str, numbers: range) -> None:
    """Produce one batch at once, then wait for every delivery report."""
    done = threading.Semaphore(0)
    failures: list[KafkaError] = []

    def report(error: KafkaError | None, _message: Message) -> None:
        if error is not None:
            failures.append(error)
        done.release()

    for n in numbers:
        body, headers = _message(n)
        producer.produce(destination, body, None, headers=headers, on_delivery=report)
    for _ in numbers:
        done.acquire()
    if failures:
        raise SystemExit(f"bare kafka producer: {failures[0].str()}")
