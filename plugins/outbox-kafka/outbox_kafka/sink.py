"""The ``kafka`` sink: each event a message of an idempotent ``acks=all`` producer.

An event is settled only from its delivery report: the leader and every in-sync replica
have it. The message's key is the event's key (none for an event without one), its value
:func:`outbox.messages.body`, its headers :func:`outbox.messages.headers`. Per-key order
holds because the relay never has two events of one key in flight across batches, and the
idempotent producer keeps a batch's messages in order within each partition.
"""

from __future__ import annotations

import asyncio
import re
import string
from collections.abc import Sequence
from typing import ClassVar

from confluent_kafka import KafkaError, KafkaException
from pydantic import BaseModel

from outbox import messages
from outbox.exceptions import PermanentError, RetryableError, SinkError
from outbox.sinks import Event, Sink, timed_out
from outbox_kafka.options import KafkaOptions
from outbox_kafka.producer import Delivery, PolledProducer

__all__ = ["KafkaSink"]

_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
_QUEUE_FULL_PAUSE = 0.005
_CHECK_TIMEOUT = 10.0
_CLOSE_FLUSH_SECONDS = 2.0

_UNREACHABLE = {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE}
# A refusal that the same message would meet again: fail the event for good.
_REFUSALS = {
    KafkaError._UNKNOWN_TOPIC: "the topic does not exist, and the broker does not create it",
    KafkaError.UNKNOWN_TOPIC_OR_PART: "the topic does not exist, and the broker does not create it",
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "not authorized to write to the topic",
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: "not authorized by the cluster",
    KafkaError.TOPIC_EXCEPTION: "the broker says the topic name is invalid",
    KafkaError.MSG_SIZE_TOO_LARGE: "the message is larger than the topic or producer allows",
    KafkaError.RECORD_LIST_TOO_LARGE: "the message is larger than the broker allows",
    KafkaError.INVALID_RECORD: "the broker refused the record",
}


