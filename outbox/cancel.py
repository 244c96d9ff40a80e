"""Cancelling events that must never go out.

A cancelled event is kept, not deleted: it becomes ``done`` with a ``*cancelled`` entry in its
deliveries (status ``cancelled``, who, when, why), so that ``outbox events show`` and
``outbox events list --status cancelled`` find it. Being ``done`` is what makes it safe: no
claim takes a done row, a later event of its key goes on as if it had been delivered, and
retention deletes it like any finished event (docs/decisions/0012-cancelled-events.md).

Only pending events that no relay holds can be cancelled: an event in flight may be reaching
its sinks right now, and a done or failed one is not going out anyway.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

import psycopg

from outbox import _queries
from outbox._event_filter import CANCELLED_KEY as CANCELLED_KEY

Connection = psycopg.AsyncConnection[Any]

# CANCELLED_KEY, the deliveries entry that marks a cancelled event, is not a sink name (sink
# names start with a letter): no sink's state is ever mistaken for it.


@dataclasses.dataclass(frozen=True)
class Refusal:
    event_id: int
    reason: str
    """Why it was not cancelled, said so that the operator knows what to do instead."""


@dataclasses.dataclass(frozen=True)
class Cancellation:
    cancelled: list[int]
    refused: list[Refusal]


async def cancel_events(
    conn: Connection,
    schema: str,
    ids: Sequence[int],
    *,
    by: str | None = None,
    reason: str | None = None,
) -> Cancellation:
    """Cancel the pending events among ``ids`` in one transaction, recording ``by`` (the
    database role when ``None``) and ``reason``; say why each other id was refused."""
    statements = _queries.for_schema(schema)
    wanted = sorted(set(ids))
    async with conn.transaction():
        cursor = await conn.execute(
            statements["cancel_events"], {"ids": wanted, "by": by, "reason": reason}
        )
        cancelled = [row[0] for row in await cursor.fetchall()]
        left = [event_id for event_id in wanted if event_id not in set(cancelled)]
        refused = await _refusals(conn, statements["cancel_refusals"], left) if left else []
    return Cancellation(cancelled, refused)


async def _refusals(conn: Connection, statement: bytes, ids: list[int]) -> list[Refusal]:
    cursor = await conn.execute(statement, {"ids": ids})
    found = {row[0]: row[1:] for row in await cursor.fetchall()}
    return [
        Refusal(event_id, _why(*found[event_id]) if event_id in found else "no such event")
        for event_id in ids
    ]


def _why(
    status: str,
    locked_by: str | None,
    locked_until: dt.datetime | None,
    in_lock_batch: bool,
    cancelled: dict[str, Any] | None,
) -> str:
    if cancelled is not None:
        return f"already cancelled by {cancelled.get('by')} at {cancelled.get('at')}"
    if status == "processing":
        until = locked_until.isoformat() if locked_until else "?"
        return (
            f"in flight: relay {locked_by or '?'} is delivering it (lease until {until}); "
            "only pending events can be cancelled"
        )
    if status == "pending":  # a lock-mode batch holds it, or a claim is taking it this moment
        held = "a relay's batch holds it" if in_lock_batch else "a relay is claiming it"
        return f"in flight: {held}; only pending events can be cancelled"
    if status == "failed":
        return (
            "failed: it goes out only if retried; delete it with "
            "`outbox purge --status failed` instead"
        )
    return f"{status}: it has already gone out; only pending events can be cancelled"
