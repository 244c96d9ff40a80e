"""A relay in claim mode "lock", started as ``outbox relay`` and SIGKILLed mid-delivery.

The rows it held come back the moment it dies (its row locks go with its connection), as
they were: still ``pending``, the attempt not counted. Another relay then delivers them at
once, although the configured lease is a minute long.
"""

from __future__ import annotations

import asyncio
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
from outbox.relay import Relay
from outbox.routing import Subscription
from outbox.runtime import relay_options
from outbox.sinks import Event, Sink

pytestmark = pytest.mark.acceptance

# Far longer than the test may take: a wait for a lease to expire would time it out.
LEASE_SECONDS = 60.0
DEADLINE = 20.0

CONFIG = f"""\
[relay]
claim_mode = "lock"
lease_seconds = {LEASE_SECONDS}
delivery_timeout = 30.0
poll_interval = 0.1

[sinks.hold]
type = "callable"
target = "holding_sink:hold"

[[subscriptions]]
topics = ["order.#"]
sinks = ["hold"]
"""

# A sink that notes each event it is handed, then never returns.
HOLDING_SINK = """\
import asyncio
import os


async def hold(event):
    with open(os.environ["HOLDING_SINK_FILE"], "a", encoding="utf-8") as out:
        out.write(f"{event.id}\\n")
    await asyncio.sleep(3600)
"""


class Recorder(Sink):
    def __init__(self) -> None:
        super().__init__()
        self.ids: list[int] = []

    async def deliver(self, event: Event) -> None:
        self.ids.append(event.id)


def fetch(url: str, query: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(query.encode()).fetchall()


def unlocked_ids(url: str) -> list[int]:
    """The outbox rows no transaction holds a lock on."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT id FROM outbox_events FOR UPDATE SKIP LOCKED").fetchall()
        conn.rollback()
    return [row[0] for row in rows]


def wait_for_lines(path: Path, count: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    give_up = time.monotonic() + DEADLINE
    while time.monotonic() < give_up:
        if path.exists() and len(path.read_text(encoding="utf-8").splitlines()) >= count:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the relay exited: {log.read_text(errors='replace')}")
        time.sleep(0.05)
    raise AssertionError(f"the sink was not called: {log.read_text(errors='replace')}")


@pytest.mark.timeout(120)
def test_a_killed_lock_mode_relay_frees_its_rows_at_once(database_url: str, tmp_path: Path) -> None:
    (tmp_path / "outbox.toml").write_text(CONFIG, encoding="utf-8")
    (tmp_path / "holding_sink.py").write_text(HOLDING_SINK, encoding="utf-8")
    with psycopg.connect(database_url) as conn:
        ids = [outbox.publish(conn, "order.paid", {"n": n}).id for n in range(3)]
    held = tmp_path / "held.txt"
    env = {name: value for name, value in os.environ.items() if not name.startswith("OUTBOX_")}
    env.update(PYTHONPATH=str(tmp_path), HOLDING_SINK_FILE=str(held))
    log = tmp_path / "relay.log"
    command = [sys.executable, "-m", "outbox.cli", "relay", "--config", "outbox.toml"]
    command += ["--database-url", database_url, "--log-level", "warning"]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=out)
    try:
        wait_for_lines(held, len(ids), proc, log)
        # Mid-delivery: locked, and nothing written.
        assert unlocked_ids(database_url) == []
        rows = fetch(database_url, "SELECT status, attempts, locked_by FROM outbox_events")
        assert rows == [("pending", 0, None)] * 3

        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    sink = Recorder()
    options = relay_options(
        lease_seconds=LEASE_SECONDS, delivery_timeout=30.0, poll_interval=0.05, listen=False
    )
    relay = Relay(database_url, {"hold": sink}, [Subscription(("order.#",), ("hold",))], options)
    # Well inside the lease: the rows were not waiting for one to expire.
    asyncio.run(asyncio.wait_for(relay.run(drain=True), DEADLINE))

    assert sorted(sink.ids) == ids
    rows = fetch(database_url, "SELECT status, attempts FROM outbox_events ORDER BY id")
    assert rows == [("done", 1)] * 3, "the killed attempt was counted, or a row was lost"
