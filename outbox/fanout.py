"""Fan-out: a claimed batch routed to its sinks, delivered, and what that comes to.

Each sink gets its share of the batch in ``deliver_batch`` calls of at most its
``batch_size`` events, one after another; every sink at once, each bounded by its own
concurrency. A transactional sink (one that writes into the outbox's own database) is not
called directly: it writes inside the transaction that settles the batch, so its writes and
the settle commit together.

Sinks never hold each other back (docs/decisions/0011-sinks-held-independently.md): a sink
that is held (paused, or disabled, as one that raises :class:`~outbox.SinkGone` becomes) is
not called, and its events wait for it with no attempt counted; a sink that an earlier event
of the key has not reached yet is not called for this one either. Every other sink gets the
event as if those did not exist.

A sink may have settings of its own (:class:`SinkLimits`, from ``[sinks.NAME]``): its retry
policy, its ``batch_size``, and a rate limit shared by every relay (``outbox.rate_limit``),
whose events beyond the rate wait like those of a held sink.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from outbox.exceptions import DatabaseUnavailable, RetryableError, SinkGone
from outbox.observer import RelayObserver, RelayStats
from outbox.rate_limit import Rate, RateLimiter
from outbox.records import Claim, ClaimedRow, Settlement
from outbox.retry import (
    HELD_UNTIL,
    Outcome,
    RetryPolicy,
    classify,
    settle_event,
    sinks_due,
)
from outbox.routing import Router
from outbox.sinks import Event, Sink
from outbox.store import Connection, Connector, Store, sink_savepoint

if TYPE_CHECKING:
    from outbox.relay import RelayOptions

logger = logging.getLogger(__name__)

_NO_WAITS: dict[str, dt.datetime] = {}

Deliveries = dict[str, list[tuple[ClaimedRow, Event]]]
"""Per sink name, the events it is to get, each beside the row it came from."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class SinkLimits:
    """The relay's settings for one sink (``[sinks.NAME]`` beside its type's options), for
    every sink type alike; None: the relay's own."""

    retry: RetryPolicy | None = None
    """Its ``max_attempts`` and backoff."""
    batch_size: int | None = None
    """The most events of one ``deliver_batch`` call; a claimed batch's share for the sink
    goes out in calls this size, one after another."""
    rate: Rate | None = None
    """Events a second, held across every relay; None: unlimited."""


@dataclasses.dataclass(slots=True)
class Batch:
    """A claimed batch routed to its sinks, and what each delivery came to so far."""

    claim: Claim
    started: float
    """``time.monotonic()`` when the batch was routed: the settle's clock is the claim's
    database clock plus the time since."""
    outcomes: dict[int, dict[str, Outcome]]
    """Per event id, per sink attempted in this batch: what the attempt came to."""
    waits: dict[int, dict[str, dt.datetime]]
    """Per event id that has any, the sinks due but not attempted (held, or behind an
    earlier event of the key), each with when to look again."""
    direct: Deliveries
    """Sinks called directly."""
    in_transaction: Deliveries
    """Transactional sinks: they write in the settle's transaction."""
    held: set[str] = dataclasses.field(default_factory=set)
    """Sinks held when the batch was routed: their deliveries wait with no call."""


