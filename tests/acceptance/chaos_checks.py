"""What a chaos run must show, judged from the sinks' own records (``chaos_received``) and
the outbox table.

Not a test module: ``test_chaos.py`` imports it.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import datetime as dt
import re
from typing import Any

import psycopg

from outbox.routing import Router

from .chaos_run import SUBSCRIPTIONS, WEBHOOK_SINK, Chaos, Pause, Plan, Publisher, parked_sinks

INJECTED = "chaos: injected failure"
"""How every injected failure's error text ends (the callables' and the receiver's)."""
DIED = "died while delivering it"
"""In the error charged to an event whose relay died while delivering it alone."""
TIMED_OUT = "timed out"


@dataclasses.dataclass(frozen=True)
class Receipt:
    seq: int
    sink: str
    event_id: int
    key: str | None
    attempt: int | None
    """The sink's attempt; None for the webhook (a request does not say)."""
    pid: int
    called_at: dt.datetime | None
    """When the sink's call started; None for the webhook."""
    at: dt.datetime


@dataclasses.dataclass(frozen=True)
class PauseReport:
    """What the paused sink received while paused, and what the others did meanwhile."""

    sink: str
    seconds: float
    """How long it was paused."""
    receipts: int
    """Its receipts while paused: calls of batches routed before their relay knew."""
    last_call: float
    """Seconds from the pause to the start of its last call while paused (0: none)."""
    last_receipt: float
    """Seconds from the pause to its last receipt while paused (0: none)."""
    others: dict[str, int]
    """Per other sink, its receipts while paused, after the paused sink's last one."""
    waiting_at_resume: int


@dataclasses.dataclass
class Report:
    seconds: float
    deliveries: int
    duplicates: int
    causes: collections.Counter[str]
    late_duplicates: int
    expired_leases: int
    errors: collections.Counter[str]
    """Sink errors other than the injected ones, by text."""
    tail_seconds: float
    """The longest an expected delivery waited after both its event's publication and the
    last fault before it."""
    poison_errors: int = 0
    """Errors charged to the poison event for relays that died delivering it."""
    pause: PauseReport | None = None
    poison_sinks: dict[str, str] = dataclasses.field(default_factory=dict)
    """The poison's state per sink at the end ({}: never routed)."""
    parked: int = 0
    """Deliveries parked behind the poison."""


@dataclasses.dataclass(frozen=True)
class _Event:
    id: int
    key: str | None
    topic: str
    status: str
    errors: list[dict[str, Any]]
    last_error: str | None
    created_at: dt.datetime
    deliveries: dict[str, Any]