class KafkaSink(Sink):
    """Produces events to Kafka, settling each from its delivery report."""

    Options: ClassVar[type[BaseModel]] = KafkaOptions

    def __init__(self, options: KafkaOptions) -> None:
        super().__init__()
        self._options = options
        self._servers = options.bootstrap_servers
        self._producer: PolledProducer | None = None

    async def deliver_batch(
        self,
        events: Sequence[Event],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the base class's signature)
    ) -> list[BaseException | None]:
        """Produce every event at once, in order, then wait for their delivery reports
        until the deadline."""
        deadline = self.deadline(timeout)
        loop = asyncio.get_running_loop()
        give_up = None if deadline is None else loop.time() + deadline
        try:
            producer = await self._producer_for(deadline)
        except RetryableError as error:
            return [error] * len(events)
        results: list[BaseException | None] = [None] * len(events)
        pending: dict[int, tuple[str, Delivery]] = {}
        for index, event in enumerate(events):
            topic = ""
            try:
                topic = self._topic_of(event)
                pending[index] = (topic, await self._produce(producer, topic, event, give_up))
            except SinkError as error:
                results[index] = error
            except TimeoutError:  # librdkafka's queue stayed full until the deadline
                results[index] = self._timed_out(deadline, producer)
            except KafkaException as error:
                results[index] = self._failure(error.args[0], event, topic, deadline, producer)
        if pending:
            remaining = None if give_up is None else max(0.0, give_up - loop.time())
            await asyncio.wait([delivery for _, delivery in pending.values()], timeout=remaining)
        for index, (topic, delivery) in pending.items():
            if not delivery.done():
                delivery.cancel()  # its report, if it comes, is no longer awaited
                results[index] = self._timed_out(deadline, producer)
            elif (refusal := delivery.result()) is not None:
                results[index] = self._failure(refusal, events[index], topic, deadline, producer)
        return results

    async def check(self) -> None:
        """Ask the cluster for its topics; when the topic is fixed (no {topic}/{key}),
        that it is one of them."""
        producer = await self._producer_for(None)
        try:
            topics = await asyncio.to_thread(producer.list_topics, _CHECK_TIMEOUT)
        except KafkaException as error:
            raise RetryableError(self._describe(error.args[0])) from None
        fixed = _fixed_topic(self._options.topic)
        if fixed is not None and fixed not in topics:
            raise PermanentError(f"the Kafka topic {fixed!r} does not exist at {self._servers}")

    async def aclose(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await asyncio.to_thread(producer.close, _CLOSE_FLUSH_SECONDS)

    async def _producer_for(self, deadline: float | None) -> PolledProducer:
        """The sink's producer, made on first use (its delivery timeout from the first
        deadline); a new one after a fatal error, which ends an idempotent producer."""
        if self._producer is not None and self._producer.fatal_error is not None:
            broken, self._producer = self._producer, None
            await asyncio.to_thread(broken.close, 0)
        if self._producer is None:
            try:
                self._producer = PolledProducer(self._options.client_config(deadline))
            except KafkaException as error:  # librdkafka refused the configuration
                raise RetryableError(
                    f"cannot make a Kafka producer for {self._servers}: {error.args[0].str()}"
                ) from None
        return self._producer

    async def _produce(
        self, producer: PolledProducer, topic: str, event: Event, give_up: float | None
    ) -> Delivery:
        """Queue the event's message, waiting while librdkafka's queue is full (until
        ``give_up``, then TimeoutError)."""
        key = None if event.key is None else event.key.encode()
        value = messages.body(event)
        headers: list[tuple[str, str | bytes | None]] = [
            (name, text.encode()) for name, text in messages.headers(event).items()
        ]
        loop = asyncio.get_running_loop()
        while True:
            try:
                return producer.produce(topic, value, key, headers)
            except BufferError:
                if give_up is not None and loop.time() >= give_up:
                    raise TimeoutError from None
                await asyncio.sleep(_QUEUE_FULL_PAUSE)

    def _topic_of(self, event: Event) -> str:
        """The event's topic from the template; PermanentError if not a valid Kafka name."""
        topic = messages.render(self._options.topic, event)
        if not _TOPIC_NAME.fullmatch(topic) or topic in (".", ".."):
            raise PermanentError(
                f"event {event.id}: {topic!r}, made from the template "
                f"{self._options.topic!r}, is not a valid Kafka topic name (letters, digits, "
                "'.', '_' and '-', at most 249, not '.' or '..')"
            )
        return topic

    def _failure(
        self,
        error: KafkaError,
        event: Event,
        topic: str,
        deadline: float | None,
        producer: PolledProducer,
    ) -> SinkError:
        """What a KafkaError makes of an event's delivery."""
        if error.fatal() or error.code() == KafkaError._FATAL:
            producer.fatal_error = producer.fatal_error or error  # the next batch gets a new one
            return RetryableError(
                f"the Kafka producer for {self._servers} failed ({error.str()}); "
                "a new producer takes over"
            )
        if error.code() in _REFUSALS:
            return PermanentError(
                f"Kafka at {self._servers} refused event {event.id} for topic {topic!r}: "
                f"{_REFUSALS[error.code()]} ({error.str()})"
            )
        if error.code() == KafkaError._MSG_TIMED_OUT:
            return self._timed_out(deadline, producer)
        return RetryableError(
            f"Kafka at {self._servers} did not take event {event.id} for topic {topic!r}: "
            f"{error.str()}"
        )

    def _timed_out(self, deadline: float | None, producer: PolledProducer) -> RetryableError:
        """``timed_out(deadline)``, saying what the producer last reported, if anything
        since its last acknowledgement (most often: the broker cannot be reached)."""
        late = timed_out(deadline)
        reported = producer.last_error
        if reported is None:
            return late
        return RetryableError(f"{self._describe(reported)} ({late})")

    def _describe(self, error: KafkaError) -> str:
        if error.code() in _UNREACHABLE:
            return f"cannot reach Kafka at {self._servers}: {error.str()}"
        return f"Kafka at {self._servers}: {error.str()}"


def _fixed_topic(template: str) -> str | None:
    """The topic a template without fields names; None if it uses {topic} or {key}."""
    if any(field is not None for _, field, _, _ in string.Formatter().parse(template)):
        return None
    return template.replace("{{", "{").replace("}}", "}")