class FanOut:
    """Routes batches to ``sinks`` and delivers them; keeps which sinks are disabled."""

    def __init__(
        self,
        sinks: Mapping[str, Sink],
        router: Router,
        store: Store,
        connector: Connector,
        *,
        options: RelayOptions,
        observer: RelayObserver,
        stats: RelayStats,
    ) -> None:
        missing = [name for name in router.sink_names if name not in sinks]
        if missing:
            raise ValueError(f"subscriptions name sinks that do not exist: {', '.join(missing)}")
        self._sinks = dict(sinks)
        self._router = router
        self._store = store
        self._connector = connector
        self._delivery_timeout = options.delivery_timeout
        # Sinks time out their own slow events; this is the backstop for one that does not,
        # still inside the lease.
        self._backstop = (options.delivery_timeout + options.lease_seconds) / 2
        self._retry = options.retry
        limits = options.sinks
        self._policies = {name: lim.retry for name, lim in limits.items() if lim.retry}
        self._batch_sizes = {name: lim.batch_size for name, lim in limits.items() if lim.batch_size}
        rates = {name: lim.rate for name, lim in limits.items() if lim.rate and name in sinks}
        self._limiter = RateLimiter(store.schema, connector, rates) if rates else None
        self._observer = observer
        self._stats = stats
        self.held: set[str] = set()
        """Sinks paused or disabled: their events wait for them, with no call."""
        self._held_read = False
        self._released: set[str] = set()
        """Sinks held earlier in this relay's life and not now: a batch routed while one was
        held and settled after must not leave its events waiting for a switch already made."""

    def set_held(self, names: set[str]) -> set[str]:
        """Hold exactly ``names``, as the database has them (read at start and by each
        maintenance round); return the sinks held until now and no longer, whose waiting
        deliveries this relay may have held again since they were switched back on."""
        released = self.held - names
        self.held = names
        self._held_read = True
        self._released |= released
        self._released -= names
        return released

    async def read_held(self, conn: Connection) -> None:
        """Read which sinks are held, unless already read: a relay that the database refused
        at its start reads them on a worker's first connection, before its first claim."""
        if not self._held_read:
            self.set_held(await self._store.held_sinks(conn))

    async def wake_if_switched_on(self, conn: Connection, batch: Batch) -> None:
        """Once ``batch`` is settled with deliveries waiting for held sinks, read which sinks
        are held and make due the deliveries of those switched back on meanwhile (and of any
        other this relay learns is released, as its maintenance round would): the switch's
        own wake may have run before this settle committed, and this relay may end before a
        maintenance round tells it of the switch (decision 11). The read waits for a switch
        being committed."""
        if batch.held:
            held = await self._store.held_sinks(conn, settled=True)
            released = self.set_held(held)
            for name in sorted(released | (batch.held - held)):
                await self._store.wake_sink(conn, name)

    def route(self, claim: Claim) -> Batch:
        """Group the batch by sink: sinks delivered directly, sinks writing in the settle
        transaction. Held sinks, and sinks an earlier event of the key has not reached, wait
        without a call; the latter are noted as passing on an event that does not go to them,
        for the later events of its key (decision 11)."""
        batch = Batch(claim, time.monotonic(), {row.id: {} for row in claim.rows}, {}, {}, {})
        direct, in_transaction = batch.direct, batch.in_transaction
        for row in claim.rows:
            subscribed = self._router.sinks_for(row.topic)
            for sink_name, until in row.blocked.items():
                if sink_name not in subscribed:
                    batch.waits.setdefault(row.id, {})[sink_name] = until
            for sink_name in sinks_due(subscribed, row.deliveries, claim.now):
                if sink_name in self.held:
                    batch.waits.setdefault(row.id, {})[sink_name] = HELD_UNTIL
                    batch.held.add(sink_name)
                    continue
                if sink_name in row.blocked:
                    batch.waits.setdefault(row.id, {})[sink_name] = row.blocked[sink_name]
                    continue
                group = in_transaction if self._sinks[sink_name].transactional else direct
                group.setdefault(sink_name, []).append((row, _event_for(row, sink_name)))
        return batch

    async def deliver(self, batch: Batch) -> None:
        """Deliver to every directly called sink at once, each bounded by its own
        concurrency. First, the rate-limited sinks (transactional ones too) take their
        events' tokens; those not granted wait."""
        if self._limiter is not None:
            await self._take_tokens(self._limiter, batch)
        per_sink = batch.direct
        results = await asyncio.gather(
            *(self._deliver_to(name, items) for name, items in per_sink.items())
        )
        for (name, items), (errors, seconds) in zip(per_sink.items(), results, strict=True):
            await self._record(name, items, errors, batch.outcomes, seconds)

    async def deliver_in_transaction(self, conn: Connection, batch: Batch) -> None:
        """Have the transactional sinks write on ``conn``, inside the settle's transaction,
        each call (at most the sink's ``batch_size`` events) in a savepoint of its own. A lost
        connection ends the batch."""
        for name, items in batch.in_transaction.items():
            events = [event for _, event in items]
            started = time.monotonic()
            errors: list[BaseException | None] = []
            for chunk in self._chunks(name, events):
                try:
                    async with sink_savepoint(conn):  # a failing call writes nothing
                        errors.extend(await self._sinks[name].deliver_in_transaction(conn, chunk))
                except DatabaseUnavailable:
                    raise
                except Exception as error:
                    errors.extend([error] * len(chunk))
            await self._record(name, items, errors, batch.outcomes, time.monotonic() - started)

    def _chunks(self, sink_name: str, events: list[Event]) -> list[list[Event]]:
        """``events`` in calls of at most the sink's ``batch_size``."""
        size = self._batch_sizes.get(sink_name) or len(events) or 1
        return [events[first : first + size] for first in range(0, len(events), size)]

    async def _take_tokens(self, limiter: RateLimiter, batch: Batch) -> None:
        for group in (batch.direct, batch.in_transaction):
            for name in [name for name in group if limiter.limits(name)]:
                items = group[name]
                grant = await limiter.take(name, len(items))
                if grant.granted >= len(items):
                    continue
                waited = time.monotonic() - batch.started + grant.wait_seconds
                until = batch.claim.now + dt.timedelta(seconds=waited)
                for row, _ in items[grant.granted :]:
                    batch.waits.setdefault(row.id, {})[name] = until
                if grant.granted:
                    group[name] = items[: grant.granted]
                else:
                    del group[name]
                logger.debug(
                    "sink %s: %d of %d events wait for its rate limit",
                    name,
                    len(items) - grant.granted,
                    len(items),
                    extra={"sink": name},
                )

    def settlements(self, batch: Batch) -> list[tuple[ClaimedRow, Settlement]]:
        """What to write back for each event of ``batch``, as of now."""
        claim, outcomes = batch.claim, batch.outcomes
        now = claim.now + dt.timedelta(seconds=time.monotonic() - batch.started)
        # Events on their first claim settle alike when their sinks came to the same
        # outcomes (most often: every sink accepted) and wait alike: decided once per batch
        # and shared, a retry's backoff included (the batch's events that one sink refused
        # alike are retried together).
        first_try: dict[tuple[object, ...], Settlement] = {}
        freed: set[tuple[str | None, str]] = set()  # (key, sink) reached in this batch
        settled = []
        for row in claim.rows:
            attempted = outcomes[row.id]
            waits = self._current(batch.waits.get(row.id, _NO_WAITS), now)
            if freed and any((row.key, sink) in freed for sink in waits):
                waits = {s: now if (row.key, s) in freed else u for s, u in waits.items()}
            if row.deliveries or row.errors:
                own = self._settlement(row, attempted, waits, now)
                if row.key is not None:
                    freed.update((row.key, sink) for sink in own.freed)
                settled.append((row, own))
                continue
            alike = (
                self._router.sinks_for(row.topic),
                tuple(attempted.items()),
                tuple(waits.items()),
                tuple(row.blocked),
            )
            settlement = first_try.get(alike)
            if settlement is None:
                settlement = first_try[alike] = self._settlement(row, attempted, waits, now)
            settled.append((row, settlement))
        return settled

    def _current(self, waits: dict[str, dt.datetime], now: dt.datetime) -> dict[str, dt.datetime]:
        if not waits or not self._released:
            return waits
        return {
            sink: now if until == HELD_UNTIL and sink in self._released else until
            for sink, until in waits.items()
        }

    async def aclose(self) -> None:
        """Close every sink; one failing to close does not keep the others open."""
        await asyncio.gather(
            *(sink.aclose() for sink in self._sinks.values()), return_exceptions=True
        )
        if self._limiter is not None:
            await self._limiter.aclose()

    def _settlement(
        self,
        row: ClaimedRow,
        outcomes: dict[str, Outcome],
        waits: dict[str, dt.datetime],
        now: dt.datetime,
    ) -> Settlement:
        return settle_event(
            subscribed=self._router.sinks_for(row.topic),
            deliveries=row.deliveries,
            errors=row.errors,
            outcomes=outcomes,
            now=now,
            policy=self._retry,
            waits=waits,
            policies=self._policies,
            blocked=row.blocked,
        )

    async def _record(
        self,
        sink_name: str,
        items: list[tuple[ClaimedRow, Event]],
        errors: Sequence[BaseException | None],
        outcomes: dict[int, dict[str, Outcome]],
        seconds: float,
    ) -> None:
        for (row, _), error in zip(items, errors, strict=True):
            outcome = outcomes[row.id][sink_name] = classify(error)
            self._observer.delivered(row.topic, sink_name, outcome.ok, outcome.permanent, seconds)
            if isinstance(error, SinkGone) and sink_name not in self.held:
                await self._disable(sink_name, outcome.error or "gone")
        self._stats.deliveries += len(items)

    async def _disable(self, sink_name: str, reason: str) -> None:
        self.held.add(sink_name)
        logger.warning("sink %s disabled: %s", sink_name, reason, extra={"sink": sink_name})
        async with self._connector.connection() as conn:
            await self._store.disable_sink(conn, sink_name, reason)

    async def _deliver_to(
        self, sink_name: str, items: list[tuple[ClaimedRow, Event]]
    ) -> tuple[list[BaseException | None], float]:
        """The sink's results for ``items``, and how long it took: in calls of at most its
        ``batch_size`` events, one after another, within one ``delivery_timeout``."""
        started = time.monotonic()
        errors: list[BaseException | None] = []
        for number, chunk in enumerate(self._chunks(sink_name, [event for _, event in items])):
            spent = time.monotonic() - started if number else 0.0
            if spent >= self._delivery_timeout:
                late = RetryableError(f"delivery timed out after {self._delivery_timeout:g}s")
                errors.extend([late] * len(chunk))
                continue
            errors.extend(await self._call_sink(sink_name, chunk, spent))
        return errors, time.monotonic() - started

    async def _call_sink(
        self, sink_name: str, events: list[Event], spent: float = 0.0
    ) -> list[BaseException | None]:
        timeout = self._backstop - spent
        try:
            async with asyncio.timeout(timeout):
                errors = await self._sinks[sink_name].deliver_batch(
                    events, timeout=self._delivery_timeout - spent
                )
        except TimeoutError:
            return [RetryableError(f"delivery timed out after {timeout:g}s")] * len(events)
        except Exception as error:
            logger.exception("sink %s raised from deliver_batch", sink_name)
            return [error] * len(events)
        if len(errors) != len(events):
            failure = RetryableError(
                f"sink returned {len(errors)} results for {len(events)} events"
            )
            return [failure] * len(events)
        return errors


def _event_for(row: ClaimedRow, sink_name: str) -> Event:
    state = row.deliveries.get(sink_name) or {}
    return Event(
        id=row.id,
        topic=row.topic,
        payload=row.payload,
        key=row.key,
        headers=row.headers,
        created_at=row.created_at,
        attempt=int(state.get("attempts", 0)) + 1,
    )