def check(
    conn: psycopg.Connection[Any],
    plan: Plan,
    publisher: Publisher,
    chaos: Chaos,
    logs: list[str],
    seconds: float,
) -> Report:
    events = {
        row[0]: _Event(*row)
        for row in conn.execute(
            "SELECT id, key, topic, status, errors, last_error, created_at, deliveries "
            "FROM outbox_events"
        )
    }
    receipts = [
        Receipt(*row)
        for row in conn.execute(
            "SELECT seq, sink, event_id, key, attempt, relay_pid, called_at, received_at "
            "FROM chaos_received ORDER BY seq"
        )
    ]
    published = {event_id: (key, topic) for event_id, key, topic in publisher.published}
    assert len(published) == plan.events
    assert {e.id: (e.key, e.topic) for e in events.values()} == published, "outbox rows changed"

    poison = publisher.poison_id
    router = Router(SUBSCRIPTIONS)
    subscribed = {eid: router.sinks_for(topic) for eid, (_, topic) in published.items()}
    parked: set[tuple[str, int]] = set()
    poison_errors = 0
    if plan.poison:
        assert poison is not None
        parked = _check_poison(events, poison, chaos, plan, subscribed)
        poison_errors = sum(DIED in error["error"] for error in events[poison].errors)
    behind = {eid for _, eid in parked}
    not_done = [(e.id, e.status) for e in events.values() if e.id not in behind and e.id != poison]
    not_done = [(event_id, status) for event_id, status in not_done if status != "done"]
    assert not not_done, f"{len(not_done)} events not done, e.g. {not_done[:5]}"

    expected = {
        (sink, eid)
        for eid, sinks in subscribed.items()
        if eid != poison
        for sink in sinks
        if (sink, eid) not in parked
    }
    delivered = {(r.sink, r.event_id) for r in receipts}
    lost = sorted(expected - delivered)
    assert not lost, f"{len(lost)} deliveries lost, e.g. {lost[:10]}; {_rows(conn, lost)}"
    # The poison reaches its other sinks or not, depending on who is quicker than alpha.
    allowed = expected | {(sink, poison) for sink in subscribed.get(poison or 0, ())}
    unexpected = sorted(delivered - allowed)
    assert not unexpected, (
        f"{len(unexpected)} deliveries to unsubscribed sinks or to sinks parked behind the "
        f"poison: {unexpected[:10]}; {_rows(conn, [('', poison or 0), *unexpected])}"
    )
    wrong_key = [(r.event_id, r.key) for r in receipts if r.key != published[r.event_id][0]]
    assert not wrong_key, f"sinks saw the wrong key: {wrong_key[:10]}"

    broken, late = key_order(receipts)
    assert not broken, (
        f"per-key order broken (sink, key, id seen, earlier id after it): {broken[:10]}"
    )
    _check_hangs(events, publisher.hang_ids)
    pause = None if chaos.pause is None else _check_pause(receipts, chaos.pause, chaos)

    other_errors = [(e.id, error) for e in events.values() for error in e.errors]
    other_errors = [(eid, error) for eid, error in other_errors if not _injected(error)]
    sink_errors: dict[tuple[str, int], list[tuple[int, dt.datetime]]] = collections.defaultdict(
        list
    )
    for eid, error in other_errors:
        at = dt.datetime.fromisoformat(error["at"])
        sink_errors[(error["sink"], eid)].append((int(error["attempt"]), at))
    causes, unexplained = _explain_duplicates(receipts, chaos, sink_errors, _lease_lost(logs))
    assert not unexplained, (
        f"{len(unexplained)} duplicate receipts that no lost or failed attempt explains "
        f"(earlier receipt, later receipt): {unexplained[:5]}; kills: {chaos.kills}; "
        f"terminations: {chaos.terminations}; restarts: {chaos.restarts}; poison deaths: "
        f"{chaos.poison_deaths}"
    )
    return Report(
        seconds=seconds,
        deliveries=len(receipts),
        duplicates=len(receipts) - len(delivered),
        causes=causes,
        late_duplicates=late,
        errors=collections.Counter(_shape(error) for _, error in other_errors),
        expired_leases=sum(len(_EXPIRED.findall(text)) for text in logs),
        tail_seconds=_tail(receipts, expected, events, chaos),
        poison_errors=poison_errors,
        pause=pause,
        poison_sinks={
            sink: " until ".join(filter(None, (state.get("status"), state.get("until"))))
            for sink, state in (events[poison].deliveries if poison else {}).items()
        },
        parked=len(parked),
    )


def _rows(conn: psycopg.Connection[Any], lost: list[tuple[str, int]]) -> str:
    """The outbox rows of the first events lost, as evidence."""
    ids = sorted({eid for _, eid in lost})[:5]
    rows = conn.execute(
        "SELECT id, status, attempts, done_at, deliveries, errors FROM outbox_events "
        "WHERE id = ANY(%s) ORDER BY id",
        (ids,),
    ).fetchall()
    return "their rows (id, status, attempts, done_at, deliveries, errors): " + "; ".join(
        map(str, rows)
    )


def _injected(error: dict[str, Any]) -> bool:
    return str(error["error"]).endswith(INJECTED)


def _shape(error: dict[str, Any]) -> str:
    """A sink's error with its numbers and relay names blanked, to count errors by kind."""
    text = str(error["error"]).split("\n")[0]
    if DIED in text:
        text = text.split(" (")[0]
    return f"{error['sink'] or 'event'}: " + re.sub(r"\d+(\.\d+)?", "N", text)


def _check_poison(
    events: dict[int, _Event],
    poison: int,
    chaos: Chaos,
    plan: Plan,
    subscribed: dict[int, tuple[str, ...]],
) -> set[tuple[str, int]]:
    """The poison ends failed, charged with the deaths of the relays delivering it alone;
    the later events of its key wait behind it at the sinks it did not reach (decision 11:
    per-key order is per sink). Returns those deliveries, (sink, event id)."""
    event = events[poison]
    died = [error for error in event.errors if DIED in error["error"]]
    assert event.status == "failed", (
        f"the poison event {poison} is {event.status}; errors: {event.errors[-5:]}"
    )
    assert DIED in (event.last_error or ""), event.last_error
    assert len(died) == plan.max_attempts, (
        f"{len(died)} deaths charged to the poison, max_attempts = {plan.max_attempts}: "
        f"{event.errors[-5:]}"
    )
    # Each death is a relay the supervisor replaced. The first found the poison in a batch
    # (not charged) unless a SIGKILL had made it a suspect already; every later one found it
    # alone (charged), and so would a SIGKILL of a relay holding it alone.
    deaths = len(chaos.poison_deaths)
    assert plan.max_attempts - 1 <= deaths <= plan.max_attempts + 2, (
        f"{deaths} relays died of the poison with max_attempts = {plan.max_attempts}"
    )
    later = [e.id for e in events.values() if e.key == event.key and e.id > poison]
    parked = {
        (sink, eid) for eid in later for sink in parked_sinks(event.deliveries, subscribed[eid])
    }
    # alpha takes every event and never gets the poison: every later event waits for it.
    waiting = {eid: events[eid].status for _, eid in parked}
    assert set(waiting) == set(later), f"events behind the poison not parked: {later}, {parked}"
    assert set(waiting.values()) <= {"pending"}, f"events behind the poison: {waiting}"
    return parked


