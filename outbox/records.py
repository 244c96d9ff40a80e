"""The records that cross between the store and the relay: what a claim reads, what a settle
writes. Plain frozen dataclasses, built at the store boundary; no I/O, no driver.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import Any, Literal

EventStatus = Literal["pending", "done", "failed"]


@dataclasses.dataclass(frozen=True, slots=True)
class ClaimedRow:
    """One claimed event, as the store read it."""

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
    blocked: dict[str, dt.datetime] = dataclasses.field(default_factory=dict)
    """Sinks an earlier event of its key has not reached yet, each with when to look again
    (``outbox.retry.HELD_UNTIL``: not by itself): this claim must not deliver to them
    (docs/decisions/0011-sinks-held-independently.md)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Claim:
    """A claimed batch, ordered by id."""

    rows: list[ClaimedRow]
    now: dt.datetime
    """The database clock when the batch was claimed."""
    suspect: bool = False
    """The batch is one suspect alone: a row that was in flight when a relay died
    (docs/decisions/0010-poison-events.md)."""


@dataclasses.dataclass(frozen=True)
class Settlement:
    """What to write back for one claimed event (decided by ``outbox.retry.settle_event``)."""

    status: EventStatus
    process_at: dt.datetime | None
    deliveries: dict[str, dict[str, Any]]
    errors: list[dict[str, Any]]
    last_error: str | None
    attempted: bool = True
    """Whether a sink was called for it: a claim that only found its sinks held, or behind
    an earlier event of its key, counts no attempt."""
    freed: tuple[str, ...] = ()
    """Sinks it reached after waiting or retrying there: the next event of its key that
    waits behind it for one of them may go now (decision 11)."""
    blocked: tuple[str, ...] = ()
    """Sinks it waits at behind an earlier event of its key: the settle looks whether that
    event reached them meanwhile."""
