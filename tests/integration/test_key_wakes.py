"""An event waiting behind an earlier event of its key looks again as soon as that event
reaches the sink (decision 11): the settle that delivers it wakes the next one, and a settle
of an event that was in flight meanwhile finds the way clear for itself. Without either, the
waiting event would look again only at its bound, 15 seconds later.

Driven at the store, one settle at a time, so that each interleaving is the one named.
"""

from __future__ import annotations

import datetime as dt
import json

import psycopg
import pytest

import outbox
from outbox import admin
from outbox.records import ClaimedRow, Settlement
from outbox.retry import SUCCESS, settle_event
from outbox.runtime import relay_options
from outbox.store import Store

POLICY = relay_options().retry
SINKS = ["x"]


def _publish_pair(url: str, *, first_due: bool) -> tuple[int, int]:
    """An earlier event already routed and retrying at sink x (due now or in an hour), and a
    later event of the same key, not routed yet."""
    with psycopg.connect(url) as conn:
        earlier = outbox.publish(conn, "order.placed", {"n": 0}, key="k").id
        later = outbox.publish(conn, "order.placed", {"n": 1}, key="k").id
        when = "now()" if first_due else "now() + interval '1 hour'"
        state = {"status": "retrying", "attempts": 1, "not_before": "2000-01-01T00:00:00+00:00"}
        if not first_due:
            state["not_before"] = "2999-01-01T00:00:00+00:00"
        conn.execute(
            f"UPDATE outbox_events SET deliveries = %s, process_at = {when} WHERE id = %s",
            (json.dumps({"x": state}), earlier),
        )
    assert earlier is not None
    assert later is not None
    return earlier, later


def _settle(row: ClaimedRow, now: dt.datetime, *, delivered: bool) -> Settlement:
    if delivered:
        return settle_event(
            subscribed=SINKS, deliveries=row.deliveries, errors=row.errors,
            outcomes={"x": SUCCESS}, now=now, policy=POLICY,
        )  # fmt: skip
    assert "x" in row.blocked, "the later event was not told it waits behind the earlier one"
    return settle_event(
        subscribed=SINKS, deliveries=row.deliveries, errors=row.errors, outcomes={}, now=now,
        policy=POLICY, waits={"x": row.blocked["x"]}, blocked=row.blocked,
    )  # fmt: skip


def _looks_again_within(url: str, event_id: int) -> float:
    """Seconds until the event is next due (negative: due already)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM process_at - now()) FROM outbox_events WHERE id = %s",
            (event_id,),
        ).fetchone()
    assert row is not None
    return float(row[0])


async def test_an_event_in_flight_when_the_way_clears_looks_again_at_once(
    database_url: str,
) -> None:
    earlier, later = _publish_pair(database_url, first_due=True)
    store = Store()
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        claim = await store.claim(conn, limit=10, relay="r", lease_seconds=30, take_suspect=False)
        rows = {row.id: row for row in claim.rows}
        assert set(rows) == {earlier, later}
        # The earlier event reaches x while the later one is in flight: its wake passes the
        # later one by (it is not pending); the later one's own settle must see the way clear.
        assert await store.settle(
            conn, [(rows[earlier], _settle(rows[earlier], claim.now, delivered=True))]
        )
        assert await store.settle(
            conn, [(rows[later], _settle(rows[later], claim.now, delivered=False))]
        )
    assert _looks_again_within(database_url, later) <= 0


@pytest.mark.parametrize("claim_mode", ["lease", "lock"])
async def test_the_settle_that_reaches_a_sink_wakes_the_next_event_of_the_key(
    database_url: str, claim_mode: str
) -> None:
    earlier, later = _publish_pair(database_url, first_due=False)
    store = Store()
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        first = await _claim(store, conn, claim_mode, {later}, delivered=False)
        assert _looks_again_within(database_url, later) > 10, "the bound is 15 seconds"
        await conn.execute(
            "UPDATE outbox_events SET process_at = now(), deliveries = jsonb_set(deliveries,"
            " '{x,not_before}', '\"2000-01-01T00:00:00+00:00\"') WHERE id = %s",
            (earlier,),
        )
        await _claim(store, conn, claim_mode, {earlier}, delivered=True)
    assert first
    assert _looks_again_within(database_url, later) <= 0


async def _claim(
    store: Store,
    conn: psycopg.AsyncConnection[tuple[object, ...]],
    claim_mode: str,
    expected: set[int],
    *,
    delivered: bool,
) -> set[int]:
    """Claim what is due (``expected``), settle it and return the ids written."""
    if claim_mode == "lease":
        claim = await store.claim(conn, limit=10, relay="r", lease_seconds=30, take_suspect=False)
        assert {row.id for row in claim.rows} == expected
        settled = [(row, _settle(row, claim.now, delivered=delivered)) for row in claim.rows]
        return await store.settle(conn, settled)
    async with conn.transaction():
        claim = await store.claim_locked(conn, limit=10, take_suspect=False)
        assert {row.id for row in claim.rows} == expected
        async with await psycopg.AsyncConnection.connect(conn.info.dsn, autocommit=True) as journal:
            record = await store.open_claim(journal, claim.rows, suspect=False)
        settled = [(row, _settle(row, claim.now, delivered=delivered)) for row in claim.rows]
        return await store.settle_locked(conn, settled, record)


async def test_purging_the_failed_event_a_key_waits_behind_wakes_the_next_one(
    database_url: str,
) -> None:
    earlier, later = _publish_pair(database_url, first_due=False)
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "UPDATE outbox_events SET status = 'failed', done_at = now() - interval '1 hour',"
            ' deliveries = \'{"x": {"status": "failed", "attempts": 5}}\' WHERE id = %s',
            (earlier,),
        )
    store = Store()
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await _claim(store, conn, "lease", {later}, delivered=False)
        assert _looks_again_within(database_url, later) > 1e9, "parked until an operator acts"
        plan = await admin.plan_purge(
            conn, "public", older_than=dt.timedelta(minutes=1), statuses=["failed"]
        )
        assert await admin.apply(conn, "public", plan) == 1
    assert _looks_again_within(database_url, later) <= 0
