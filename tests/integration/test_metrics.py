"""``outbox relay --metrics-port``: Prometheus counters that add up, health, readiness,
and JSON log lines."""

from __future__ import annotations

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

import psycopg
import pytest

import outbox

DEADLINE = 30.0

CONFIG = """
[relay]
poll_interval = 0.1
maintenance_interval = 0.2

[sinks.first]
type = "callable"
target = "builtins:id"

[sinks.second]
type = "callable"
target = "builtins:id"

[[subscriptions]]
topics = ["order.#"]
sinks = ["first", "second"]
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _samples(text: str, name: str) -> dict[str, float]:
    """``{labels: value}`` of every sample of metric ``name`` in a Prometheus exposition."""
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, _, value = line.rpartition(" ")
            found[labels[len(name) :]] = float(value)
    return found


@pytest.fixture
def relay_process(
    database_url: str, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], int, Path]]:
    (tmp_path / "outbox.toml").write_text(textwrap.dedent(CONFIG))
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    log_path = tmp_path / "relay.log"
    log_file = log_path.open("w")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "outbox.cli", "relay",
            "--config", "outbox.toml", "--database-url", database_url,
            "--metrics-port", str(port), "--log-format", "json", "--log-level", "debug",
        ],
        cwd=tmp_path,
        env=env,
        stderr=log_file,
        text=True,
    )  # fmt: skip
    try:
        yield process, port, log_path
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        log_file.close()


def _wait_for(port: int, path: str, expected_status: int) -> str:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        try:
            status, body = _get(port, path)
            if status == expected_status:
                return body
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{path} never answered {expected_status}")


def test_metrics_add_up_to_the_events_delivered(
    relay_process: tuple[subprocess.Popen[str], int, Path], database_url: str
) -> None:
    process, port, log_path = relay_process
    assert _wait_for(port, "/healthz", 200).strip() == "ok"
    assert _wait_for(port, "/readyz", 200).strip() == "ready"
    with psycopg.connect(database_url) as conn:
        for number in range(30):
            outbox.publish(conn, "order.paid" if number % 3 else "order.created", {"n": number})
        outbox.publish(conn, "user.signed_up", {"n": -1})  # no subscription: no delivery

    # Deliveries are counted as they end and settles once the batch's settle commits: wait
    # for both.
    deadline = time.monotonic() + DEADLINE
    delivered: dict[str, float] = {}
    settled: dict[str, float] = {}
    while time.monotonic() < deadline:
        text = _get(port, "/metrics")[1]
        delivered = _samples(text, "outbox_events_delivered_total")
        settled = _samples(text, "outbox_events_settled_total")
        if sum(delivered.values()) >= 60 and settled.get('{status="done"}', 0) >= 31:
            break
        time.sleep(0.1)
    assert sum(delivered.values()) == 60  # 30 events x 2 sinks
    assert delivered['{sink="first",topic="order.paid"}'] == 20
    assert delivered['{sink="second",topic="order.created"}'] == 10
    assert settled['{status="done"}'] == 31

    text = _get(port, "/metrics")[1]
    assert _samples(text, "outbox_delivery_duration_seconds_count") == {
        '{sink="first"}': 30.0,
        '{sink="second"}': 30.0,
    }
    assert sum(_samples(text, "outbox_delivery_failures_total").values()) == 0
    assert _get(port, "/nothing")[0] == 404

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=DEADLINE) == 0
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    delivered_lines = [line for line in lines if line["message"].endswith(": delivered")]
    assert len({line["event_id"] for line in delivered_lines}) == 31
    assert all(line["level"] == "debug" for line in delivered_lines)
    assert {line["topic"] for line in delivered_lines} == {
        "order.paid",
        "order.created",
        "user.signed_up",
    }


def test_readyz_reports_a_lost_database(database_url: str, tmp_path: Path) -> None:
    from outbox.metrics import PrometheusObserver, serve  # noqa: F401  (the extra is installed)

    (tmp_path / "outbox.toml").write_text(textwrap.dedent(CONFIG))
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    process = subprocess.Popen(
        [
            sys.executable, "-m", "outbox.cli", "relay", "--config", "outbox.toml",
            "--database-url", "postgresql://nobody@127.0.0.1:1/none", "--metrics-port", str(port),
        ],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert _wait_for(port, "/healthz", 200).strip() == "ok"
        body = _wait_for(port, "/readyz", 503)
        assert "database not reached recently" in body
        assert "listener not connected" in body
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=DEADLINE) == 0