def _check_hangs(events: dict[int, _Event], hang_ids: list[int]) -> None:
    """Every call that hung cost its event a timeout at gamma (and was then delivered,
    which the loss check covers)."""
    for event_id in hang_ids:
        timeouts = [
            error
            for error in events[event_id].errors
            if error["sink"] == "gamma" and TIMED_OUT in error["error"]
        ]
        assert timeouts, f"event {event_id} hung at gamma but no timeout was recorded"


# How long after a pause is committed a call of the paused sink may still start: its relays
# read the switches at once when told (NOTIFY), or at their next maintenance round, on this
# loaded machine within _SWITCH_SEEN; a batch a relay routed before it knew still calls the
# sink, at the latest a lease after its claim (a later one has lost its claim).
_SWITCH_SEEN = dt.timedelta(seconds=2)


def _check_pause(receipts: list[Receipt], pause: Pause, chaos: Chaos) -> PauseReport:
    """While paused, the sink got only calls of batches routed before its relay knew; the
    other sinks kept receiving; deliveries waited for it (the loss and order checks cover
    what it got after the resume)."""
    assert pause.resumed_at is not None, f"{pause.sink} was never resumed"
    paused = (pause.paused_at, pause.resumed_at)
    held = [r for r in receipts if r.sink == pause.sink and paused[0] <= r.at <= paused[1]]
    calls = [r.called_at for r in held if r.called_at is not None]
    effective = pause.paused_at + _SWITCH_SEEN + dt.timedelta(seconds=chaos.lease_seconds)
    late = [r for r in held if (r.called_at or r.at) > effective]
    assert not late, (
        f"{len(late)} calls to the paused sink {pause.sink} started more than "
        f"{(effective - pause.paused_at).total_seconds():g}s after the pause "
        f"({pause.paused_at}), e.g. {late[:5]}"
    )
    quiet_from = max([r.at for r in held], default=pause.paused_at)
    others = {
        sink: sum(1 for r in receipts if r.sink == sink and quiet_from < r.at <= paused[1])
        for sink in sorted({sink for sub in SUBSCRIPTIONS for sink in sub.sinks} - {pause.sink})
    }
    assert all(others.values()), (
        f"a sink received nothing while {pause.sink} was paused (after its last receipt, "
        f"{quiet_from}): {others}"
    )
    assert pause.waiting_at_resume > 0, f"nothing waited for {pause.sink} while it was paused"

    def since_pause(at: dt.datetime) -> float:
        return (at - pause.paused_at).total_seconds()

    return PauseReport(
        sink=pause.sink,
        seconds=since_pause(pause.resumed_at),
        receipts=len(held),
        last_call=max(map(since_pause, calls), default=0.0),
        last_receipt=since_pause(quiet_from),
        others=others,
        waiting_at_resume=pause.waiting_at_resume,
    )


def _tail(
    receipts: list[Receipt],
    expected: set[tuple[str, int]],
    events: dict[int, _Event],
    chaos: Chaos,
) -> float:
    """The longest wait of an expected delivery, counted from the later of its event's
    publication and the last fault before the delivery (for a sink paused, its resume too):
    how long the relays took to recover from a fault (or, away from faults, to deliver)."""
    first: dict[tuple[str, int], dt.datetime] = {}
    for r in receipts:
        first.setdefault((r.sink, r.event_id), r.at)
    faults = sorted(chaos.fault_times())
    paused = chaos.pause
    faults_of = {}
    if paused is not None and paused.resumed_at is not None:
        faults_of[paused.sink] = sorted([*faults, paused.resumed_at])
    tail = 0.0
    for (sink, eid), at in first.items():
        if (sink, eid) in expected:
            since = events[eid].created_at
            sink_faults = faults_of.get(sink, faults)
            before = bisect.bisect_right(sink_faults, at)
            if before:
                since = max(since, sink_faults[before - 1])
            tail = max(tail, (at - since).total_seconds())
    return tail


