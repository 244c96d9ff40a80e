"""A poison event: a sink that kills the relay process on one payload (issue 11, finding 1).

Real ``outbox relay --drain`` processes deliver a batch that holds one event whose payload
makes the sink call ``os._exit``; the test restarts the relay after each death, as a
supervisor would. Whatever the claim mode, the poison must end ``failed`` after
``max_attempts`` deaths, with errors saying the relay died while delivering it; every other
event, its batch-mates included, must be delivered with no attempt charged for the deaths;
later events of the poison's key wait behind it (parked), and no other key waits.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psycopg
import pytest

import outbox
from outbox.relay import Relay
from outbox.routing import Subscription
from outbox.runtime import relay_options
from outbox.sinks import Event, Sink

MAX_ATTEMPTS = 3
POISON_EXIT = 77
RUN_TIMEOUT = 60.0

CONFIG = """
[relay]
claim_mode = "{claim_mode}"
batch_size = 10
lease_seconds = 1
delivery_timeout = 0.5
poll_interval = 0.1
maintenance_interval = 0.1
max_attempts = {max_attempts}
backoff_base = 0.05
backoff_cap = 0.2

[sinks.app]
type = "callable"
target = "poison_sink:deliver"

[[subscriptions]]
topics = ["order.*"]
sinks = ["app"]
"""

SINK = """
import os

import psycopg

def deliver(event):
    if event.payload.get("poison"):
        os._exit({exit_code})
    with psycopg.connect(os.environ["POISON_TEST_DATABASE_URL"], autocommit=True) as conn:
        conn.execute("INSERT INTO received (event_id) VALUES (%s)", (event.id,))
"""


def _publish(database_url: str) -> dict[str, list[int]]:
    """Thirty events over five keys and no key, one of them the poison (the fifth of its
    batch), and one more of the poison's key after it."""
    ids: dict[str, list[int]] = {"poison": [], "behind": [], "others": []}
    with psycopg.connect(database_url) as conn:
        conn.execute("CREATE TABLE received (event_id bigint NOT NULL)")
        for n in range(30):
            if n == 4:
                event = outbox.publish(conn, "order.placed", {"poison": True}, key="doomed")
                group = "poison"
            elif n == 12:
                event = outbox.publish(conn, "order.placed", {"n": n}, key="doomed")
                group = "behind"
            else:
                key = None if n % 6 == 5 else f"key-{n % 5}"
                event = outbox.publish(conn, "order.placed", {"n": n}, key=key)
                group = "others"
            assert event.id is not None
            ids[group].append(event.id)
    return ids


