"""Every statement the relay runs, in one place.

Each statement says what it does and which index serves it. Identifiers come from
configuration, are validated when it loads, and are quoted by ``psycopg.sql``. All lease and
schedule arithmetic uses the database clock.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from outbox.retry import Settlement

Connection = psycopg.AsyncConnection[TupleRow]

# Every relay connection says whose it is in pg_stat_activity (`outbox status` reads it).
RELAY_APPLICATION_PREFIX = "outbox relay "


def relay_application_name(relay: str) -> str:
    """The ``application_name`` of ``relay``'s connections (Postgres keeps 63 bytes)."""
    return (RELAY_APPLICATION_PREFIX + relay).encode()[:63].decode(errors="ignore")


# The due rows a claim takes: pending and due, oldest first (outbox_events_pending_idx). A
# keyed row is claimable only if no earlier row of its key is unfinished
# (outbox_events_key_idx) and its inserting transaction is older than every running one, so
# a lower id that commits later is never overtaken. Rows another relay has locked are skipped.
# Shared by both claims below, so that the two claim modes take exactly the same rows.
_DUE = """
FROM {table} AS e
WHERE e.status = 'pending'
  AND e.process_at <= now()
  AND (e.key IS NULL OR (
        e.txid < pg_snapshot_xmin(pg_current_snapshot())
        AND NOT EXISTS (
            SELECT 1 FROM {table} AS earlier
            WHERE earlier.key = e.key AND earlier.id < e.id AND earlier.status <> 'done')))
ORDER BY e.process_at, e.id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED
"""

# Claim a batch with a lease (claim_mode "lease"): the due rows become `processing`, each
# with its own lease token; the statement commits on its own. Primary key for the update.
_CLAIM = (
    "WITH due AS (SELECT e.id"
    + _DUE
    + """)
UPDATE {table} AS e
SET status = 'processing',
    attempts = e.attempts + 1,
    locked_by = %(relay)s,
    locked_until = now() + make_interval(secs => %(lease)s),
    lease_token = gen_random_uuid()
FROM due
WHERE e.id = due.id
RETURNING e.id, e.topic, e.key, e.payload::text, NULLIF(e.headers, '{{}}'::jsonb), e.attempts,
          NULLIF(e.deliveries, '{{}}'::jsonb), NULLIF(e.errors, '[]'::jsonb),
          e.created_at, e.lease_token, now()
"""
)

# Claim a batch under row locks (claim_mode "lock"): the due rows, read and locked inside
# the batch's transaction, nothing written. The lock is the lease: it ends with the
# transaction, and a rollback hands the rows back as they were. This delivery is an attempt,
# counted when it settles: reported here as the stored attempts + 1.
_CLAIM_LOCKED = (
    """SELECT e.id, e.topic, e.key, e.payload::text, NULLIF(e.headers, '{{}}'::jsonb),
       e.attempts + 1, NULLIF(e.deliveries, '{{}}'::jsonb), NULLIF(e.errors, '[]'::jsonb),
       e.created_at, NULL::uuid, now()"""
    + _DUE
)

# Settle a batch in one statement. The compare-and-set on lease token means a relay whose
# lease expired (and whose rows another relay reclaimed) changes nothing. Primary key.
_SETTLE = """
UPDATE {table} AS e
SET status = s.status,
    process_at = COALESCE(s.process_at, e.process_at),
    deliveries = s.deliveries,
    errors = s.errors,
    last_error = s.last_error,
    done_at = CASE WHEN s.status IN ('done', 'failed') THEN now() END,
    locked_by = NULL,
    locked_until = NULL,
    lease_token = NULL
FROM jsonb_to_recordset(CAST(%(rows)s AS jsonb)) AS s(
    id bigint, token uuid, status text, process_at timestamptz,
    deliveries jsonb, errors jsonb, last_error text)
WHERE e.id = s.id AND e.lease_token = s.token AND e.status = 'processing'
RETURNING e.id
"""

