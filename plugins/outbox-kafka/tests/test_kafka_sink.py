"""The kafka sink against a real Kafka-compatible broker (Tansu): conformance, refusals,
options, check() and registration."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from outbox.end_to_end import require_module

require_module("outbox_kafka", hint="pip install -e plugins/outbox-kafka")
require_module("confluent_kafka", hint="pip install -e plugins/outbox-kafka")

from outbox_kafka import KafkaOptions, KafkaSink  # noqa: E402
from outbox_kafka.testing import Kafka  # noqa: E402
from pydantic import ValidationError  # noqa: E402

import outbox.plugins  # noqa: E402
from outbox.exceptions import PermanentError, RetryableError  # noqa: E402
from outbox.server_control import free_port  # noqa: E402
from outbox.sinks import Sink  # noqa: E402
from outbox.testing import Behaviour, SinkHarness, exercise_sink, make_event  # noqa: E402

SECRET = "hunter2-not-for-logs"
# Without auto-creation, and told not to wait long for a topic to appear, librdkafka
# reports a topic the broker does not have as UNKNOWN_TOPIC_OR_PART at once.
NO_AUTO_CREATE = {"allow.auto.create.topics": False, "topic.metadata.propagation.max.ms": 500}


def closed_port() -> str:
    return f"127.0.0.1:{free_port()}"


def make_sink(bootstrap_servers: str, **options: object) -> KafkaSink:
    options = {"bootstrap_servers": bootstrap_servers, **options}
    return KafkaSink(KafkaOptions.model_validate(options))


class KafkaHarness(SinkHarness):
    def __init__(self, kafka: Kafka) -> None:
        self.kafka = kafka
        self.topic = kafka.new_topic()

    async def make_sink(self, behaviour: Behaviour = "ok") -> Sink | None:
        if behaviour == "ok":
            return make_sink(self.kafka.address, topic=self.topic)
        if behaviour == "retryable":  # nothing listens: every event times out, retryable
            unreachable = make_sink(closed_port(), topic=self.topic)
            unreachable.delivery_timeout = 1.0
            return unreachable
        if behaviour == "permanent":  # a topic the broker neither has nor creates
            return make_sink(self.kafka.address, topic="missing-topic", options=NO_AUTO_CREATE)
        return None  # Kafka has no "retry after" answer

    async def received_ids(self) -> Sequence[int]:
        return [record.outbox_id for record in self.kafka.read(self.topic)]


async def test_conformance(kafka: Kafka) -> None:
    ran = await exercise_sink(KafkaHarness(kafka))
    assert ran == ["acks", "repeat_is_harmless", "retryable", "permanent", "concurrency"]


async def test_a_message_is_the_event(kafka: Kafka) -> None:
    topic = kafka.new_topic()
    event = make_event(
        topic="order.created",
        payload={"n": 1, "text": "ünïcode ✓"},
        key="customer-7",
        headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    )
    unkeyed = make_event(topic="order.created", payload=[1, 2])
    async with make_sink(kafka.address, topic=topic) as sink:
        assert await sink.deliver_batch([event, unkeyed], timeout=10) == [None, None]
    by_id = {record.outbox_id: record for record in kafka.read(topic)}
    keyed = by_id[event.id]
    body = json.dumps(event.payload, ensure_ascii=False, separators=(",", ":"))
    assert keyed.value == body.encode()
    assert keyed.key == "customer-7"
    assert keyed.headers == {
        "traceparent": event.headers["traceparent"],
        "outbox-id": str(event.id),
        "outbox-topic": "order.created",
        "outbox-key": "customer-7",
    }
    assert by_id[unkeyed.id].key is None
    assert "outbox-key" not in by_id[unkeyed.id].headers


async def test_a_missing_topic_is_a_permanent_refusal_naming_it(kafka: Kafka) -> None:
    event = make_event()
    async with make_sink(kafka.address, topic="no-such-topic", options=NO_AUTO_CREATE) as sink:
        [error] = await sink.deliver_batch([event], timeout=10)
    assert isinstance(error, PermanentError)
    assert f"refused event {event.id} for topic 'no-such-topic'" in str(error)
    assert "does not exist" in str(error)


async def test_an_invalid_rendered_topic_is_permanent_and_says_which(kafka: Kafka) -> None:
    event = make_event(topic="orders/created")
    async with make_sink(kafka.address, topic="app.{topic}") as sink:
        [error] = await sink.deliver_batch([event], timeout=10)
    assert isinstance(error, PermanentError)
    assert f"event {event.id}: 'app.orders/created'" in str(error)
    assert "not a valid Kafka topic name" in str(error)


async def test_an_event_without_a_key_cannot_fill_a_key_template(kafka: Kafka) -> None:
    async with make_sink(kafka.address, topic="by-key.{key}") as sink:
        [error] = await sink.deliver_batch([make_event(key=None)], timeout=10)
    assert isinstance(error, PermanentError)
    assert "has no key" in str(error)


async def test_a_message_too_large_is_permanent_and_the_others_of_the_batch_arrive(
    kafka: Kafka,
) -> None:
    topic = kafka.new_topic()
    large = make_event(payload={"text": "x" * 5000})
    small = make_event()
    async with make_sink(kafka.address, topic=topic, options={"message.max.bytes": 2000}) as sink:
        results = await sink.deliver_batch([large, small], timeout=10)
    assert isinstance(results[0], PermanentError)
    assert "larger than" in str(results[0])
    assert results[1] is None
    assert [record.outbox_id for record in kafka.read(topic)] == [small.id]


async def test_an_unreachable_broker_is_retryable_saying_where() -> None:
    address = closed_port()
    async with make_sink(address) as sink:
        [error] = await sink.deliver_batch([make_event()], timeout=1.0)
    assert isinstance(error, RetryableError)
    assert f"cannot reach Kafka at {address}" in str(error)
    assert "timed out after 1s" in str(error)


async def test_check_passes_against_the_broker(kafka: Kafka) -> None:
    topic = kafka.new_topic()
    async with make_sink(kafka.address, topic=topic) as sink:
        await sink.check()
    async with make_sink(kafka.address, topic="app.{topic}") as sink:
        await sink.check()  # a topic per event: only the cluster is checked


async def test_check_fails_on_a_missing_topic(kafka: Kafka) -> None:
    async with make_sink(kafka.address, topic="no-such-topic") as sink:
        with pytest.raises(PermanentError, match="topic 'no-such-topic' does not exist"):
            await sink.check()


async def test_check_fails_on_a_closed_port() -> None:
    address = closed_port()
    async with make_sink(address) as sink:
        with pytest.raises(RetryableError, match=f"cannot reach Kafka at {address}"):
            await sink.check()


def test_options_reject_unknown_keys_and_bad_templates() -> None:
    with pytest.raises(ValidationError, match="colour"):
        KafkaOptions.model_validate({"bootstrap_servers": "k:9092", "colour": "red"})
    with pytest.raises(ValidationError, match=r"may use \{topic\} and \{key\} only"):
        KafkaOptions.model_validate({"bootstrap_servers": "k:9092", "topic": "{colour}"})
    with pytest.raises(ValidationError, match="letters, digits"):
        KafkaOptions.model_validate({"bootstrap_servers": "k:9092", "topic": "app/{topic}"})


@pytest.mark.parametrize(
    ("key", "option"),
    [
        ("sasl.password", "sasl_password"),
        ("ssl.key.password", "ssl_key_password"),
        ("sasl.oauthbearer.client.secret", "sasl_oauthbearer_client_secret"),
    ],
)
def test_options_refuse_secrets_naming_the_top_level_option(key: str, option: str) -> None:
    with pytest.raises(ValidationError) as refused:
        KafkaOptions.model_validate({"bootstrap_servers": "k:9092", "options": {key: SECRET}})
    assert f'{option} = {{ env = "NAME" }}' in str(refused.value)
    assert SECRET not in str(refused.value)


@pytest.mark.parametrize(
    "weakening", [{"enable.idempotence": False}, {"acks": 1}, {"request.required.acks": "0"}]
)
def test_options_refuse_to_weaken_the_guarantee(weakening: dict[str, object]) -> None:
    with pytest.raises(ValidationError, match="must stay"):
        KafkaOptions.model_validate({"bootstrap_servers": "k:9092", "options": weakening})


def test_a_secret_is_never_in_the_repr_and_reaches_librdkafka(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_PASSWORD", SECRET)
    options = KafkaOptions.model_validate(
        {
            "bootstrap_servers": "k:9092",
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "relay",
            "sasl_password": {"env": "KAFKA_PASSWORD"},
            "options": {"acks": "all", "compression.type": "zstd"},
        }
    )
    assert SECRET not in repr(options)
    config = options.client_config(5.0)
    assert config["sasl.password"] == SECRET
    assert config["enable.idempotence"] is True
    assert config["acks"] == "all"
    assert config["delivery.timeout.ms"] == 5000


async def test_a_secret_is_never_in_a_delivery_error() -> None:
    options = {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_username": "relay",
        "sasl_password": SECRET,
    }
    async with make_sink(closed_port(), **options) as sink:
        [error] = await sink.deliver_batch([make_event()], timeout=1.0)
        with pytest.raises(RetryableError) as failed:
            await sink.check()
    assert isinstance(error, RetryableError)
    assert SECRET not in str(error)
    assert SECRET not in str(failed.value)


def test_the_sink_type_is_registered() -> None:
    assert "kafka" in outbox.plugins.sink_types(outbox.plugins.make_plugin_manager())