def _supervise(tmp_path: Path, database_url: str, poison: int) -> tuple[int, list[str]]:
    """Run ``outbox relay --drain`` again and again, as a supervisor restarts a relay, until
    the poison has failed; return how many times it killed the relay, and each run's
    output. A drain that ends while the poison waits for its next try exits 3."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("OUTBOX_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    env["POISON_TEST_DATABASE_URL"] = database_url
    command = [sys.executable, "-m", "outbox.cli", "relay", "--config", "outbox.toml"]
    command += ["--database-url", database_url, "--drain"]
    deaths, outputs = 0, []
    for _ in range(3 * MAX_ATTEMPTS + 3):
        run = subprocess.run(
            command,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )
        outputs.append(run.stdout + run.stderr)
        if run.returncode == POISON_EXIT:
            deaths += 1
            continue
        # Drained: 3, since the poison failed or waits for its next try.
        assert run.returncode == 3, outputs[-1]
        with psycopg.connect(database_url) as conn:
            status = conn.execute("SELECT status FROM outbox_events WHERE id = %s", (poison,))
            if status.fetchone() == ("failed",):
                return deaths, outputs
    raise AssertionError(f"still crashing after {deaths} deaths:\n" + "\n---\n".join(outputs))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("claim_mode", ["lease", "lock"])
def test_a_poison_event_fails_alone_and_its_batch_mates_are_delivered(
    database_url: str, tmp_path: Path, claim_mode: str
) -> None:
    config = CONFIG.format(claim_mode=claim_mode, max_attempts=MAX_ATTEMPTS)
    (tmp_path / "outbox.toml").write_text(config, encoding="utf-8")
    sink = textwrap.dedent(SINK).format(exit_code=POISON_EXIT)
    (tmp_path / "poison_sink.py").write_text(sink, encoding="utf-8")
    ids = _publish(database_url)

    (poison,) = ids["poison"]
    deaths, outputs = _supervise(tmp_path, database_url, poison)

    with psycopg.connect(database_url) as conn:
        rows: dict[int, Any] = {
            row[0]: row[1:]
            for row in conn.execute(
                # As JSON, the columns this fix added read as null on the code before it.
                "SELECT id, status, attempts, (to_jsonb(e) ->> 'crashes')::int, "
                "(to_jsonb(e) ->> 'suspect')::boolean, errors, last_error FROM outbox_events AS e"
            )
        }
        received = [row[0] for row in conn.execute("SELECT event_id FROM received")]

    # The first death came in an ordinary batch and charged nothing; each later one came
    # while the poison was delivered alone, and was charged to it.
    assert deaths == MAX_ATTEMPTS + 1, "\n---\n".join(outputs)
    status, _, crashes, _, errors, last_error = rows[poison]
    assert (status, crashes) == ("failed", MAX_ATTEMPTS)
    assert len(errors) == MAX_ATTEMPTS
    assert all("died while delivering it" in error["error"] for error in errors), errors
    assert "died while delivering it" in last_error
    assert [rows[i][0] for i in ids["behind"]] == ["pending"], "the poison's key is parked"
    # Every other event delivered, the poison's batch-mates included, with no attempt
    # charged for the deaths. A batch-mate the sink had before the first death goes out
    # again (at least once): only those may be received twice.
    assert set(received) == set(ids["others"])
    twice = {i for i in received if received.count(i) > 1}
    assert len(twice) < 10, twice
    others = {i: rows[i][:4] for i in ids["others"]}
    assert others == dict.fromkeys(ids["others"], ("done", 1, 0, False)), others
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM outbox_claims").fetchone() == (0,)

    # An operator's retry starts the poison's count afresh; it still goes alone.
    retried = subprocess.run(
        [sys.executable, "-m", "outbox.cli", "retry", "--id", str(poison), "--yes"],
        env={**os.environ, "OUTBOX_DATABASE_URL": database_url},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert retried.returncode == 0, retried.stderr
    with psycopg.connect(database_url) as conn:
        again = conn.execute(
            "SELECT status, attempts, crashes, suspect FROM outbox_events WHERE id = %s",
            (poison,),
        ).fetchone()
    assert again == ("pending", 0, 0, True)


class _Held(Sink):
    """Holds every delivery until ``release`` is set; ``entered`` says one started."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.received: list[int] = []

    async def deliver(self, event: Event) -> None:
        self.entered.set()
        await self.release.wait()
        self.received.append(event.id)


@pytest.mark.timeout(120)
async def test_a_lock_mode_relay_cut_off_from_the_database_is_not_taken_for_dead(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Every connection of a lock-mode relay is terminated, again and again for a second,
    while its batch is in flight; then it reconnects and carries on. Another relay's
    maintenance must not take its batch for a dead relay's (suspects, a crash charged)."""
    with psycopg.connect(database_url) as conn:
        ids = [outbox.publish(conn, "order.placed", {"n": n}).id for n in range(5)]
    held, other = _Held(), _Held()
    other.release.set()

    def relay(name: str, sink: Sink) -> Relay:
        options = relay_options(
            claim_mode="lock",
            name=name,
            poll_interval=0.05,
            maintenance_interval=0.1,
            lease_seconds=5,
            delivery_timeout=4,
        )
        return Relay(database_url, {"app": sink}, [Subscription(("order.#",), ("app",))], options)

    cut_off, watcher = relay("cut-off", held), relay("watcher", other)
    running = asyncio.create_task(cut_off.run())
    try:
        await asyncio.wait_for(held.entered.wait(), 30)
        watching = asyncio.create_task(watcher.run())
        try:
            # Cut off for a second (ten maintenance rounds of the watcher): every connection
            # it opens is terminated at once.
            with psycopg.connect(database_url, autocommit=True) as conn:
                until = asyncio.get_running_loop().time() + 1.0
                while asyncio.get_running_loop().time() < until:
                    conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = 'outbox relay cut-off'"
                    )
                    await asyncio.sleep(0.01)
            held.release.set()
            deadline = asyncio.get_running_loop().time() + 30
            while True:
                with psycopg.connect(database_url) as conn:
                    rows = conn.execute(
                        "SELECT status, suspect, crashes FROM outbox_events WHERE id = ANY(%s)",
                        [ids],
                    ).fetchall()
                if all(row[0] == "done" for row in rows):
                    break
                assert asyncio.get_running_loop().time() < deadline, rows
                await asyncio.sleep(0.1)
        finally:
            watcher.stop()
            await asyncio.wait_for(watching, 30)
    finally:
        cut_off.stop()
        held.release.set()
        await asyncio.wait_for(running, 30)
    assert {(suspect, crashes) for _, suspect, crashes in rows} == {(False, 0)}
    taken = [r.getMessage() for r in caplog.records if "relay died with event" in r.getMessage()]
    assert taken == []
