"""SIGTERM ends ``outbox relay`` within ``shutdown_timeout``, even with a hung sync sink
(issue 11, finding 4).

A sync callable sink used to run in the event loop's default thread pool: a call that never
returns kept the batch in flight until ``delivery_timeout``, and then kept the process from
exiting at all, since the pool's threads are joined at exit. Now the batches in flight get
``shutdown_timeout`` seconds, then their rows are handed back, pending again with no attempt
counted, and the relay exits 0 (a hung call is left to its daemon thread). Both claim modes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

import outbox

pytestmark = pytest.mark.acceptance

SHUTDOWN_TIMEOUT = 2.0
MARGIN = 15.0  # for the release, closing connections and the interpreter's exit
DEADLINE = 20.0

CONFIG = """\
[relay]
claim_mode = "{claim_mode}"
lease_seconds = 300.0
delivery_timeout = 240.0
poll_interval = 0.1
shutdown_timeout = {shutdown_timeout}

[sinks.hang]
type = "callable"
target = "hanging_sink:hang"

[[subscriptions]]
topics = ["order.#"]
sinks = ["hang"]
"""

# A sync sink that notes each event it is handed, then never returns.
HANGING_SINK = """\
import os
import threading


def hang(event):
    with open(os.environ["HANGING_SINK_FILE"], "a", encoding="utf-8") as out:
        out.write(f"{event.id}\\n")
    threading.Event().wait()
"""


def fetch(url: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query.encode()).fetchall()


def wait_for_call(path: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    give_up = time.monotonic() + DEADLINE
    while time.monotonic() < give_up:
        if path.exists() and path.read_text(encoding="utf-8").strip():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the relay exited: {log.read_text(errors='replace')}")
        time.sleep(0.05)
    raise AssertionError(f"the sink was not called: {log.read_text(errors='replace')}")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("claim_mode", ["lease", "lock"])
def test_sigterm_hands_back_a_hung_batch_and_exits_within_shutdown_timeout(
    database_url: str, tmp_path: Path, claim_mode: str
) -> None:
    config = CONFIG.format(claim_mode=claim_mode, shutdown_timeout=SHUTDOWN_TIMEOUT)
    (tmp_path / "outbox.toml").write_text(config, encoding="utf-8")
    (tmp_path / "hanging_sink.py").write_text(HANGING_SINK, encoding="utf-8")
    with psycopg.connect(database_url) as conn:
        event_id = outbox.publish(conn, "order.paid", {"n": 1}).id
    called = tmp_path / "called.txt"
    env = {name: value for name, value in os.environ.items() if not name.startswith("OUTBOX_")}
    env.update(PYTHONPATH=str(tmp_path), HANGING_SINK_FILE=str(called))
    log = tmp_path / "relay.log"
    command = [sys.executable, "-m", "outbox.cli", "relay", "--config", "outbox.toml"]
    command += ["--database-url", database_url, "--log-level", "info"]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=out)
    try:
        wait_for_call(called, proc, log)
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=SHUTDOWN_TIMEOUT + MARGIN)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the relay did not exit after SIGTERM: {log.read_text(errors='replace')}"
            ) from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert code == 0, log.read_text(errors="replace")
    rows = fetch(database_url, "SELECT id, status, attempts, locked_by FROM outbox_events")
    assert rows == [(event_id, "pending", 0, None)], "the hung event was not handed back"
