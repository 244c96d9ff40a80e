"""The ``kafka`` sink type: events to Apache Kafka (or a Kafka-compatible broker) through an
idempotent ``acks=all`` confluent-kafka producer, each settled from its delivery report."""

from __future__ import annotations

import outbox
from outbox_kafka.options import KafkaOptions
from outbox_kafka.sink import KafkaSink

__all__ = ["KafkaOptions", "KafkaSink"]


@outbox.hookimpl
def outbox_register_sinks(register: outbox.hookspecs.RegisterSink) -> None:
    register("kafka", KafkaSink)