# Settle a batch claimed under row locks, in the transaction that holds them: the lock
# guarantees ownership, so no lease token is compared; the attempt is counted here. The
# settle's own start time for done_at, not now(): the transaction began at the claim.
# Primary key.
_SETTLE_LOCKED = """
UPDATE {table} AS e
SET status = s.status,
    attempts = e.attempts + 1,
    process_at = COALESCE(s.process_at, e.process_at),
    deliveries = s.deliveries,
    errors = s.errors,
    last_error = s.last_error,
    done_at = CASE WHEN s.status IN ('done', 'failed') THEN statement_timestamp() END,
    locked_by = NULL,
    locked_until = NULL,
    lease_token = NULL
FROM jsonb_to_recordset(CAST(%(rows)s AS jsonb)) AS s(
    id bigint, status text, process_at timestamptz,
    deliveries jsonb, errors jsonb, last_error text)
WHERE e.id = s.id AND e.status = 'pending'
RETURNING e.id
"""

# The same, when every row of the batch settles alike (the common case: each sink delivered
# on the first try): an id array and one set of values, no per-row document to build and
# take apart; the ids go in binary, cheaper to build than an array's text. Primary key.
_SETTLE_LOCKED_ALIKE = """
UPDATE {table} AS e
SET status = %(status)s,
    attempts = e.attempts + 1,
    process_at = COALESCE(%(process_at)s, e.process_at),
    deliveries = CAST(%(deliveries)s AS jsonb),
    errors = CAST(%(errors)s AS jsonb),
    last_error = %(last_error)s,
    done_at = CASE WHEN %(finished)s THEN statement_timestamp() END,
    locked_by = NULL,
    locked_until = NULL,
    lease_token = NULL
WHERE e.id = ANY(CAST(%(ids)b AS bigint[])) AND e.status = 'pending'
RETURNING e.id
"""

# Give back rows claimed but not delivered (graceful shutdown): the claim does not count as
# an attempt. Primary key, compare-and-set on the lease token.
_RELEASE = """
UPDATE {table} AS e
SET status = 'pending', attempts = GREATEST(e.attempts - 1, 0),
    locked_by = NULL, locked_until = NULL, lease_token = NULL
FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[]) AS r(id, token)
WHERE e.id = r.id AND e.lease_token = r.token AND e.status = 'processing'
"""

# Rows whose lease expired (their relay died or stalled) become claimable again
# (outbox_events_processing_idx). A row whose claims outnumber what its sinks' attempts can
# explain has crashed relays repeatedly: it fails rather than crash them forever.
_RECOVER = """
UPDATE {table} AS e
SET status = CASE WHEN x.exhausted THEN 'failed' ELSE 'pending' END,
    done_at = CASE WHEN x.exhausted THEN now() END,
    last_error = 'lease of ' || COALESCE(e.locked_by, '?') || ' expired during attempt '
                 || e.attempts,
    locked_by = NULL, locked_until = NULL, lease_token = NULL
FROM (
    SELECT id, attempts >= %(max_attempts)s
                 * (1 + (SELECT count(*) FROM jsonb_object_keys(deliveries))) AS exhausted
    FROM {table}
    WHERE status = 'processing' AND locked_until < now()
) AS x
WHERE e.id = x.id AND e.status = 'processing'
RETURNING e.id, e.status
"""

# Delete done rows older than the retention, a bounded batch at a time (outbox_events_done_idx).
_PURGE_DONE = """
DELETE FROM {table}
WHERE id IN (
    SELECT id FROM {table}
    WHERE status = 'done' AND done_at < now() - make_interval(secs => %(keep)s)
    LIMIT %(limit)s)
"""

# When the next pending row falls due, in seconds from now, and whether due rows are
# waiting unclaimed (a key fence or a parked key) (outbox_events_pending_idx, both).
_NEXT_DUE = """
SELECT (SELECT EXTRACT(EPOCH FROM (min(process_at) - now()))::float8
        FROM {table} WHERE status = 'pending' AND process_at > now()),
       EXISTS (SELECT 1 FROM {table} WHERE status = 'pending' AND process_at <= now())
"""

# Pending events and the age of the oldest due one, for metrics (outbox_events_pending_idx).
_BACKLOG = """
SELECT count(*),
       COALESCE(EXTRACT(EPOCH FROM
           now() - min(process_at) FILTER (WHERE process_at <= now())), 0)::float8
FROM {table} WHERE status = 'pending'
"""

