"""Helpers for a sink plugin's end-to-end tests: events published through
:func:`outbox.publish` and a real ``outbox relay`` process::

    def test_events_arrive(database_url, tmp_path):
        require_server("Redis", "127.0.0.1:6379")  # from outbox.server_control
        config = write_config(tmp_path, "redis", {"url": "redis://127.0.0.1:6379"})
        ids = publish_events(database_url, planned_events(100))
        drain(config, database_url)  # outbox relay --drain, a real process
        ...  # read the broker back with its own client

:func:`kill_repeatedly` SIGKILLs relays again and again while events are published,
:class:`RelayProcess` keeps one running (through a broker outage, say), and
:func:`require_module` skips a test module whose client library is not installed (or fails
it where ``OUTBOX_REQUIRE_BROKERS=1``, as in CI). :mod:`outbox.server_control` has the
servers: one to stop and start, a proxy to cut, :func:`~outbox.server_control.require_server`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any, Self

import psycopg

import outbox
from outbox import admin
from outbox.server_control import REQUIRE_VARIABLE

__all__ = [
    "Planned",
    "RelayProcess",
    "delivered_count",
    "drain",
    "kill_repeatedly",
    "planned_events",
    "publish_events",
    "require_module",
    "wait_until_done",
    "write_config",
]

# Quick to reclaim a killed relay's rows, quick to retry through an outage, and patient
# enough (max_attempts) that an outage of a few seconds parks nothing.
TEST_RELAY_SETTINGS: Mapping[str, object] = {
    "poll_interval": 0.1,
    "lease_seconds": 6.0,
    "delivery_timeout": 5.0,
    "shutdown_timeout": 2.0,
    "backoff_base": 0.2,
    "backoff_cap": 1.0,
    "max_attempts": 1000,
}


def require_module(name: str, *, hint: str = "") -> ModuleType:
    """The module ``name``, imported; if it is not installed, skip the test (or the test
    module, called at its top) saying so, or fail it where ``OUTBOX_REQUIRE_BROKERS=1``."""
    import pytest

    try:
        return importlib.import_module(name)
    except ImportError as error:
        reason = f"{name} is not installed ({error})"
    if os.environ.get(REQUIRE_VARIABLE) == "1":
        pytest.fail(f"{reason}, and {REQUIRE_VARIABLE}=1 says every broker test must run")
    pytest.skip(f"{reason}{'; ' + hint if hint else ''}", allow_module_level=True)


@dataclasses.dataclass(frozen=True)
class Planned:
    """An event to publish."""

    topic: str
    payload: Any
    key: str | None = None
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)


def planned_events(count: int, *, keys: int = 5, topic: str = "order.created") -> list[Planned]:
    """``count`` events over ``keys`` keys (0: unkeyed), each with a distinct payload and a
    ``traceparent`` header of its own."""
    return [
        Planned(
            topic,
            {"n": n, "text": "ünïcode ✓"},
            key=f"key-{n % keys}" if keys else None,
            headers={"traceparent": f"00-{n + 1:032x}-{n + 1:016x}-01"},
        )
        for n in range(count)
    ]


def publish_events(
    database_url: str, events: Sequence[Planned], *, per_commit: int = 50, pause: float = 0.0
) -> list[int]:
    """Publish ``events`` through :func:`outbox.publish`, ``per_commit`` to a transaction
    and ``pause`` seconds between transactions; their ids, in order."""
    ids = []
    with psycopg.connect(database_url) as conn:
        for start in range(0, len(events), per_commit):
            with conn.transaction():
                for planned in events[start : start + per_commit]:
                    event = outbox.publish(
                        conn,
                        planned.topic,
                        planned.payload,
                        key=planned.key,
                        headers=planned.headers,
                    )
                    assert event.id is not None  # set at once on a connection
                    ids.append(event.id)
            time.sleep(pause)
    return ids


def write_config(
    directory: Path,
    sink_type: str,
    options: Mapping[str, object],
    *,
    relay: Mapping[str, object] | None = None,
    topics: Sequence[str] = ("#",),
    base: Mapping[str, object] = TEST_RELAY_SETTINGS,
) -> Path:
    """``outbox.toml`` in ``directory``: one sink ``out`` of ``sink_type`` with ``options``,
    subscribed to ``topics``; relay settings ``base`` (:data:`TEST_RELAY_SETTINGS`; ``{}``:
    every setting at its default) updated by ``relay``."""
    settings = {**base, **(relay or {})}
    lines = ["[relay]", *(f"{key} = {_toml(value)}" for key, value in settings.items()), ""]
    lines += ["[sinks.out]", f"type = {_toml(sink_type)}"]
    lines += [f"{_toml_key(key)} = {_toml(value)}" for key, value in options.items()]
    lines += ["", "[[subscriptions]]", f"topics = {_toml(list(topics))}", 'sinks = ["out"]', ""]
    path = directory / "outbox.toml"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, Mapping):
        pairs = (f"{_toml_key(str(k))} = {_toml(v)}" for k, v in value.items())
        return "{ " + ", ".join(pairs) + " }"
    raise TypeError(f"cannot write {value!r} in TOML")


def _relay_command(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "outbox.cli", "relay", "--config", str(config), *args]


def _relay_env(database_url: str) -> dict[str, str]:
    return {**os.environ, "OUTBOX_DATABASE_URL": database_url, "PYTHONUNBUFFERED": "1"}


def drain(config: Path, database_url: str, *, timeout: float = 180.0) -> str:
    """Run ``outbox relay --drain`` until nothing is due; its output. AssertionError, with
    that output, if it exits with anything but 0."""
    done = subprocess.run(
        _relay_command(config, "--drain"),
        env=_relay_env(database_url),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise AssertionError(f"outbox relay --drain exited {done.returncode}:\n{output[-4000:]}")
    return output


class RelayProcess:
    """``outbox relay`` running as a process of its own, its output in ``log``; killed for
    good when the ``with`` block ends, whatever happens in it."""

    def __init__(self, config: Path, database_url: str) -> None:
        self.log = config.parent / f"relay-{time.monotonic_ns()}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                _relay_command(config),
                env=_relay_env(database_url),
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        """SIGKILL: no shutdown, no handing back; its leases expire."""
        self.process.kill()
        self.process.wait()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for the exit; its exit code."""
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"the relay did not stop in {timeout:g}s:\n{self.output()}"
            ) from None

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-4000:]

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process.poll() is None:
            self.kill()


