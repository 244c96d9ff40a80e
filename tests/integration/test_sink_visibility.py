"""Per-sink visibility (issue 12): `outbox sinks list`, the sinks of `outbox status`, and the
per-sink metrics of `outbox relay --metrics-port`, against a real PostgreSQL.

The listing tests put rows in the states under test with direct UPDATEs (a delivery waiting,
retrying, failed; an event never routed; events whose topic matched no subscription) and
hold sinks with :class:`outbox.sink_switches.Switches`. The metrics test runs a relay as an
operator would, with a sink that fails every delivery, one paused and one disabled, and
compares what /metrics says with what `outbox status --json` says.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

import outbox
from outbox import admin, sink_status
from outbox.sink_switches import Switches

DEADLINE = 60.0

LISTING_CONFIG = """
[sinks.alpha]
type = "callable"
target = "builtins:id"

[sinks.beta]
type = "callable"
target = "builtins:id"

[sinks.gamma]
type = "callable"
target = "builtins:id"

[[subscriptions]]
topics = ["order.#"]
sinks = ["alpha", "beta", "gamma"]
"""


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("OUTBOX_")}
    return {**env, **(extra or {})}


def _cli(cwd: Path, url: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "outbox.cli", *args, "--config", "outbox.toml"],
        cwd=cwd,
        env=_env({"OUTBOX_DATABASE_URL": url}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _publish(url: str, topic: str, key: str | None = None) -> int:
    with psycopg.connect(url) as conn:
        event = outbox.publish(conn, topic, {"topic": topic}, key=key)
    assert event.id is not None
    return event.id


def _set(url: str, event_id: int, **columns: Any) -> None:
    assignments = ", ".join(f"{name} = %({name})s" for name in columns)
    values = {n: Jsonb(v) if isinstance(v, dict) else v for n, v in columns.items()}
    with psycopg.connect(url) as conn:
        conn.execute(
            f"UPDATE outbox_events SET {assignments} WHERE id = %(id)s",  # type: ignore[arg-type]
            {**values, "id": event_id},
        )


def _delivered() -> dict[str, Any]:
    return {"status": "delivered", "attempts": 1, "last_error": None}


def _waiting() -> dict[str, Any]:
    return {"status": "waiting", "attempts": 0, "until": "9999-12-31T00:00:00+00:00"}


def _retrying(error: str) -> dict[str, Any]:
    return {"status": "retrying", "attempts": 2, "last_error": error}


def _failed(error: str) -> dict[str, Any]:
    return {"status": "failed", "attempts": 5, "last_error": error}


async def _switch(url: str) -> None:
    switches = Switches()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await switches.pause(conn, "gamma", "maintenance window")
        await switches.disable(conn, "beta", "HTTP 410 Gone")
        await switches.pause(conn, "legacy", "kept for its history")


@pytest.fixture
def listing(database_url: str, tmp_path: Path) -> Path:
    """A configuration of three sinks, and rows in every state a sink's figures count:

    - event 1 (key k, created 10 minutes ago): alpha delivered, beta retrying, gamma waiting;
    - event 2 (no key): alpha failed, beta delivered, gamma waiting;
    - event 3: alpha failed (a later error), beta and gamma delivered: the event failed;
    - event 4: never claimed (deliveries '{}');
    - events 5 and 6: topic matched no subscription, settled done now and two hours ago;
    - event 7: done, delivered everywhere (counts nowhere).

    gamma is paused, beta disabled, and legacy (not configured) paused.
    """
    (tmp_path / "outbox.toml").write_text(textwrap.dedent(LISTING_CONFIG))
    url = database_url
    ids = [_publish(url, "order.placed", key="k"), *(_publish(url, "order.placed") for _ in "ab")]
    first = {"alpha": _delivered(), "beta": _retrying("HTTP 503"), "gamma": _waiting()}
    _set(url, ids[0], created_at=_ago(url, 600), deliveries=first)
    second = {"alpha": _failed("HTTP 400 first"), "beta": _delivered(), "gamma": _waiting()}
    _set(url, ids[1], deliveries=second)
    third = {"alpha": _failed("HTTP 400 second"), "beta": _delivered(), "gamma": _delivered()}
    _set(url, ids[2], status="failed", done_at=_ago(url, 0), deliveries=third)
    _publish(url, "order.placed")
    unrouted = {"*": {"status": "unrouted"}}
    for seconds in (0, 7200):
        event_id = _publish(url, "user.signed_up")
        _set(url, event_id, status="done", done_at=_ago(url, seconds), deliveries=unrouted)
    done = _publish(url, "order.placed")
    everywhere = {name: _delivered() for name in ("alpha", "beta", "gamma")}
    _set(url, done, status="done", done_at=_ago(url, 0), deliveries=everywhere)
    asyncio.run(_switch(url))
    return tmp_path


def _ago(url: str, seconds: float) -> Any:
    with psycopg.connect(url) as conn:
        record = conn.execute("SELECT now() - make_interval(secs => %s)", (seconds,)).fetchone()
    assert record is not None
    return record[0]


EXPECTED = {
    # name: (type, state, reason, backlog, failed, last_error)
    "alpha": ("callable", "active", None, 0, 2, "HTTP 400 second"),
    "beta": ("callable", "disabled", "HTTP 410 Gone", 1, 0, "HTTP 503"),
    "gamma": ("callable", "paused", "maintenance window", 2, 0, None),
    "legacy": (None, "paused", "kept for its history", 0, 0, None),
}


def _figures(sinks: list[dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
    return {
        s["name"]: (s["type"], s["state"], s["reason"], s["backlog"], s["failed"], s["last_error"])
        for s in sinks
    }


def test_sinks_list_json_shows_every_sink_with_its_state_and_figures(
    listing: Path, database_url: str
) -> None:
    report = json.loads(_cli(listing, database_url, "sinks", "list", "--json"))
    assert _figures(report["sinks"]) == EXPECTED
    by_name = {s["name"]: s for s in report["sinks"]}
    assert 600 <= by_name["gamma"]["oldest_waiting_seconds"] < 900  # event 1, 10 minutes old
    assert 600 <= by_name["beta"]["oldest_waiting_seconds"] < 900
    assert by_name["alpha"]["oldest_waiting_seconds"] is None
    assert by_name["gamma"]["since"] is not None
    assert by_name["alpha"]["since"] is None
    assert report["unrouted"] == {
        "not_routed": 1,
        "no_subscription": 2,
        "no_subscription_last_hour": 1,
    }


def test_sinks_list_text(listing: Path, database_url: str) -> None:
    text = _cli(listing, database_url, "sinks", "list")
    lines = text.splitlines()
    assert lines[0].split() == [
        "SINK", "TYPE", "STATE", "BACKLOG", "OLDEST", "FAILED", "LAST", "ERROR",
    ]  # fmt: skip
    rows = {line.split()[0]: line for line in lines[1:5]}
    assert rows["alpha"].split()[1:4] == ["callable", "active", "0"]
    assert rows["alpha"].endswith("HTTP 400 second")
    assert rows["beta"].split()[1:3] == ["callable", "disabled"]
    assert rows["gamma"].split()[1:4] == ["callable", "paused", "2"]
    assert rows["gamma"].split()[4].startswith("10.")  # minutes: event 1 is the oldest
    assert rows["legacy"].split()[1:3] == ["-", "paused"]
    assert "beta: disabled since" in text
    assert "HTTP 410 Gone" in text
    assert "gamma: paused since" in text
    assert "maintenance window" in text
    assert "not yet routed: 1 event(s)" in text


def test_status_shows_each_sink_and_events_no_subscription_matched(
    listing: Path, database_url: str
) -> None:
    report = json.loads(_cli(listing, database_url, "status", "--json"))
    assert _figures(report["sinks"]) == EXPECTED
    assert report["unrouted"]["no_subscription"] == 2
    assert report["unrouted"]["no_subscription_last_hour"] == 1
    assert report["unrouted"]["not_routed"] == 1

    text = _cli(listing, database_url, "status")
    assert "events no subscription matched: 2 (1 in the last hour)" in text
    assert "not yet routed: 1 event(s)" in text
    section = text[text.index("\nsinks:") :].splitlines()
    rows = {line.split()[0]: line.split() for line in section[2:6]}
    assert rows["gamma"][:4] == ["gamma", "callable", "paused", "2"]
    assert rows["beta"][:4] == ["beta", "callable", "disabled", "1"]
    assert rows["alpha"][-3:] == ["HTTP", "400", "second"]


async def test_the_python_api_lists_sinks_without_a_configuration(database_url: str) -> None:
    event_id = _publish(database_url, "order.placed")
    _set(database_url, event_id, deliveries={"solo": _retrying("timeout")})
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        report = await sink_status.sinks(conn, "public")
        status = await admin.status(conn, "public")
    assert [(s.name, s.type, s.state, s.backlog, s.last_error) for s in report.sinks] == [
        ("solo", None, "active", 1, "timeout")
    ]

    def timeless(sinks: list[sink_status.SinkStatus]) -> list[sink_status.SinkStatus]:
        return [dataclasses.replace(s, oldest_waiting_seconds=None) for s in sinks]

    assert timeless(status.sinks) == timeless(report.sinks)
    assert status.unrouted == report.unrouted == sink_status.Unrouted(0, 0, 0)


# -- metrics ---------------------------------------------------------------------------------

METRICS_CONFIG = """
[relay]
poll_interval = 0.1
maintenance_interval = 0.2
max_attempts = 2
backoff_base = 0.01
backoff_cap = 0.05

