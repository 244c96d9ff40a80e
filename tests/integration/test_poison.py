"""A poison event: a sink that kills the relay process on one payload (issue 11, finding 1).

Real ``outbox relay --drain`` processes deliver a batch that holds one event whose payload
makes the sink call ``os._exit``; the test restarts the relay after each death, as a
supervisor would. Whatever the claim mode, the poison must end ``failed`` after
``max_attempts`` deaths, with errors saying the relay died while delivering it; every other
event, its batch-mates included, must be delivered with no attempt charged for the deaths;
later events of the poison's key wait behind it (parked), and no other key waits.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psycopg
import pytest

import outbox

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


def _supervise(tmp_path: Path, database_url: str) -> tuple[int, list[str]]:
    """Run ``outbox relay --drain`` until it exits other than by the poison; return how many
    times the poison killed it, and each run's output."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("OUTBOX_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    env["POISON_TEST_DATABASE_URL"] = database_url
    command = [sys.executable, "-m", "outbox.cli", "relay", "--config", "outbox.toml"]
    command += ["--database-url", database_url, "--drain"]
    deaths, outputs = 0, []
    for _ in range(MAX_ATTEMPTS + 3):
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
        if run.returncode != POISON_EXIT:
            # Drained: 3 because the poison failed (and its key waits behind it).
            assert run.returncode == 3, outputs[-1]
            return deaths, outputs
        deaths += 1
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

    deaths, outputs = _supervise(tmp_path, database_url)

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
    (poison,) = ids["poison"]
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