# Whether work is left for a draining relay: rows in flight, or due rows whose key is not
# parked behind a failed event.
_OUTSTANDING = """
SELECT EXISTS (SELECT 1 FROM {table} WHERE status = 'processing')
    OR EXISTS (
        SELECT 1 FROM {table} AS e
        WHERE e.status = 'pending' AND e.process_at <= now()
          AND (e.key IS NULL OR NOT EXISTS (
                SELECT 1 FROM {table} AS f
                WHERE f.key = e.key AND f.id < e.id AND f.status = 'failed')))
"""


# Sinks an operator or a 410 Gone switched off (primary key of outbox_sinks).
_DISABLED_SINKS = "SELECT name FROM {sinks} WHERE disabled_at IS NOT NULL"

# Switch a sink off, keeping the first reason if it already is.
_DISABLE_SINK = """
INSERT INTO {sinks} (name, disabled_at, disabled_reason) VALUES (%(name)s, now(), %(reason)s)
ON CONFLICT (name) DO UPDATE
SET disabled_at = COALESCE({sinks}.disabled_at, now()),
    disabled_reason = COALESCE({sinks}.disabled_reason, EXCLUDED.disabled_reason),
    updated_at = now()
"""

# Switch a sink back on.
_ENABLE_SINK = """
UPDATE {sinks} SET disabled_at = NULL, disabled_reason = NULL, updated_at = now()
WHERE name = %(name)s AND disabled_at IS NOT NULL
"""


@dataclasses.dataclass(frozen=True, slots=True)
class ClaimedRow:
    id: int
    topic: str
    key: str | None
    payload: Any
    headers: dict[str, str]
    attempts: int
    deliveries: dict[str, dict[str, Any]]
    errors: list[dict[str, Any]]
    created_at: dt.datetime
    lease_token: uuid.UUID | None
    """None for a row claimed under a row lock (claim mode "lock")."""


@dataclasses.dataclass(frozen=True, slots=True)
class Claim:
    rows: list[ClaimedRow]
    now: dt.datetime
    """The database clock when the batch was claimed."""


