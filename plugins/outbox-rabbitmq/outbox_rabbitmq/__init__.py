"""The ``rabbitmq`` sink: each event published to a RabbitMQ exchange, settled on its confirm.

The sink keeps one connection and one channel in publisher-confirm mode for its life,
opened on the first delivery and reopened on the next delivery after either is lost. A
batch is published at once, all of it, and each event is settled by the broker's answer to
its own message: a ``Basic.Ack`` (the broker has it, on disk for a persistent message in a
durable queue), a ``Basic.Return`` (``mandatory``: no queue is bound for the routing key), a
``Basic.Nack``, or a closed channel. Each message carries ``message_id`` = the event id, the
``outbox.messages`` headers and the payload as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Sequence
from typing import Any, ClassVar

import aio_pika
import aio_pika.abc
from pydantic import BaseModel, ConfigDict, Field, field_validator

import outbox
from outbox import messages
from outbox.exceptions import PermanentError, SinkError
from outbox.secrets import Secret
from outbox.sinks import Event, Sink, timed_out
from outbox_rabbitmq._errors import (
    Broker,
    channel_failure,
    connect_failure,
    exchange_label,
    publish_failure,
)

__all__ = ["RabbitmqOptions", "RabbitmqSink"]

# What AMQP 0-9-1 allows in an exchange name (the client library checks the same).
_EXCHANGE_NAME = re.compile(r"[a-zA-Z0-9\-_.:@#,/+ ]{0,127}")
_MAX_ROUTING_KEY_BYTES = 255


class RabbitmqOptions(BaseModel):
    # hide_input_in_errors: an invalid URL must not be echoed back with its password.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    url: Secret = Field(
        description="amqp://user:password@host:5672/vhost (amqps:// for TLS); give it as "
        '{ env = "NAME" } since it holds a password. Query parameters such as '
        "?heartbeat=10 are passed to the client."
    )
    exchange: str = Field(
        "",
        description="Exchange to publish to; it must exist (the sink does not declare it). "
        '"" is the default exchange, which routes to the queue named by the routing key.',
    )
    routing_key: messages.Template = Field(
        "{topic}", description="Routing key per event; may use {topic} and {key}."
    )
    persistent: bool = Field(
        True,
        description="delivery_mode 2: a durable queue keeps the message on disk, and the "
        "confirm comes once it is there.",
    )
    mandatory: bool = Field(
        True,
        description="An event that no queue is bound for is returned and retried (true) "
        "rather than dropped by the broker and settled as delivered (false).",
    )
    connect_timeout: float = Field(
        10.0, gt=0, description="Seconds to open the connection and the channel."
    )

    @field_validator("url")
    @classmethod
    def _url_is_amqp(cls, url: Secret) -> Secret:
        Broker.from_url(url.get_secret_value())  # ValueError, without the URL, if not
        return url

    @field_validator("exchange")
    @classmethod
    def _exchange_is_a_name(cls, exchange: str) -> str:
        if not _EXCHANGE_NAME.fullmatch(exchange):
            raise ValueError(
                f"{exchange!r} is not an exchange name: at most 127 of the characters "
                "letters, digits, - _ . : @ # , / + and space"
            )
        return exchange


class RabbitmqSink(Sink):
    """Publishes each event to an exchange, with publisher confirms and ``mandatory``."""

    Options: ClassVar[type[BaseModel]] = RabbitmqOptions

    def __init__(self, options: RabbitmqOptions) -> None:
        super().__init__()
        self._options = options
        self._broker = Broker.from_url(options.url.get_secret_value())
        self._opening = asyncio.Lock()
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None

    async def deliver_batch(
        self,
        events: Sequence[Event],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the base class's signature)
    ) -> list[BaseException | None]:
        """Publish every event at once, then wait for each one's confirm until the deadline;
        an event without its confirm by then is :func:`timed_out`."""
        deadline = self.deadline(timeout)
        loop = asyncio.get_running_loop()
        give_up = None if deadline is None else loop.time() + deadline
        cutoff = asyncio.timeout_at(give_up)
        try:
            async with cutoff:
                exchange = await self._open()
        except Exception as error:
            failure = timed_out(deadline) if cutoff.expired() else self._connect_failure(error)
            return [failure] * len(events)
        results: list[BaseException | None] = [None] * len(events)
        publishing: dict[asyncio.Task[Any], tuple[int, str]] = {}
        try:
            for index, event in enumerate(events):
                try:
                    routing_key = self._routing_key(event)
                except SinkError as error:
                    results[index] = error
                    continue
                publish = exchange.publish(
                    self._message(event), routing_key, mandatory=self._options.mandatory
                )
                publishing[loop.create_task(publish)] = (index, routing_key)
            if publishing:
                remaining = None if give_up is None else max(0.0, give_up - loop.time())
                await asyncio.wait(publishing, timeout=remaining)
        finally:  # the deadline, or the caller cancelling us: no publish outlives the call
            late = [task for task in publishing if not task.done()]
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
        for task, (index, routing_key) in publishing.items():
            results[index] = self._outcome(task, routing_key, late, deadline)
        return results

    def _outcome(
        self,
        task: asyncio.Task[Any],
        routing_key: str,
        late: list[asyncio.Task[Any]],
        deadline: float | None,
    ) -> BaseException | None:
        if task in late or task.cancelled():
            return timed_out(deadline)
        error = task.exception()
        if error is None:
            return None
        if self._channel is not None and self._channel.is_closed:
            self._forget_channel(self._channel)
        return publish_failure(error, self._broker, self._options.exchange, routing_key)

    def _routing_key(self, event: Event) -> str:
        routing_key = messages.render(self._options.routing_key, event)
        if len(routing_key.encode()) > _MAX_ROUTING_KEY_BYTES:
            raise PermanentError(
                f"the routing key of event {event.id} is longer than 255 bytes: "
                f"{routing_key[:60]!r}..."
            )
        return routing_key

    def _message(self, event: Event) -> aio_pika.Message:
        persistent = self._options.persistent
        return aio_pika.Message(
            messages.body(event),
            headers=dict(messages.headers(event)),
            content_type="application/json",
            delivery_mode=(
                aio_pika.DeliveryMode.PERSISTENT
                if persistent
                else aio_pika.DeliveryMode.NOT_PERSISTENT
            ),
            message_id=str(event.id),
            timestamp=event.created_at,
        )

    async def _open(self) -> aio_pika.abc.AbstractExchange:
        """The exchange on an open channel: connects, or reopens the channel, if needed.

        One task opens at a time; the others then find the channel it opened.
        """
        async with self._opening:
            connection = self._connection
            # A lost connection is not "closed" for aio-pika until closed; it is no longer
            # "connected".
            if connection is None or connection.is_closed or not connection.connected.is_set():
                await self._drop_connection()
                connection = await aio_pika.connect(
                    self._options.url.get_secret_value(), timeout=self._options.connect_timeout
                )
                self._connection = connection
            channel = self._channel
            if self._exchange is None or channel is None or channel.is_closed:
                async with asyncio.timeout(self._options.connect_timeout):
                    channel = await connection.channel(
                        publisher_confirms=True, on_return_raises=True
                    )
                self._channel = channel
                self._exchange = (
                    await channel.get_exchange(self._options.exchange, ensure=False)
                    if self._options.exchange
                    else channel.default_exchange
                )
            return self._exchange

    def _connect_failure(self, error: BaseException) -> SinkError:
        if isinstance(error, TimeoutError):
            return outbox.RetryableError(
                f"cannot reach RabbitMQ at {self._broker.where}: no answer within "
                f"{self._options.connect_timeout:g}s"
            )
        return connect_failure(error, self._broker)

    def _forget_channel(self, channel: aio_pika.abc.AbstractChannel) -> None:
        """The broker closed ``channel`` (a 404, a 403): the next delivery opens another."""
        if self._channel is channel:
            self._channel = None
            self._exchange = None

    async def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        self._channel = None
        self._exchange = None
        if connection is not None:
            with contextlib.suppress(Exception):  # a lost connection is closed already
                await connection.close()

    async def check(self) -> None:
        """Connect, log in, open a channel, and declare the exchange passively (or, for the
        default exchange and a fixed routing key, the queue it names)."""
        try:
            async with asyncio.timeout(self._options.connect_timeout):
                await self._open()
                assert self._connection is not None
                probe = await self._connection.channel(publisher_confirms=False)
        except Exception as error:
            raise self._connect_failure(error) from None
        try:
            async with probe, asyncio.timeout(self._options.connect_timeout):
                await self._probe(probe)
        except TimeoutError:
            raise outbox.RetryableError(
                f"RabbitMQ at {self._broker.where} did not answer in time"
            ) from None
        except SinkError:
            raise
        except Exception as error:
            raise channel_failure(error, self._broker, self._options.exchange) from None

    async def _probe(self, channel: aio_pika.abc.AbstractChannel) -> None:
        """Passive declarations on a channel of their own: a 404 closes that channel only."""
        exchange = self._options.exchange
        if exchange:
            await channel.declare_exchange(exchange, passive=True)
            return
        routing_key = self._options.routing_key
        if "{" not in routing_key:  # the default exchange routes to the queue of that name
            try:
                await channel.declare_queue(routing_key, passive=True)
            except aio_pika.exceptions.ChannelNotFoundEntity:
                raise PermanentError(
                    f"{exchange_label(exchange)} routes routing key {routing_key!r} to the "
                    f"queue of that name, and RabbitMQ at {self._broker.where} has no such "
                    "queue"
                ) from None

    async def aclose(self) -> None:
        async with self._opening:
            await self._drop_connection()


@outbox.hookimpl
def outbox_register_sinks(register: outbox.hookspecs.RegisterSink) -> None:
    register("rabbitmq", RabbitmqSink)
