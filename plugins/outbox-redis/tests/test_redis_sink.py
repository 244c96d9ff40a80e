"""The ``redis`` sink against a real Redis server: conformance, refusals, deadlines, options,
check()."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

import outbox.plugins
from outbox.end_to_end import require_module
from outbox.exceptions import PermanentError, RetryableError
from outbox.server_control import (
    REQUIRE_VARIABLE,
    ServerProcess,
    TcpProxy,
    free_port,
    require_server,
)
from outbox.sinks import Sink
from outbox.testing import Behaviour, SinkHarness, exercise_sink, make_event

require_module("outbox_redis", hint="pip install -e plugins/outbox-redis")
require_module("redis", hint="pip install redis")

import redis  # noqa: E402 (after the skips above)
from outbox_redis import RedisOptions, RedisSink  # noqa: E402
from outbox_redis.testing import Streams, redis_server, redis_server_binary  # noqa: E402

REDIS_ADDRESS = "127.0.0.1:6379"
REDIS_URL = f"redis://{REDIS_ADDRESS}/0"
PASSWORD = "s3cret-pw-4711"


@pytest.fixture
def streams() -> Iterator[Streams]:
    """A prefix of the test's own on the machine's Redis; its keys deleted afterwards."""
    require_server("Redis", REDIS_ADDRESS, hint="start redis-server")
    made = Streams.fresh(REDIS_URL)
    try:
        yield made
    finally:
        made.delete()


def _options(**options: object) -> RedisOptions:
    return RedisOptions.model_validate(options)


def _sink(streams: Streams, **options: object) -> RedisSink:
    return RedisSink(_options(url=REDIS_URL, **options))


def _set_string(streams: Streams, name: str) -> str:
    """A key under the prefix that holds a string, not a stream."""
    key = f"{streams.prefix}:{name}"
    with redis.Redis.from_url(REDIS_URL) as client:
        client.set(key, "not a stream")
    return key


class RedisHarness(SinkHarness):
    def __init__(self, streams: Streams) -> None:
        self.streams = streams

    async def make_sink(self, behaviour: Behaviour = "ok") -> Sink | None:
        if behaviour == "ok":
            return _sink(self.streams, stream=self.streams.template)
        if behaviour == "retryable":  # nothing listens there
            return RedisSink(_options(url=f"redis://127.0.0.1:{free_port()}/0"))
        if behaviour == "permanent":  # the key holds a string: WRONGTYPE
            return _sink(self.streams, stream=_set_string(self.streams, "taken"))
        return None  # Redis never asks for a delay

    async def received_ids(self) -> Sequence[int]:
        return [entry.id for entry in self.streams.entries() if "id" in entry.fields]


async def test_conformance(streams: Streams) -> None:
    ran = await exercise_sink(RedisHarness(streams))
    assert ran == ["acks", "repeat_is_harmless", "retryable", "permanent", "concurrency"]


async def test_a_partial_failure_fails_only_the_events_refused(streams: Streams) -> None:
    _set_string(streams, "taken")
    good, refused, also_good = (
        make_event(topic="ok"),
        make_event(topic="taken"),
        make_event(topic="ok"),
    )
    async with _sink(streams, stream=streams.template) as sink:
        results = await sink.deliver_batch([good, refused, also_good], timeout=5)
    assert results[0] is None
    assert results[2] is None
    assert isinstance(results[1], PermanentError)
    assert str(results[1]) == (
        f"event {refused.id}: the key '{streams.prefix}:taken' on Redis at {REDIS_ADDRESS} "
        "holds something other than a stream (WRONGTYPE)"
    )
    assert [entry.id for entry in streams.read(f"{streams.prefix}:ok")] == [good.id, also_good.id]


async def test_an_event_without_a_key_cannot_fill_a_key_template(streams: Streams) -> None:
    keyed, unkeyed = make_event(key="k1"), make_event()
    async with _sink(streams, stream=streams.prefix + ":{key}") as sink:
        results = await sink.deliver_batch([keyed, unkeyed], timeout=5)
    assert results[0] is None
    assert isinstance(results[1], PermanentError)
    assert "has no key" in str(results[1])
    assert [entry.id for entry in streams.entries()] == [keyed.id]


async def test_without_create_stream_a_missing_stream_is_refused(streams: Streams) -> None:
    existing = f"{streams.prefix}:existing"
    async with _sink(streams, stream=existing) as sink:
        assert await sink.deliver_batch([make_event()], timeout=5) == [None]
    async with _sink(streams, stream=streams.template, create_stream=False) as sink:
        event = make_event(topic="missing")
        [missing] = await sink.deliver_batch([event], timeout=5)
        assert await sink.deliver_batch([make_event(topic="existing")], timeout=5) == [None]
    async with _sink(streams, stream=f"{streams.prefix}:no", create_stream=False) as sink:
        with pytest.raises(PermanentError, match=r"no stream .*create_stream is false"):
            await sink.check()
    assert isinstance(missing, PermanentError)
    assert str(missing) == (
        f"event {event.id}: no stream '{streams.prefix}:missing' on Redis at {REDIS_ADDRESS}, "
        "and create_stream is false"
    )
    assert streams.names() == [existing]


async def test_maxlen_trims_each_stream(streams: Streams) -> None:
    async with _sink(streams, stream=streams.template, maxlen=10) as sink:
        results = await sink.deliver_batch([make_event() for _ in range(1000)], timeout=10)
    assert results == [None] * 1000
    kept = len(streams.entries())
    assert 10 <= kept < 1000  # "~": Redis trims whole nodes of the stream


async def test_an_unreachable_server_is_retryable_and_says_where() -> None:
    port = free_port()
    url = f"redis://relay:{PASSWORD}@127.0.0.1:{port}/0"
    async with RedisSink(_options(url=url)) as sink:
        [result] = await sink.deliver_batch([make_event()], timeout=5)
    assert isinstance(result, RetryableError)
    assert str(result) == f"cannot reach Redis at 127.0.0.1:{port}: connection refused"


async def test_the_sink_reconnects_after_the_connection_is_cut(streams: Streams) -> None:
    with TcpProxy(REDIS_ADDRESS) as proxy:
        options = _options(url=f"redis://{proxy.address}/0", stream=streams.template)
        async with RedisSink(options) as sink:
            before = make_event()
            assert await sink.deliver_batch([before], timeout=5) == [None]
            proxy.cut()
            [during] = await sink.deliver_batch([make_event()], timeout=5)
            proxy.restore()
            after = make_event()
            assert await sink.deliver_batch([after], timeout=5) == [None]
    assert isinstance(during, RetryableError)
    assert str(during).startswith(f"cannot reach Redis at {proxy.address}: ")
    assert [entry.id for entry in streams.entries()] == [before.id, after.id]


async def test_a_server_that_does_not_answer_times_out_at_the_deadline() -> None:
    # A listening socket nobody accepts from: the connection is made, no reply ever comes.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        options = _options(url=f"redis://127.0.0.1:{port}/0", socket_timeout=60)
        async with RedisSink(options) as sink:
            results = await sink.deliver_batch([make_event(), make_event()], timeout=0.3)
    assert [str(result) for result in results] == ["delivery timed out after 0.3s"] * 2
    assert all(isinstance(result, RetryableError) for result in results)


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A redis-server of the test's own that wants the password PASSWORD."""
    if redis_server_binary() is None:
        reason = "redis-server is not installed"
        if os.environ.get(REQUIRE_VARIABLE) == "1":
            pytest.fail(f"{reason}, and {REQUIRE_VARIABLE}=1 says every broker test must run")
        pytest.skip(reason)
    with redis_server(tmp_path, "--requirepass", PASSWORD) as server:
        yield server


