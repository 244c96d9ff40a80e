"""The lag a relay logs every round counts the due events only up to a cap (issue 14: every
relay counting and sorting the whole backlog every round was most of a busy database's
time); below the cap it agrees with ``outbox status``."""

from __future__ import annotations

import psycopg

from outbox import sink_status

FILL = """
INSERT INTO outbox_events (topic, payload, process_at)
SELECT 'order.paid', '{}'::jsonb, now() - interval '1 minute'
FROM generate_series(1, %s)
"""


async def lags(url: str) -> tuple[tuple[int, float], tuple[int, float]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await sink_status.relay_lag(conn, "public"), await sink_status.lag(conn, "public")


async def test_below_the_cap_the_relay_lag_is_the_status_lag(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(FILL, (25,))
        conn.execute(FILL.replace("1 minute", "-1 hour"), (5,))  # not due yet
    (relay_due, relay_seconds), (status_due, status_seconds) = await lags(database_url)
    assert relay_due == status_due == 25
    assert 59 < relay_seconds < 3600
    assert abs(relay_seconds - status_seconds) < 5


async def test_the_relay_lag_counts_up_to_the_cap(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(FILL, (sink_status.LAG_COUNT_CAP + 7,))
    (relay_due, relay_seconds), (status_due, _) = await lags(database_url)
    assert relay_due == sink_status.LAG_COUNT_CAP
    assert status_due == sink_status.LAG_COUNT_CAP + 7
    assert relay_seconds > 59


async def test_nothing_due_is_no_lag(database_url: str) -> None:
    (relay_due, relay_seconds), _ = await lags(database_url)
    assert (relay_due, relay_seconds) == (0, 0.0)