[sinks.healthy]
type = "callable"
target = "builtins:id"

[sinks.failing]
type = "callable"
target = "visibility_sinks:always_fails"

[sinks.paused]
type = "callable"
target = "builtins:id"

[sinks.off]
type = "callable"
target = "builtins:id"

[[subscriptions]]
topics = ["order.#"]
sinks = ["healthy", "failing", "paused", "off"]
"""

FAILING_MODULE = """
def always_fails(event):
    raise RuntimeError("receiver down")
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def _samples(text: str, name: str) -> dict[str, float]:
    """``{label value: value}`` of metric ``name``, whose one label is ``sink`` or ``topic``."""
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, _, value = line.rpartition(" ")
            found[labels.split('"')[1]] = float(value)
    return found


@pytest.mark.timeout(180)
def test_metrics_per_sink_agree_with_status(database_url: str, tmp_path: Path) -> None:
    (tmp_path / "outbox.toml").write_text(textwrap.dedent(METRICS_CONFIG))
    (tmp_path / "visibility_sinks.py").write_text(textwrap.dedent(FAILING_MODULE))
    _cli(tmp_path, database_url, "sinks", "pause", "paused", "--reason", "testing")
    _cli(tmp_path, database_url, "sinks", "disable", "off")
    for n in range(9):
        _publish(database_url, "order.placed", key=f"k{n % 3}")
    for _ in range(4):
        _publish(database_url, "user.signed_up")

    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable, "-m", "outbox.cli", "relay", "--config", "outbox.toml",
            "--database-url", database_url, "--metrics-port", str(port),
        ],
        cwd=tmp_path,
        env=_env({"PYTHONPATH": str(tmp_path)}),
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        text = _settled_metrics(port, process, keys=3)
        status = json.loads(_cli(tmp_path, database_url, "status", "--json"))
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=DEADLINE) == 0

    by_name = {s["name"]: s for s in status["sinks"]}
    backlog = _samples(text, "outbox_sink_backlog")
    failed = _samples(text, "outbox_sink_failed_events")
    held = _samples(text, "outbox_sink_held")
    lag = _samples(text, "outbox_sink_lag_seconds")
    for name in ("healthy", "failing", "paused", "off"):
        assert backlog[name] == by_name[name]["backlog"], name
        assert failed[name] == by_name[name]["failed"], name
        assert held[name] == (by_name[name]["state"] != "active"), name
    # The first event of each of the 3 keys failed there, parking the key for that sink
    # only: the 6 later events wait behind them.
    assert (failed["failing"], backlog["failing"]) == (3, 6)
    assert (backlog["paused"], backlog["off"]) == (9, 9)
    assert (backlog["healthy"], failed["healthy"]) == (0, 0)
    assert (held["paused"], held["off"], held["failing"], held["healthy"]) == (1, 1, 0, 0)
    assert by_name["failing"]["last_error"].startswith("RuntimeError: receiver down (at ")
    # Sampled a maintenance round before the status: the same event, moments apart.
    assert abs(lag["paused"] - by_name["paused"]["oldest_waiting_seconds"]) < 10
    assert lag["healthy"] == 0
    unrouted = _samples(text, "outbox_unrouted_events_total")
    assert unrouted == {"user.signed_up": 4}
    assert status["unrouted"]["no_subscription"] == 4
    assert status["unrouted"]["not_routed"] == 0


def _settled_metrics(port: int, process: subprocess.Popen[bytes], *, keys: int) -> str:
    """/metrics once the relay has failed the first event of every key for the failing sink
    and sampled it."""
    deadline = time.monotonic() + DEADLINE
    text = ""
    while time.monotonic() < deadline:
        assert process.poll() is None, "the relay exited"
        try:
            text = _metrics(port)
        except OSError:
            time.sleep(0.1)
            continue
        failed = _samples(text, "outbox_sink_failed_events")
        backlog = _samples(text, "outbox_sink_backlog")
        if failed.get("failing") == keys and backlog.get("paused") == 9 and "healthy" in backlog:
            return text
        time.sleep(0.1)
    raise AssertionError(f"the metrics never settled:\n{text}")
