"""One long-lived librdkafka producer, polled by a daemon thread of its own.

confluent-kafka's ``Producer`` is synchronous: delivery reports arrive only while someone
calls ``poll()``. A thread does, so that the event loop never blocks; each report resolves
its asyncio future through ``loop.call_soon_threadsafe``. The thread also keeps what the
producer last reported through ``error_cb`` (a broker it cannot reach, a fatal error), which
the sink uses to say why a delivery timed out and when to start a new producer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Mapping

from confluent_kafka import KafkaError, KafkaException, Message, Producer

__all__ = ["Delivery", "PolledProducer"]

Delivery = asyncio.Future[KafkaError | None]
"""Resolves to ``None`` once the broker acknowledged a message, or to the KafkaError that
says why it will not. (A result, not an exception: a future the sink gave up on at its
deadline is never read, and an unread exception would be logged.)"""

_POLL_SECONDS = 0.1
_METADATA_TRY_SECONDS = 0.5
_LIBRDKAFKA_LOG = logging.getLogger("outbox_kafka.librdkafka")


class PolledProducer:
    """A ``confluent_kafka.Producer`` whose ``poll()`` runs in a daemon thread."""

    def __init__(self, config: Mapping[str, object]) -> None:
        self.fatal_error: KafkaError | None = None
        """Set once librdkafka reports a fatal error: this producer is done for."""
        self.last_error: KafkaError | None = None
        """The producer's last error report, cleared by the next acknowledgement."""
        # librdkafka's own log lines (a refused connection...) go to Python's logging, not
        # stderr; like error_cb, they come from poll().
        self._producer = Producer({**config, "error_cb": self._on_error, "logger": _LIBRDKAFKA_LOG})
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="outbox-kafka-poll", daemon=True)
        self._thread.start()

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        headers: list[tuple[str, str | bytes | None]],
    ) -> Delivery:
        """Queue one message; the future settles from its delivery report. Raises
        BufferError when librdkafka's queue is full, KafkaException when it refuses the
        message at once (too large, a fatal producer...)."""
        loop = asyncio.get_running_loop()
        delivery: Delivery = loop.create_future()

        def on_delivery(error: KafkaError | None, _message: Message) -> None:
            if error is None:
                self.last_error = None
            elif error.fatal():
                self.fatal_error = error
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_settle, delivery, error)

        self._producer.produce(topic, value, key, headers=headers, on_delivery=on_delivery)
        return delivery

    def list_topics(self, timeout: float) -> set[str]:
        """The topics the cluster has (blocking: call it in a thread). KafkaException if no
        broker answers within ``timeout`` seconds, or sooner once a connection failed:
        librdkafka itself would keep trying until the timeout."""
        give_up = time.monotonic() + timeout
        while True:
            try:
                return set(self._producer.list_topics(timeout=_METADATA_TRY_SECONDS).topics)
            except KafkaException:
                if self.last_error is not None or time.monotonic() >= give_up:
                    raise

    def close(self, timeout: float) -> None:
        """Stop the poll thread, then wait up to ``timeout`` seconds for the messages still
        queued (blocking: call it in a thread)."""
        self._stopping.set()
        self._thread.join()
        self._producer.flush(timeout)

    def _poll(self) -> None:
        while not self._stopping.is_set():
            self._producer.poll(_POLL_SECONDS)

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self.fatal_error = error
        self.last_error = error


def _settle(delivery: Delivery, error: KafkaError | None) -> None:
    if not delivery.done():  # done: cancelled, the batch gave up on it at its deadline
        delivery.set_result(error)