def _own_url(server: ServerProcess, password: str | None = PASSWORD, user: str = "") -> str:
    login = f"{user}:{password}@" if password is not None else ""
    return f"redis://{login}127.0.0.1:{server.port}/0"


async def _deliver_one(url: str, **options: object) -> BaseException | None:
    sink = RedisSink(RedisOptions.model_validate({"url": url, **options}))
    async with sink:
        [result] = await sink.deliver_batch([make_event()], timeout=5)
    return result


async def test_a_missing_or_wrong_password_is_permanent_and_never_shown(
    own_server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    where = f"127.0.0.1:{own_server.port}"
    no_password = await _deliver_one(_own_url(own_server, password=None))
    assert isinstance(no_password, PermanentError)
    assert str(no_password).startswith(f"Redis at {where} wants a password (NOAUTH)")

    monkeypatch.setenv("REDIS_TEST_URL", _own_url(own_server, password="wrong-pw-0815"))
    options = RedisOptions.model_validate({"url": {"env": "REDIS_TEST_URL"}})
    assert "wrong-pw-0815" not in repr(options)
    async with RedisSink(options) as sink:
        [wrong] = await sink.deliver_batch([make_event()], timeout=5)
        with pytest.raises(PermanentError) as checked:
            await sink.check()
    assert isinstance(wrong, PermanentError)
    assert str(wrong) == (
        f"Redis at {where} refused the login: "
        "WRONGPASS invalid username-password pair or user is disabled."
    )
    assert str(checked.value) == str(wrong)
    assert await _deliver_one(_own_url(own_server)) is None


async def test_a_user_without_the_permission_is_refused_for_good(
    own_server: ServerProcess,
) -> None:
    with redis.Redis.from_url(_own_url(own_server)) as admin:
        admin.acl_setuser(
            "limited", enabled=True, passwords=["+pw"], keys=["allowed:*"], commands=["+@all"]
        )
    allowed = await _deliver_one(_own_url(own_server, "pw", "limited"), stream="allowed:{topic}")
    refused = await _deliver_one(_own_url(own_server, "pw", "limited"), stream="other:{topic}")
    assert allowed is None
    assert isinstance(refused, PermanentError)
    assert "does not let this user XADD to 'other:conformance.check': NOPERM" in str(refused)


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (("CONFIG", "SET", "maxmemory", "1"), "OOM command not allowed"),
        (("REPLICAOF", "127.0.0.1", "1"), "READONLY You can't write against a read only replica"),
    ],
)
async def test_a_server_that_refuses_for_now_is_retryable(
    own_server: ServerProcess, command: tuple[str, ...], reply: str
) -> None:
    with redis.Redis.from_url(_own_url(own_server)) as admin:
        admin.execute_command(*command)
    result = await _deliver_one(_own_url(own_server))
    assert isinstance(result, RetryableError)
    assert reply in str(result)


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"colour": "red"}, "colour"),
        ({"stream": "orders:{nope}"}, "{topic} and {key} only"),
        ({"stream": ""}, "may not be empty"),
        ({"maxlen": 0}, "greater than or equal to 1"),
        ({"socket_timeout": 0}, "greater than 0"),
        ({"url": "http://127.0.0.1:6379"}, "scheme must be redis, rediss or unix"),
        ({"url": "redis://"}, "names no host"),
        ({"url": "redis://127.0.0.1:6379/0?db=x"}, "Invalid value for 'db'"),
    ],
)
def test_options_are_checked(options: dict[str, object], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint.replace("{", r"\{")):
        RedisOptions.model_validate(options)


