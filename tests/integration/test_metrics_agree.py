"""``outbox relay --metrics-port``: every gauge says what ``outbox status`` says.

A relay runs as an operator runs it, with a sink that stalls (a backlog builds behind it), one
that refuses every delivery (a failed event, a parked key) and one paused (deliveries held).
The test scrapes ``/metrics`` over HTTP, runs ``outbox status --json`` on the same database
right after, and polls until the two agree: the gauges are sampled once per maintenance
round, so an age may trail the status by that round and the time the command took.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import outbox

DEADLINE = 60.0
MAINTENANCE_INTERVAL = 0.3
SLACK = 1.0
"""Seconds an age sampled by the relay may differ from the status's besides the round."""

CONFIG = f"""
[relay]
poll_interval = 0.1
maintenance_interval = {MAINTENANCE_INTERVAL}
batch_size = 2
shutdown_timeout = 1

[sinks.slow]
type = "callable"
target = "agree_sinks:stall"

[sinks.broken]
type = "callable"
target = "agree_sinks:refuse"
max_attempts = 1

[sinks.held]
type = "callable"
target = "builtins:id"

[[subscriptions]]
topics = ["order.#"]
sinks = ["slow"]

[[subscriptions]]
topics = ["billing.#"]
sinks = ["broken"]

[[subscriptions]]
topics = ["audit.#"]
sinks = ["held"]
"""

SINKS_MODULE = """
import asyncio

async def stall(event):
    await asyncio.sleep(3600)

def refuse(event):
    raise RuntimeError("ledger closed")
"""


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("OUTBOX_")}
    return {**env, **(extra or {})}


