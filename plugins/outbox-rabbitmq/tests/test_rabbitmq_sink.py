"""The rabbitmq sink against the machine's RabbitMQ: conformance, the message it sends,
refusals, the deadline, options, ``check()`` and registration."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import AsyncIterator, Sequence

import pytest

from outbox.end_to_end import require_module

require_module("outbox_rabbitmq", hint="pip install -e plugins/outbox-rabbitmq")
require_module("aio_pika", hint="pip install -e plugins/outbox-rabbitmq")

import aio_pika  # noqa: E402
from outbox_rabbitmq import RabbitmqOptions, RabbitmqSink  # noqa: E402
from outbox_rabbitmq.testing import Destination  # noqa: E402

import outbox.plugins  # noqa: E402
from outbox.exceptions import PermanentError, RetryableError  # noqa: E402
from outbox.server_control import free_port, require_server  # noqa: E402
from outbox.sinks import Sink  # noqa: E402
from outbox.testing import Behaviour, SinkHarness, exercise_sink, make_event  # noqa: E402

ADDRESS = "127.0.0.1:5672"
URL = f"amqp://guest:guest@{ADDRESS}/"
PASSWORD = "hunter2-not-the-password"


@pytest.fixture
async def destination() -> AsyncIterator[Destination]:
    require_server("RabbitMQ", ADDRESS, hint="start rabbitmq-server (guest/guest)")
    async with Destination.create(URL) as destination:
        yield destination


def sink_to(url: str, **options: object) -> RabbitmqSink:
    return RabbitmqSink(RabbitmqOptions.model_validate({"url": url, **options}))


def closed_port_url() -> str:
    return f"amqp://guest:{PASSWORD}@127.0.0.1:{free_port()}/"


class RabbitmqHarness(SinkHarness):
    """ "ok" publishes to the test's exchange, a closed port fails for now, a missing
    exchange is refused for good; RabbitMQ never asks for a delay."""

    def __init__(self, destination: Destination) -> None:
        self.destination = destination
        self.seen: list[int] = []

    async def make_sink(self, behaviour: Behaviour = "ok") -> Sink | None:
        exchange = self.destination.exchange
        if behaviour == "ok":
            return sink_to(URL, exchange=exchange)
        if behaviour == "retryable":
            return sink_to(closed_port_url(), exchange=exchange)
        if behaviour == "permanent":
            return sink_to(URL, exchange=f"{exchange}-missing")
        return None

    async def received_ids(self) -> Sequence[int]:
        self.seen += [int(message.message_id or 0) for message in await self.destination.take()]
        return self.seen


async def test_conformance(destination: Destination) -> None:
    await destination.bind("conformance.#")
    ran = await exercise_sink(RabbitmqHarness(destination))
    assert ran == ["acks", "repeat_is_harmless", "retryable", "permanent", "concurrency"]


async def test_the_message_carries_the_event(destination: Destination) -> None:
    await destination.bind("order.created.*")
    event = make_event(
        "order.created",
        {"n": 1, "text": "ünïcode ✓"},
        key="key-1",
        headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    )
    async with sink_to(URL, exchange=destination.exchange, routing_key="{topic}.{key}") as sink:
        await sink.deliver(event)
    [message] = await destination.take()
    assert message.routing_key == "order.created.key-1"
    assert message.message_id == str(event.id)
    assert message.content_type == "application/json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert (
        message.body
        == json.dumps(event.payload, ensure_ascii=False, separators=(",", ":")).encode()
    )
    assert message.headers == {
        "traceparent": event.headers["traceparent"],
        "outbox-id": str(event.id),
        "outbox-topic": "order.created",
        "outbox-key": "key-1",
    }


async def test_the_default_exchange_routes_to_the_queue_named_by_the_routing_key(
    destination: Destination,
) -> None:
    event = make_event()
    async with sink_to(URL, routing_key=destination.queue, persistent=False) as sink:
        assert await sink.deliver_batch([event], timeout=10) == [None]
    [message] = await destination.take()
    assert message.message_id == str(event.id)
    assert message.delivery_mode == aio_pika.DeliveryMode.NOT_PERSISTENT


async def test_an_unroutable_message_is_retried_until_a_queue_is_bound(
    destination: Destination,
) -> None:
    event = make_event("order.created")
    async with sink_to(URL, exchange=destination.exchange) as sink:
        [returned] = await sink.deliver_batch([event], timeout=10)
        await destination.bind("order.#")
        [again] = await sink.deliver_batch([event], timeout=10)
    assert isinstance(returned, RetryableError)
    assert str(returned).startswith(
        f"no queue is bound to exchange {destination.exchange!r} for routing key 'order.created'"
    )
    assert again is None
    assert [message.message_id for message in await destination.take()] == [str(event.id)]


async def test_without_mandatory_an_unroutable_message_counts_as_delivered(
    destination: Destination,
) -> None:
    async with sink_to(URL, exchange=destination.exchange, mandatory=False) as sink:
        assert await sink.deliver_batch([make_event()], timeout=10) == [None]
    assert await destination.take() == []


async def test_a_missing_exchange_is_a_permanent_error_naming_it(destination: Destination) -> None:
    missing = f"{destination.exchange}-missing"
    async with sink_to(URL, exchange=missing) as sink:
        results = await sink.deliver_batch([make_event(), make_event()], timeout=10)
        with pytest.raises(PermanentError, match=f"exchange '{missing}' does not exist"):
            await sink.deliver(make_event())  # on a channel opened again
    assert all(isinstance(result, PermanentError) for result in results)
    assert f"exchange '{missing}' does not exist in RabbitMQ at {ADDRESS}" in str(results[0])


async def test_access_refused_is_a_permanent_error(destination: Destination) -> None:
    internal = f"{destination.exchange}-internal"  # RabbitMQ refuses publishing to it: 403
    await destination.channel.declare_exchange(internal, internal=True, auto_delete=True)
    async with sink_to(URL, exchange=internal) as sink:
        [refused] = await sink.deliver_batch([make_event()], timeout=10)
        async with sink_to(URL, exchange=destination.exchange) as healthy:
            await destination.bind("#")
            assert await healthy.deliver_batch([make_event()], timeout=10) == [None]
    assert isinstance(refused, PermanentError)
    assert "refused user 'guest' access to exchange" in str(refused)
    assert "cannot publish to internal exchange" in str(refused)


async def test_a_refused_login_is_permanent_and_never_shows_the_password() -> None:
    require_server("RabbitMQ", ADDRESS)
    url = f"amqp://guest:{PASSWORD}@{ADDRESS}/"
    async with sink_to(url) as sink:
        [refused] = await sink.deliver_batch([make_event()], timeout=10)
        with pytest.raises(PermanentError) as checked:
            await sink.check()
    assert isinstance(refused, PermanentError)
    assert f"RabbitMQ at {ADDRESS} refused the login of user 'guest'" in str(refused)
    for text in (str(refused), repr(refused), str(checked.value)):
        assert PASSWORD not in text


async def test_a_missing_virtual_host_is_a_permanent_error() -> None:
    require_server("RabbitMQ", ADDRESS)
    async with sink_to(f"amqp://guest:guest@{ADDRESS}/no-such-vhost") as sink:
        [refused] = await sink.deliver_batch([make_event()], timeout=10)
    assert isinstance(refused, PermanentError)
    assert "refused virtual host 'no-such-vhost' to user 'guest'" in str(refused)


async def test_a_closed_port_is_retryable_and_says_where() -> None:
    url = closed_port_url()
    async with sink_to(url) as sink:
        [error] = await sink.deliver_batch([make_event()], timeout=10)
    assert isinstance(error, RetryableError)
    port = url.rsplit(":", 1)[1].rstrip("/")
    assert str(error) == f"cannot reach RabbitMQ at 127.0.0.1:{port}: connection refused"
    assert PASSWORD not in str(error)


async def test_a_server_that_never_answers_is_cut_off_by_the_deadline() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never speaks AMQP
        port = silent.getsockname()[1]
        async with sink_to(f"amqp://guest:guest@127.0.0.1:{port}/") as sink:
            results = await sink.deliver_batch([make_event(), make_event()], timeout=0.5)
    assert [str(result) for result in results] == ["delivery timed out after 0.5s"] * 2


async def test_events_that_cannot_fill_the_routing_key_fail_alone(
    destination: Destination,
) -> None:
    await destination.bind("#")
    keyed, unkeyed, too_long = make_event(key="a"), make_event(), make_event(key="x" * 300)
    async with sink_to(URL, exchange=destination.exchange, routing_key="{key}") as sink:
        results = await sink.deliver_batch([keyed, unkeyed, too_long], timeout=10)
    assert results[0] is None
    assert isinstance(results[1], PermanentError)
    assert "has no key" in str(results[1])
    assert isinstance(results[2], PermanentError)
    assert "longer than 255 bytes" in str(results[2])
    assert [message.message_id for message in await destination.take()] == [str(keyed.id)]


async def test_check_succeeds_against_the_broker(destination: Destination) -> None:
    async with sink_to(URL, exchange=destination.exchange) as sink:
        await sink.check()
    async with sink_to(URL, routing_key=destination.queue) as sink:
        await sink.check()


async def test_check_says_what_is_wrong(destination: Destination) -> None:
    url = closed_port_url()
    async with sink_to(url) as sink:
        with pytest.raises(RetryableError, match=r"cannot reach RabbitMQ at \S+: connection"):
            await sink.check()
    missing = f"{destination.exchange}-missing"
    async with sink_to(URL, exchange=missing) as sink:
        with pytest.raises(PermanentError, match=f"exchange '{missing}' does not exist"):
            await sink.check()
    async with sink_to(URL, routing_key=f"{destination.queue}-missing") as sink:
        with pytest.raises(PermanentError, match="has no such queue"):
            await sink.check()


def test_options_reject_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ValueError, match="colour"):
        RabbitmqOptions.model_validate({"url": URL, "colour": "red"})
    with pytest.raises(ValueError, match=re.escape("may use {topic} and {key} only")):
        RabbitmqOptions.model_validate({"url": URL, "routing_key": "{tenant}"})
    with pytest.raises(ValueError, match="not an exchange name"):
        RabbitmqOptions.model_validate({"url": URL, "exchange": "events!"})
    with pytest.raises(ValueError, match="url\n  Field required"):
        RabbitmqOptions.model_validate({})


def test_the_url_is_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RABBITMQ_URL", f"amqp://guest:{PASSWORD}@rabbit:5672/")
    options = RabbitmqOptions.model_validate({"url": {"env": "RABBITMQ_URL"}})
    assert options.url.get_secret_value() == f"amqp://guest:{PASSWORD}@rabbit:5672/"
    assert PASSWORD not in repr(options)
    assert PASSWORD not in str(options.model_dump())
    with pytest.raises(ValueError, match="scheme must be amqp or amqps") as refused:
        RabbitmqOptions.model_validate({"url": f"http://guest:{PASSWORD}@rabbit/"})
    assert PASSWORD not in str(refused.value)


def test_the_plugin_registers_the_sink_type() -> None:
    types = outbox.plugins.sink_types(outbox.plugins.make_plugin_manager())
    assert types["rabbitmq"] is RabbitmqSink