def delivered_count(database_url: str) -> dict[str, int]:
    """How many events of the table are in each status (``pending``, ``done``...)."""

    async def counts() -> dict[str, int]:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            return (await admin.status(conn, "public")).totals

    return asyncio.run(counts())


def wait_until_done(
    database_url: str, count: int, relay: RelayProcess, timeout: float = 120.0
) -> None:
    """Wait until ``count`` events are done; AssertionError, with the relay's output, if
    they are not within ``timeout`` seconds or the relay exits."""
    give_up = time.monotonic() + timeout
    while (totals := delivered_count(database_url)).get("done", 0) < count:
        if relay.process.poll() is not None:
            raise AssertionError(f"the relay exited {relay.process.returncode}:\n{relay.output()}")
        if time.monotonic() > give_up:
            raise AssertionError(
                f"after {timeout:g}s: {totals}, not {count} done:\n{relay.output()}"
            )
        time.sleep(0.2)


def kill_repeatedly(
    config: Path,
    database_url: str,
    events: Sequence[Planned],
    *,
    kills: int = 5,
    seed: int = 0,
) -> list[int]:
    """Publish ``events`` in a thread, spread over the time it takes, while relays start and
    are SIGKILLed ``kills`` times, each after a random 0.5 to 2 seconds; then drain what is
    left with ``outbox relay --drain``. The ids published, in order."""
    chance = random.Random(seed)
    ids: list[int] = []
    commits = max(1, len(events) // 10)
    pause = kills * 1.25 / commits  # the kills' expected time
    publisher = threading.Thread(
        target=lambda: ids.extend(publish_events(database_url, events, per_commit=10, pause=pause))
    )
    publisher.start()
    try:
        for _ in range(kills):
            with RelayProcess(config, database_url) as relay:
                time.sleep(chance.uniform(0.5, 2.0))
                relay.kill()
    finally:
        publisher.join()
    drain(config, database_url)
    return ids