def _cli(cwd: Path, url: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "outbox.cli", *args, "--config", "outbox.toml"],
        cwd=cwd,
        env=_env({"OUTBOX_DATABASE_URL": url, "PYTHONPATH": str(cwd)}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _publish(url: str, topic: str, count: int, key: str | None = None) -> None:
    with psycopg.connect(url) as conn:
        for number in range(count):
            outbox.publish(conn, topic, {"n": number}, key=key)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _metrics(host: str, port: int) -> str:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def _answers(host: str, port: int) -> bool:
    try:
        _metrics(host, port)
    except (urllib.error.URLError, OSError):
        return False
    return True


def _samples(text: str, name: str) -> dict[str, float]:
    """``{label value: value}`` of metric ``name`` (one label at most; "" for none)."""
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, _, value = line.rpartition(" ")
            label = labels.split('"')[1] if "{" in labels else ""
            found[label] = float(value)
    return found


@contextlib.contextmanager
def _relay(tmp_path: Path, url: str, port: int, *flags: str) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [
            sys.executable, "-m", "outbox.cli", "relay", "--config", "outbox.toml",
            "--database-url", url, "--metrics-port", str(port), *flags,
        ],
        cwd=tmp_path,
        env=_env({"PYTHONPATH": str(tmp_path)}),
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(timeout=DEADLINE) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def _wait_until_serving(process: subprocess.Popen[bytes], host: str, port: int) -> None:
    deadline = time.monotonic() + DEADLINE
    while not _answers(host, port):
        assert process.poll() is None, "the relay exited"
        assert time.monotonic() < deadline, f"no /metrics on {host}:{port}"
        time.sleep(0.1)


def _wait_for_status(cwd: Path, url: str, ready: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = json.loads(_cli(cwd, url, "status", "--json"))
        if ready(status):
            return
        time.sleep(0.2)
    raise AssertionError(f"never reached: {what}\n{json.dumps(status, indent=1)}")


def _sink(status: dict[str, Any], name: str) -> dict[str, Any]:
    return next(sink for sink in status["sinks"] if sink["name"] == name)


def _stalled(status: dict[str, Any]) -> bool:
    """The scene under test: the stalled sink holds one batch, more wait behind it and are
    due, a billing event failed and parked its key, the paused sink holds its events."""
    return (
        status["totals"]["processing"] >= 1
        and status["totals"]["pending"] >= 8
        and status["totals"]["failed"] == 1
        and status["parked_keys"] == 1
        and _sink(status, "held")["backlog"] == 3
        and status["lag"] is not None
        and status["lag"]["seconds"] > 2
    )


def _disagreements(text: str, status: dict[str, Any], spent: float) -> list[str]:
    """What /metrics says that ``outbox status`` (run ``spent`` seconds after the scrape
    began) does not; empty when they agree."""
    found = []

    def gauge(name: str, label: str = "") -> float:
        return _samples(text, name).get(label, -1.0)

    def same(name: str, expected: float, label: str = "") -> None:
        if gauge(name, label) != expected:
            found.append(f"{name}{{{label}}} = {gauge(name, label)}, status: {expected}")

    def age(name: str, expected: float | None, label: str = "") -> None:
        # Sampled at most a round before the scrape; the status came after it.
        behind = (expected or 0.0) - gauge(name, label)
        if not -0.25 <= behind <= spent + MAINTENANCE_INTERVAL + SLACK:
            found.append(f"{name}{{{label}}} = {gauge(name, label)}, status: {expected}")

    totals, lag = status["totals"], status["lag"]
    same("outbox_pending_events", totals["pending"])
    same("outbox_processing_events", totals["processing"])
    same("outbox_failed_events", totals["failed"])
    same("outbox_parked_keys", status["parked_keys"])
    same("outbox_due_events", lag["due"] if lag else 0)
    age("outbox_lag_seconds", lag["seconds"] if lag else None)
    for sink in status["sinks"]:
        name = sink["name"]
        same("outbox_sink_backlog", sink["backlog"], name)
        same("outbox_sink_failed_events", sink["failed"], name)
        same("outbox_sink_held", int(sink["state"] != "active"), name)
        age("outbox_sink_lag_seconds", sink["oldest_waiting_seconds"], name)
    return found


@pytest.mark.timeout(240)
def test_every_gauge_agrees_with_status(database_url: str, tmp_path: Path) -> None:
    (tmp_path / "outbox.toml").write_text(textwrap.dedent(CONFIG))
    (tmp_path / "agree_sinks.py").write_text(textwrap.dedent(SINKS_MODULE))
    _cli(tmp_path, database_url, "sinks", "pause", "held", "--reason", "audit review")
    _publish(database_url, "audit.login", 3)
    _publish(database_url, "billing.charge", 3, key="account-7")
    port = _free_port()
    with _relay(tmp_path, database_url, port) as process:
        _wait_until_serving(process, "127.0.0.1", port)
        # Not served on every address: another loopback address gets no answer.
        assert not _answers("127.0.0.2", port)
        _wait_for_status(
            tmp_path,
            database_url,
            lambda s: s["totals"]["failed"] == 1 and _sink(s, "held")["backlog"] == 3,
            "the billing event failed, the audit events held",
        )
        # One key's events first: while the first is in flight the others wait behind it,
        # pending but not due. The unkeyed ones, a while later, are due and wait for the
        # stalled batch: the lag is theirs.
        _publish(database_url, "order.placed", 3, key="order-1")
        time.sleep(3)
        _publish(database_url, "order.placed", 6)

        deadline = time.monotonic() + DEADLINE
        problems: list[str] = ["the scene was never reached"]
        while time.monotonic() < deadline:
            started = time.monotonic()
            text = _metrics("127.0.0.1", port)
            status = json.loads(_cli(tmp_path, database_url, "status", "--json"))
            if _stalled(status):
                problems = _disagreements(text, status, time.monotonic() - started)
                if not problems:
                    break
            time.sleep(MAINTENANCE_INTERVAL)
        assert problems == []


def test_metrics_host_chooses_the_address(database_url: str, tmp_path: Path) -> None:
    (tmp_path / "outbox.toml").write_text(textwrap.dedent(CONFIG))
    (tmp_path / "agree_sinks.py").write_text(textwrap.dedent(SINKS_MODULE))
    port = _free_port()
    with _relay(tmp_path, database_url, port, "--metrics-host", "127.0.0.2") as process:
        _wait_until_serving(process, "127.0.0.2", port)
        assert not _answers("127.0.0.1", port)
