"""How the store reads a claim's rows and writes a settle's: the row codecs of
``outbox/store.py``, apart from its statements."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

from psycopg.rows import TupleRow

from outbox.records import Claim, ClaimedRow, Settlement
from outbox.retry import HELD_UNTIL


def claim_of(records: list[TupleRow]) -> Claim:
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
            errors or [], created_at, lease_token, _blocked(blocked),
        )
        for (id, topic, key, _, headers, attempts, deliveries, errors, created_at,
             lease_token, _, _, blocked), payload in zip(records, payloads, strict=True)
    ]  # fmt: skip
    rows.sort(key=lambda row: row.id)
    return Claim(rows, now, suspect=bool(records[0][11]))


def _blocked(found: dict[str, str] | None) -> dict[str, dt.datetime]:
    """The claim's blocked sinks, each with its time to look again ('infinity': never)."""
    if not found:
        return {}
    return {sink: _until(text) for sink, text in found.items()}


def _until(text: str) -> dt.datetime:
    if text == "infinity":
        return HELD_UNTIL
    return min(dt.datetime.fromisoformat(text), HELD_UNTIL)


def settle_alike(settled: Sequence[tuple[ClaimedRow, Settlement]]) -> bool:
    """Whether the batch can settle with one set of values (the ``*_alike`` statements):
    every row settles the same, and none has anything to wake or look at again."""
    first = settled[0][1]
    return not (first.freed or first.blocked) and all(s == first for _, s in settled)


def alike_params(
    settled: Sequence[tuple[ClaimedRow, Settlement]], first: Settlement
) -> dict[str, Any]:
    return {
        "ids": [row.id for row, _ in settled],
        "status": first.status,
        "process_at": first.process_at,
        "deliveries": json.dumps(first.deliveries),
        "errors": json.dumps(first.errors),
        "last_error": first.last_error,
        "finished": first.status in ("done", "failed"),
        "attempted": first.attempted,
    }


def settle_row(row: ClaimedRow, settlement: Settlement) -> dict[str, Any]:
    return {
        "id": row.id,
        "token": None if row.lease_token is None else str(row.lease_token),
        "status": settlement.status,
        "process_at": settlement.process_at.isoformat() if settlement.process_at else None,
        "deliveries": settlement.deliveries,
        "errors": settlement.errors,
        "last_error": settlement.last_error,
        "attempted": settlement.attempted,
        "blocked": settlement.blocked or None,
        "freed": settlement.freed or None,
    }


def rows_params(settled: Sequence[tuple[ClaimedRow, Settlement]]) -> dict[str, Any]:
    """The per-row settle statements' parameters: one JSON document for the batch, and
    the ids (that lead the planner to the primary key)."""
    return {
        "rows": json.dumps([settle_row(row, outcome) for row, outcome in settled]),
        "ids": [row.id for row, _ in settled],
    }


def keys_to_lock(settled: Sequence[tuple[ClaimedRow, Settlement]]) -> list[str]:
    """The keys whose settles must not overlap (``lock_keys``): those of events that reached
    a sink they waited or retried at, or that wait behind an earlier event."""
    return sorted({row.key for row, s in settled if row.key is not None and (s.freed or s.blocked)})
