"""Relay processes started as an operator would, killed as production would.

Events are published over many keys while several ``outbox relay`` processes deliver them to
four sinks that fail a share of calls at random and record every success: two async
callables and a sync one (``chaos_sink.py``) write to a table of their own, and a webhook
receiver in the test process (``chaos_server.py``) answers 500 or 503 to a share of requests.
The chaos run has a PostgreSQL server of its own (embedded), and meanwhile:

- relays are SIGKILLed (and replaced), preferably while they have a batch in flight;
- every relay connection is terminated by the server;
- the server is stopped as a crash would stop it (``pg_ctl stop -m immediate``) and started
  again on the same data directory, while the publisher keeps publishing (it reconnects,
  and a transaction whose commit went unanswered is looked up before it is published again);
- one poison event ends every relay that delivers it (``os._exit(77)`` in a sink); the test
  replaces such relays as a supervisor would. The relay must retry the rows of a dead relay
  without charging them, then the poison alone, charging each death to it until it fails;
- the sync sink hangs on a few events' first call, past the delivery timeout;
- an operator pauses the sink ``beta`` from 20 % to 60 % of the publish window, then
  resumes it (``outbox.sink_switches.Switches``, as ``outbox sinks pause|resume`` does).

Afterwards the sinks' own records must show: nothing lost, every event at every subscribed
sink, per-key order kept at each sink, no redelivery after a later event of its key, and
every duplicate accounted for: the attempt before it either never had its result written
(its relay was SIGKILLed or died of the poison, had its connection terminated, lost the
server, or lost its lease) or was written as an error although the sink had the event (a
timeout, the sink's own connection lost). Only the poison has failed, and only the later
events of its key wait behind it, at the sinks it has not reached (all of them if it was
never routed); no other delivery waited longer than a bound after the last fault before it
(or after its publication, or for ``beta`` its resume). While paused,
``beta`` got only calls that started within a bound after the pause (batches its relays
routed before they read the switch), the other sinks kept receiving, and deliveries waited
for it; after the resume it got every one of them, in per-key order. A fault-free control
run (no poison, no hang, no injected failure, no pause) must show no duplicates at all.

Both runs are made once per claim mode (``lease``, ``lock``); the lock-mode chaos run is a
shorter one (one termination round).

Size and seed come from the environment: ``OUTBOX_CHAOS_EVENTS`` (10000), ``_KEYS`` (500),
``_RELAYS`` (4), ``_KILLS`` (10), ``_TERMINATE_ROUNDS`` (2), ``_RESTARTS`` (1),
``_HANGS`` (5), ``_POISON`` (1; 0 leaves the poison out), ``_PUBLISH_RATE`` (events/s, 300),
``_CONTROL_EVENTS`` (2000), ``_SEED`` (random, printed), ``_DEADLINE`` (seconds, 300), and
for the lock-mode chaos run ``_LOCK_EVENTS`` (3000) and ``_LOCK_KILLS`` (4).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from .chaos_checks import Report, check
from .chaos_run import (
    RECEIVED_TABLE,
    WEBHOOK_SINK,
    Chaos,
    Fleet,
    Plan,
    Publisher,
    connect,
    drive,
)
from .chaos_server import EmbeddedServer, WebhookReceiver

pytestmark = pytest.mark.acceptance

# An innocent delivery fails only if all max_attempts of its attempts fail. Injected failures
# alone (0.1 of calls) make that 0.1 ** 10 = 1e-10 per delivery, 3e-6 per run of 30 000
# deliveries; with the real errors seen here too (timeouts, lost connections, a test kill
# during a delivery alone: 1 to 3 % of attempts), 0.13 ** 10 * 30 000 = 4e-5 per run.
# max_attempts also bounds the poison: it fails after that many relays died delivering it.
FAILURE_RATE = 0.1
MAX_ATTEMPTS = 10
PAUSED_SINK = "beta"


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(f"OUTBOX_CHAOS_{name}", default))


@pytest.fixture
def own_server() -> Iterator[EmbeddedServer]:
    """A server for one chaos run, since the run restarts it; stopped whatever happens."""
    server = EmbeddedServer()
    try:
        yield server
    finally:
        server.close()


def _run(
    plan: Plan, database_url: str, workdir: Path, server: EmbeddedServer | None = None
) -> tuple[Report, Chaos, Publisher]:
    with connect(database_url) as conn:
        conn.execute(RECEIVED_TABLE)
    receiver = WebhookReceiver(plan.failure_rate, plan.seed + 2)
    fleet = Fleet(workdir, database_url, plan, receiver.url)
    publisher = Publisher(database_url, plan)
    try:
        for _ in range(plan.relays):
            fleet.start()
        chaos, seconds = drive(plan, fleet, publisher, database_url, server)
        with connect(database_url) as conn:
            fleet.wait_connected(conn)  # a relay still importing has no SIGTERM handler yet
            codes = fleet.stop()
            assert all(code == 0 for code in codes.values()), f"SIGTERM exit codes: {codes}"
            receiver.write(conn, WEBHOOK_SINK, fleet.pid_by_number)
            report = check(conn, plan, publisher, chaos, list(fleet.log_text()), seconds)
    except BaseException:
        print(f"seed {plan.seed}; relay logs under {workdir}\n{fleet.tails()}")
        if server is not None:
            print(f"--- server log ---\n{server.log_tail()}")
        raise
    finally:
        fleet.kill_all()
        publisher.join(timeout=30)
        receiver.close()
    return report, chaos, publisher


def _say(capsys: pytest.CaptureFixture[str], title: str, text: str) -> None:
    with capsys.disabled():
        print(f"\n[{title}] {text}")


def _chaos_plan(claim_mode: str) -> Plan:
    # The lock-mode round is shorter: it runs beside the full lease-mode one, and what it adds
    # (rows that nothing marks, freed at a kill) shows in fewer events.
    lock = claim_mode == "lock"
    return Plan(
        events=_env_int("LOCK_EVENTS", 3_000) if lock else _env_int("EVENTS", 10_000),
        keys=_env_int("KEYS", 500),
        relays=_env_int("RELAYS", 4),
        kills=_env_int("LOCK_KILLS", 4) if lock else _env_int("KILLS", 10),
        terminate_rounds=1 if lock else _env_int("TERMINATE_ROUNDS", 2),
        restarts=_env_int("RESTARTS", 1),
        failure_rate=FAILURE_RATE,
        max_attempts=MAX_ATTEMPTS,
        lease_seconds=2.0,
        delivery_timeout=1.0,
        publish_rate=float(_env_int("PUBLISH_RATE", 300)),
        seed=_env_int("SEED", random.randrange(1_000_000)),
        deadline=float(_env_int("DEADLINE", 300)),
        claim_mode=claim_mode,
        poison=bool(_env_int("POISON", 1)),
        hangs=_env_int("HANGS", 5),
        paused_sink=PAUSED_SINK,
    )


@pytest.mark.timeout(900)
@pytest.mark.parametrize("claim_mode", ["lease", "lock"])
def test_relays_lose_nothing_and_keep_key_order_through_kills_restarts_and_a_poison(
    own_server: EmbeddedServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    claim_mode: str,
) -> None:
    plan = _chaos_plan(claim_mode)
    report, chaos, publisher = _run(plan, own_server.url, tmp_path, own_server)

    assert len(chaos.kills) == plan.kills
    busy_kills = sum(1 for count in chaos.in_flight_at_kill if count > 0)
    assert 3 * busy_kills >= plan.kills, (
        f"only {busy_kills} of {plan.kills} kills caught work in flight"
    )
    assert len(chaos.terminations) == plan.terminate_rounds
    assert all(count > 0 for count, _ in chaos.terminations), chaos.terminations
    assert len(chaos.restarts) == plan.restarts
    assert report.late_duplicates == 0, (
        f"{report.late_duplicates} redeliveries after a later event of their key"
    )
    bound = 2 * plan.lease_seconds + 30
    assert report.tail_seconds <= bound, (
        f"a delivery waited {report.tail_seconds:.1f}s after the last fault before it "
        f"(bound {bound:g}s)"
    )
    if claim_mode == "lock":
        assert report.expired_leases == 0, "lock mode wrote a lease"
    pause = report.pause
    assert pause is not None
    in_flight = "batches" if claim_mode == "lock" else "events"
    _say(
        capsys,
        f"chaos, {claim_mode}",
        f"seed={plan.seed} events={plan.events} keys={plan.keys} relays={plan.relays}: "
        f"settled in {report.seconds:.1f}s, no delivery waited over {report.tail_seconds:.1f}s "
        f"after a fault; {len(chaos.kills)} SIGKILLs ({in_flight} in flight: "
        f"{chaos.in_flight_at_kill}); connections terminated per round: "
        f"{[count for count, _ in chaos.terminations]}; {len(chaos.restarts)} server "
        f"restarts (publisher: {publisher.lost_transactions} transactions lost and "
        f"published again, {publisher.unknown_commits} unanswered commits found committed); "
        f"poison: {len(chaos.poison_deaths)} relays died, {report.poison_errors} deaths "
        f"charged, its sinks {report.poison_sinks}, {report.parked} deliveries parked behind "
        f"it; {report.deliveries} deliveries, {report.duplicates} duplicates "
        f"({dict(report.causes)}), {report.late_duplicates} after a later event of their "
        f"key; {report.expired_leases} leases expired; other sink errors: "
        f"{dict(report.errors)}; {pause.sink} paused {pause.seconds:.1f}s: "
        f"{pause.receipts} receipts while paused (last call started "
        f"{pause.last_call:.2f}s, last receipt {pause.last_receipt:.2f}s after the pause), "
        f"{pause.waiting_at_resume} deliveries waiting at the resume, other sinks' receipts "
        f"after its last one: {pause.others}",
    )


@pytest.mark.timeout(600)
@pytest.mark.parametrize("claim_mode", ["lease", "lock"])
def test_fault_free_relays_deliver_every_event_exactly_once_in_key_order(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], claim_mode: str
) -> None:
    plan = Plan(
        events=_env_int("CONTROL_EVENTS", 2_000),
        keys=_env_int("KEYS", 500),
        relays=_env_int("RELAYS", 4),
        kills=0,
        terminate_rounds=0,
        restarts=0,
        failure_rate=0.0,
        max_attempts=MAX_ATTEMPTS,
        # Generous: with no faults, only a delivery slower than these (a loaded machine)
        # could make a duplicate, and that would say nothing about the relay.
        lease_seconds=60.0,
        delivery_timeout=30.0,
        publish_rate=None,
        seed=_env_int("SEED", random.randrange(1_000_000)),
        deadline=float(_env_int("DEADLINE", 300)),
        claim_mode=claim_mode,
    )
    report, _, _ = _run(plan, database_url, tmp_path)

    assert report.duplicates == 0, report
    assert report.late_duplicates == 0, report
    assert report.expired_leases == 0
    _say(
        capsys,
        f"control, {claim_mode}",
        f"seed={plan.seed} events={plan.events} relays={plan.relays}: drained in "
        f"{report.seconds:.1f}s; {report.deliveries} deliveries, 0 duplicates",
    )
