"""The kafka sink in real ``outbox relay`` processes: drained, SIGKILLed, and through a
broker outage; every event read back from Tansu with confluent-kafka's consumer."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Sequence
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

require_module("outbox_kafka", hint="pip install -e plugins/outbox-kafka")
require_module("confluent_kafka", hint="pip install -e plugins/outbox-kafka")

from outbox_kafka.testing import Kafka, Record  # noqa: E402

from outbox.server_control import TcpProxy  # noqa: E402

pytestmark = pytest.mark.acceptance


def body_of(planned: Planned) -> bytes:
    return json.dumps(planned.payload, ensure_ascii=False, separators=(",", ":")).encode()


def assert_each_key_in_order(records: Sequence[Record]) -> None:
    """Per partition, each key's events in increasing outbox-id (first copies only: a
    redelivered copy comes after its original)."""
    seen: set[int] = set()
    last: dict[tuple[int, str | None], int] = {}
    for record in records:  # in partition and offset order
        if record.outbox_id in seen:
            continue
        seen.add(record.outbox_id)
        where = (record.partition, record.key)
        assert record.outbox_id > last.get(where, 0), f"{record} after id {last[where]}"
        last[where] = record.outbox_id


def test_drained_events_arrive_once_each_as_published(
    kafka: Kafka, database_url: str, tmp_path: Path
) -> None:
    prefix = f"e2e-{uuid.uuid4().hex[:8]}"
    kafka.create_topic(f"{prefix}.order.created")
    events = planned_events(200, keys=5)
    ids = publish_events(database_url, events)
    options = {"bootstrap_servers": kafka.address, "topic": f"{prefix}.{{topic}}"}
    config = write_config(tmp_path, "kafka", options)
    drain(config, database_url)

    records = kafka.read(f"{prefix}.order.created")
    assert sorted(record.outbox_id for record in records) == sorted(ids)
    planned_by_id = dict(zip(ids, events, strict=True))
    for record in records:
        planned = planned_by_id[record.outbox_id]
        assert record.value == body_of(planned)
        assert record.key == planned.key
        assert record.headers == {
            "traceparent": planned.headers["traceparent"],
            "outbox-id": str(record.outbox_id),
            "outbox-topic": "order.created",
            "outbox-key": planned.key,
        }
    assert_each_key_in_order(records)
    kafka.delete_topic(f"{prefix}.order.created")


def test_relays_killed_mid_delivery_lose_nothing(
    kafka: Kafka, database_url: str, tmp_path: Path
) -> None:
    topic = kafka.new_topic()
    events = planned_events(1000, keys=5)
    config = write_config(tmp_path, "kafka", {"bootstrap_servers": kafka.address, "topic": topic})
    ids = kill_repeatedly(config, database_url, events, kills=5)

    records = kafka.read(topic)
    received = [record.outbox_id for record in records]
    assert set(received) == set(ids)  # nothing lost, nothing foreign
    duplicates = len(received) - len(set(received))
    print(f"kafka SIGKILL: {len(ids)} published, {len(received)} received, {duplicates} duplicates")
    body_by_id = {event_id: body_of(planned) for event_id, planned in zip(ids, events, strict=True)}
    for record in records:  # a duplicate is the same message again
        assert record.value == body_by_id[record.outbox_id]
    assert_each_key_in_order(records)
    kafka.delete_topic(topic)


def test_the_relay_rides_out_a_broker_outage(
    kafka_behind_proxy: tuple[Kafka, TcpProxy], database_url: str, tmp_path: Path
) -> None:
    kafka, proxy = kafka_behind_proxy
    topic = kafka.new_topic()
    config = write_config(tmp_path, "kafka", {"bootstrap_servers": kafka.address, "topic": topic})
    events = planned_events(300, keys=5)
    ids: list[int] = []
    with RelayProcess(config, database_url) as relay:
        publisher = threading.Thread(
            target=lambda: ids.extend(
                publish_events(database_url, events, per_commit=10, pause=0.1)
            )
        )
        publisher.start()
        try:
            time.sleep(1.0)  # some events delivered, more being published
            proxy.cut()
            time.sleep(3.0)  # the outage: the relay keeps publishing into nothing
            proxy.restore()
        finally:
            publisher.join()
        wait_until_done(database_url, len(events), relay)
        assert relay.process.poll() is None, relay.output()
        assert relay.stop() == 0

    received = {record.outbox_id for record in kafka.read(topic)}
    assert received == set(ids)