class Store:
    """The outbox table of one schema, as the relay sees it."""

    def __init__(self, schema: str = "public") -> None:
        table = sql.Identifier(schema, "outbox_events")
        sinks = sql.Identifier(schema, "outbox_sinks")

        def render(template: str) -> bytes:
            return sql.SQL(template).format(table=table, sinks=sinks).as_bytes(None)

        self._claim = render(_CLAIM)
        self._settle = render(_SETTLE)
        self._claim_locked = render(_CLAIM_LOCKED)
        self._settle_locked = render(_SETTLE_LOCKED)
        self._settle_locked_alike = render(_SETTLE_LOCKED_ALIKE)
        self._release = render(_RELEASE)
        self._recover = render(_RECOVER)
        self._purge_done = render(_PURGE_DONE)
        self._next_due = render(_NEXT_DUE)
        self._backlog = render(_BACKLOG)
        self._outstanding = render(_OUTSTANDING)
        self._disabled_sinks = render(_DISABLED_SINKS)
        self._disable_sink = render(_DISABLE_SINK)
        self._enable_sink = render(_ENABLE_SINK)

    async def claim(
        self, conn: Connection, *, limit: int, relay: str, lease_seconds: float
    ) -> Claim:
        cursor = await conn.execute(
            self._claim, {"limit": limit, "relay": relay, "lease": lease_seconds}
        )
        return _claim_of(await cursor.fetchall())

    async def claim_locked(self, conn: Connection, *, limit: int) -> Claim:
        """Lock a batch of due rows; call inside the transaction that will settle them."""
        cursor = await conn.execute(self._claim_locked, {"limit": limit})
        return _claim_of(await cursor.fetchall())

    async def settle(
        self, conn: Connection, settled: Sequence[tuple[ClaimedRow, Settlement]]
    ) -> set[int]:
        """Write back a batch; return the ids whose lease still held."""
        payload = json.dumps([_settle_row(row, outcome) for row, outcome in settled])
        cursor = await conn.execute(self._settle, {"rows": payload})
        return {record[0] for record in await cursor.fetchall()}

    async def settle_locked(
        self, conn: Connection, settled: Sequence[tuple[ClaimedRow, Settlement]]
    ) -> set[int]:
        """Write back a batch from :meth:`claim_locked`, in the transaction holding its locks;
        return the ids written."""
        if not settled:
            return set()
        first = settled[0][1]
        if all(settlement == first for _, settlement in settled):
            cursor = await conn.execute(
                self._settle_locked_alike,
                {
                    "ids": [row.id for row, _ in settled],
                    "status": first.status,
                    "process_at": first.process_at,
                    "deliveries": json.dumps(first.deliveries),
                    "errors": json.dumps(first.errors),
                    "last_error": first.last_error,
                    "finished": first.status in ("done", "failed"),
                },
            )
        else:
            payload = json.dumps([_settle_row(row, outcome) for row, outcome in settled])
            cursor = await conn.execute(self._settle_locked, {"rows": payload})
        return {record[0] for record in await cursor.fetchall()}

    async def release(self, conn: Connection, rows: Sequence[ClaimedRow]) -> None:
        await conn.execute(
            self._release,
            {"ids": [row.id for row in rows], "tokens": [row.lease_token for row in rows]},
        )

    async def recover_expired(
        self, conn: Connection, *, max_attempts: int
    ) -> list[tuple[int, str]]:
        cursor = await conn.execute(self._recover, {"max_attempts": max_attempts})
        return [(record[0], record[1]) for record in await cursor.fetchall()]

    async def purge_done(self, conn: Connection, *, keep_seconds: float, limit: int) -> int:
        cursor = await conn.execute(self._purge_done, {"keep": keep_seconds, "limit": limit})
        return cursor.rowcount

    async def next_due(self, conn: Connection) -> tuple[float | None, bool]:
        """Seconds until the next scheduled row is due (None: none), and whether rows that
        are due now wait unclaimed."""
        cursor = await conn.execute(self._next_due)
        record = await cursor.fetchone()
        assert record is not None
        seconds = None if record[0] is None else max(float(record[0]), 0.0)
        return seconds, bool(record[1])

    async def backlog(self, conn: Connection) -> tuple[int, float]:
        """Pending events, and the age in seconds of the oldest one due."""
        cursor = await conn.execute(self._backlog)
        record = await cursor.fetchone()
        assert record is not None
        return int(record[0]), float(record[1])

    async def has_outstanding(self, conn: Connection) -> bool:
        cursor = await conn.execute(self._outstanding)
        record = await cursor.fetchone()
        return bool(record and record[0])

    async def disabled_sinks(self, conn: Connection) -> set[str]:
        cursor = await conn.execute(self._disabled_sinks)
        return {str(record[0]) for record in await cursor.fetchall()}

    async def disable_sink(self, conn: Connection, name: str, reason: str) -> None:
        await conn.execute(self._disable_sink, {"name": name, "reason": reason})

    async def enable_sink(self, conn: Connection, name: str) -> bool:
        """Switch ``name`` back on; False if it was not disabled."""
        cursor = await conn.execute(self._enable_sink, {"name": name})
        return cursor.rowcount > 0


def _claim_of(records: list[TupleRow]) -> Claim:
    if not records:
        return Claim([], dt.datetime.now(dt.UTC))
    now = records[0][10]
    # Payloads come as text, decoded as one JSON array for the batch: one jsonb decode per
    # row was the largest share of the claim's time. Empty jsonb comes back as NULL: most
    # rows have no headers, deliveries or errors yet, and need nothing decoded.
    payloads = json.loads("[" + ",".join(record[3] for record in records) + "]")
    rows = [
        ClaimedRow(
            id, topic, key, payload, headers or {}, attempts, deliveries or {},
            errors or [], created_at, lease_token,
        )
        for (id, topic, key, _, headers, attempts, deliveries, errors, created_at,
             lease_token, _), payload in zip(records, payloads, strict=True)
    ]  # fmt: skip
    rows.sort(key=lambda row: row.id)
    return Claim(rows, now)


def _settle_row(row: ClaimedRow, settlement: Settlement) -> dict[str, Any]:
    return {
        "id": row.id,
        "token": None if row.lease_token is None else str(row.lease_token),
        "status": settlement.status,
        "process_at": settlement.process_at.isoformat() if settlement.process_at else None,
        "deliveries": settlement.deliveries,
        "errors": settlement.errors,
        "last_error": settlement.last_error,
    }


def listen_statement(channel: str) -> sql.Composed:
    """``LISTEN`` on ``channel``, quoted."""
    return sql.SQL("LISTEN {}").format(sql.Identifier(channel))
