"""What ``outbox relay`` logs: at INFO a summary per maintenance round and no line per
delivered event; a callable sink's exception keeps its type, message and innermost frame in
the event's error history, and its whole traceback is logged at DEBUG."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

import outbox
from outbox.retry import MAX_ERROR_LENGTH, classify

DEADLINE = 60.0

CONFIG = """
[relay]
poll_interval = 0.1
maintenance_interval = 0.2
shutdown_timeout = 1

[sinks.cache]
type = "callable"
target = "builtins:id"

[sinks.ledger]
type = "callable"
target = "log_sinks:{target}"
max_attempts = 1

[[subscriptions]]
topics = ["order.#"]
sinks = ["cache"]

[[subscriptions]]
topics = ["ledger.#"]
sinks = ["ledger"]
"""

SINKS_MODULE = """
def _parse(event):
    raise ValueError("bad amount " + str(event.payload["n"]))

def handle(event):
    _parse(event)

async def handle_async(event):
    _parse(event)
"""
RAISING_LINE = 3  # of SINKS_MODULE, once dedented: the innermost frame

SUMMARY = re.compile(r"(\d+) events delivered \([\d.]+/s\), (\d+) to retry, (\d+) failed; lag")


def _relay(tmp_path: Path, url: str, *flags: str, target: str = "handle") -> subprocess.Popen[str]:
    (tmp_path / "outbox.toml").write_text(textwrap.dedent(CONFIG.format(target=target)))
    (tmp_path / "log_sinks.py").write_text(textwrap.dedent(SINKS_MODULE))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    with (tmp_path / "relay.log").open("w") as log:  # the relay keeps its own copy
        return subprocess.Popen(
            [
                sys.executable, "-m", "outbox.cli", "relay", "--config", "outbox.toml",
                "--database-url", url, "--log-format", "json", *flags,
            ],
            cwd=tmp_path,
            env={**env, "PYTHONPATH": str(tmp_path)},
            stderr=log,
            text=True,
        )  # fmt: skip


def _lines(tmp_path: Path) -> list[dict[str, Any]]:
    text = (tmp_path / "relay.log").read_text()
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _until(check: Callable[[], bool], what: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        assert process.poll() is None, "the relay exited"
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.1)


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        assert process.wait(timeout=DEADLINE) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _summarised(tmp_path: Path) -> tuple[int, int]:
    """Events delivered and failed, added up over the summary lines so far."""
    found = [SUMMARY.search(line["message"]) for line in _lines(tmp_path)]
    counts = [(int(m[1]), int(m[3])) for m in found if m]
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


def test_info_logs_a_summary_per_round_and_no_line_per_event(
    database_url: str, tmp_path: Path
) -> None:
    process = _relay(tmp_path, database_url)
    try:
        with psycopg.connect(database_url) as conn:
            for number in range(25):
                outbox.publish(conn, "order.paid", {"n": number})
            outbox.publish(conn, "ledger.entry", {"n": 0})  # one failed event
        _until(lambda: _summarised(tmp_path) == (25, 1), "a summary of 25 and 1 failed", process)
    finally:
        _stop(process)
    lines = _lines(tmp_path)
    summaries = [line for line in lines if SUMMARY.search(line["message"])]
    assert {line["level"] for line in summaries} == {"info"}
    assert all(line.get("relay") for line in summaries)
    per_event = [line for line in lines if line["message"].endswith(": delivered")]
    assert per_event == []
    # Idle rounds say nothing: far fewer summaries than the rounds a relay ran.
    assert len(summaries) <= 10


def test_debug_still_logs_each_delivered_event(database_url: str, tmp_path: Path) -> None:
    process = _relay(tmp_path, database_url, "--log-level", "debug")
    try:
        with psycopg.connect(database_url) as conn:
            event_ids = [outbox.publish(conn, "order.paid", {"n": n}).id for n in range(3)]
        _until(
            lambda: {line.get("event_id") for line in _lines(tmp_path)} >= set(event_ids),
            "a line per event",
            process,
        )
    finally:
        _stop(process)
    delivered = [line for line in _lines(tmp_path) if line["message"].endswith(": delivered")]
    assert sorted(line["event_id"] for line in delivered) == event_ids
    assert {line["level"] for line in delivered} == {"debug"}


@pytest.mark.parametrize("target", ["handle", "handle_async"])
def test_a_callable_sinks_exception_keeps_where_it_was_raised(
    database_url: str, tmp_path: Path, target: str
) -> None:
    process = _relay(tmp_path, database_url, "--log-level", "debug", target=target)
    try:
        with psycopg.connect(database_url) as conn:
            event_id = outbox.publish(conn, "ledger.entry", {"n": 42}).id

        def failed() -> bool:
            with psycopg.connect(database_url) as conn:
                row = conn.execute(
                    "SELECT status FROM outbox_events WHERE id = %s", (event_id,)
                ).fetchone()
            return row is not None and row[0] == "failed"

        _until(failed, "the event to fail", process)
    finally:
        _stop(process)
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT last_error, errors FROM outbox_events WHERE id = %s", (event_id,)
        ).fetchone()
    assert row is not None
    last_error, errors = row
    place = f"log_sinks.py:{RAISING_LINE} in _parse)"
    assert last_error.startswith("ValueError: bad amount 42 (at ")
    assert last_error.endswith(place)
    assert [entry["error"] for entry in errors] == [last_error]

    logged = [line for line in _lines(tmp_path) if "exception" in line]
    tracebacks = [line["exception"] for line in logged if line.get("event_id") == event_id]
    assert tracebacks, "no traceback logged at debug"
    assert "Traceback" in tracebacks[0]
    assert "in handle" in tracebacks[0]  # the outer frame too, not in the history
    assert f'log_sinks.py", line {RAISING_LINE}, in _parse' in tracebacks[0]


def _raise_long() -> None:
    raise ValueError("x" * 10_000)


def test_the_place_survives_the_length_cap() -> None:
    try:
        _raise_long()
    except ValueError as error:
        text = classify(error).error
    assert text is not None
    assert len(text) == MAX_ERROR_LENGTH
    assert text.startswith("ValueError: xxx")
    assert text.endswith("in _raise_long)")