def key_order(receipts: list[Receipt]) -> tuple[list[tuple[str, str, int, int]], int]:
    """Per sink and key, first receipts must come in id order. Returns the violations and
    the count of late duplicates: receipts of an id after a higher id of the same key had
    arrived (at-least-once would allow them; the key fence must prevent them)."""
    seen: dict[tuple[str, str], set[int]] = collections.defaultdict(set)
    highest: dict[tuple[str, str], int] = {}
    broken = []
    late = 0
    for r in receipts:
        if r.key is None:
            continue
        stream = (r.sink, r.key)
        top = highest.get(stream, 0)
        if r.event_id in seen[stream]:
            late += r.event_id < top
            continue
        seen[stream].add(r.event_id)
        if r.event_id < top:
            broken.append((r.sink, r.key, top, r.event_id))
        highest[stream] = max(top, r.event_id)
    return broken, late


_EXPIRED = re.compile(r"lease expired for event (\d+)")
_LEASE_LOST = re.compile(r"event (\d+) \([^)]*\): lease lost")


def _lease_lost(logs: list[str]) -> set[int]:
    """Events whose relay found at settle time that its lease had been taken over."""
    return {int(match) for text in logs for match in _LEASE_LOST.findall(text)}


def _explain_duplicates(
    receipts: list[Receipt],
    chaos: Chaos,
    sink_errors: dict[tuple[str, int], list[tuple[int, dt.datetime]]],
    lease_lost: set[int],
) -> tuple[collections.Counter[str], list[tuple[Receipt, Receipt]]]:
    """Account for every receipt after the first of its (sink, event).

    The receipt before it was an attempt whose success never reached the table: the relay
    recorded it as an error although the sink had the event (a timeout, a lost connection
    in the sink), or its claim was lost because the relay was SIGKILLed, died of the poison,
    had its connection terminated, lost the server to a restart, or found its lease taken
    over when it came to settle. A callable's receipt names its attempt, matched to the
    error of that attempt; a webhook request does not, so its receipt is matched to an
    error settled within a delivery timeout after it.
    """
    causes: collections.Counter[str] = collections.Counter()
    unexplained = []
    previous: dict[tuple[str, int], Receipt] = {}
    for r in receipts:
        before = previous.get((r.sink, r.event_id))
        previous[(r.sink, r.event_id)] = r
        if before is None:
            continue
        cause = None
        if r.attempt is not None and before.attempt is not None and r.attempt < before.attempt:
            pass
        elif _error_after(before, sink_errors.get((r.sink, r.event_id), []), chaos):
            cause = "error after the sink had it"
        elif _shortly_before(before, chaos.kills, chaos):
            cause = "relay SIGKILLed"
        elif _shortly_before(before, chaos.poison_deaths, chaos):
            cause = "relay died of the poison"
        elif _around(before.at, [(at, at) for _, at in chaos.terminations], chaos):
            cause = "connection terminated"
        elif _around(before.at, chaos.restarts, chaos):
            cause = "server restarted"
        elif r.event_id in lease_lost:
            cause = "lease lost"
        if cause is None:
            unexplained.append((before, r))
        else:
            causes[cause] += 1
    return causes, unexplained


# How far a relay's clock may lag behind its lease on this loaded 2-core machine: a claim
# in flight at a kill or a termination was delivered within a lease and a timeout of it.
_SLACK = dt.timedelta(seconds=5)
# A sink's insert sent just before its relay was SIGKILLed is still run by the server, and
# stamped (clock_timestamp()) after the kill was seen.
_SENT_BEFORE_DEATH = dt.timedelta(seconds=1)


def _error_after(receipt: Receipt, errors: list[tuple[int, dt.datetime]], chaos: Chaos) -> bool:
    """Whether the attempt that made ``receipt`` was settled as an error."""
    if receipt.sink != WEBHOOK_SINK:
        return any(attempt == receipt.attempt for attempt, _ in errors)
    settled_by = receipt.at + dt.timedelta(seconds=chaos.delivery_timeout) + _SLACK
    return any(receipt.at - _SLACK <= at <= settled_by for _, at in errors)


def _shortly_before(receipt: Receipt, deaths: list[tuple[int, dt.datetime]], chaos: Chaos) -> bool:
    """Whether the relay that delivered ``receipt`` died (or was killed) while it could
    still have held that claim."""
    window = dt.timedelta(seconds=chaos.lease_seconds) + _SLACK
    return any(
        pid == receipt.pid and at - window <= receipt.at <= at + _SENT_BEFORE_DEATH
        for pid, at in deaths
    )


def _around(at: dt.datetime, outages: list[tuple[dt.datetime, dt.datetime]], chaos: Chaos) -> bool:
    """Whether a delivery at ``at`` belonged to a claim that an outage (a termination round,
    a restart) cut off: claimed at most a lease before it began, delivered at most a
    timeout after it ended."""
    before = dt.timedelta(seconds=chaos.lease_seconds) + _SLACK
    after = dt.timedelta(seconds=chaos.delivery_timeout) + _SLACK
    return any(began - before <= at <= ended + after for began, ended in outages)