def test_a_password_never_shows_in_repr_nor_in_an_options_error() -> None:
    url = f"redis://relay:{PASSWORD}@127.0.0.1:6379/0"
    assert PASSWORD not in repr(RedisOptions.model_validate({"url": url}))
    with pytest.raises(ValueError, match="scheme must be") as refused:
        RedisOptions.model_validate({"url": url.replace("redis://", "http://")})
    assert PASSWORD not in str(refused.value)


async def test_check_passes_against_the_real_server(streams: Streams) -> None:
    async with _sink(streams, stream=streams.template) as sink:
        await sink.check()
    async with _sink(streams, stream=f"{streams.prefix}:fixed") as sink:
        await sink.check()  # free: XADD makes it
        assert await sink.deliver_batch([make_event()], timeout=5) == [None]
        await sink.check()  # a stream


async def test_check_names_a_key_of_another_type(streams: Streams) -> None:
    key = _set_string(streams, "taken")
    async with _sink(streams, stream=key) as sink:
        with pytest.raises(PermanentError, match=f"the key '{key}' on Redis at .* holds a string"):
            await sink.check()


async def test_check_fails_clearly_on_a_closed_port() -> None:
    port = free_port()
    async with RedisSink(_options(url=f"redis://127.0.0.1:{port}/0")) as sink:
        with pytest.raises(
            RetryableError, match=f"cannot reach Redis at 127.0.0.1:{port}: connection refused"
        ):
            await sink.check()


def test_the_plugin_registers_the_redis_sink_type() -> None:
    assert "redis" in outbox.plugins.sink_types(outbox.plugins.make_plugin_manager())
