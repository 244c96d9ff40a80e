"""The relay: claim a batch, fan it out to the subscribed sinks, settle it, repeat.

Any number of relays may run against one table; they share work through
``FOR UPDATE SKIP LOCKED`` and need nothing else. A relay wakes on NOTIFY (with a poll
interval as the fallback, or polls only), recovers rows whose lease expired, deletes old
``done`` rows, and rides out database restarts by reconnecting with backoff.

Two claim modes share one table. ``lease`` (the default): a claim commits the rows as
``processing`` under a lease, sinks are called outside any transaction, and a settle writes
the result. ``lock``: one transaction per batch, whose row locks are the lease, and a single
write per event at settle (docs/decisions/0007-claim-mode-lock.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Literal

import psycopg

from outbox._urls import libpq_url
from outbox.exceptions import MigrationError, RetryableError, SinkGone
from outbox.retry import (
    FAILED,
    RETRYING,
    SUCCESS,
    Outcome,
    RetryPolicy,
    Settlement,
    classify,
    settle_event,
    sinks_due,
)
from outbox.routing import Router, Subscription
from outbox.sinks import Event, Sink
from outbox.store import (
    Claim,
    ClaimedRow,
    Connection,
    Store,
    listen_statement,
    relay_application_name,
)

logger = logging.getLogger(__name__)

_RECONNECT_FIRST = 0.1
_FIRST_RECHECK = 0.01
_SETTLE_RETRIES = 4
_RECONNECT_CAP = 10.0

ClaimMode = Literal["lease", "lock"]
CLAIM_MODES: tuple[ClaimMode, ...] = ("lease", "lock")


@dataclasses.dataclass(frozen=True)
class RelayOptions:
    """How a relay runs. Defaults are documented in ``config/outbox.toml``."""

    schema: str = "public"
    channel: str = "outbox"
    batch_size: int = 100
    concurrency: int = 1
    lease_seconds: float = 60.0
    delivery_timeout: float = 30.0
    poll_interval: float = 1.0
    listen: bool = True
    retry: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    retention_seconds: float = 7 * 24 * 3600.0
    retention_batch: int = 1000
    maintenance_interval: float = 5.0
    name: str = ""
    claim_mode: ClaimMode = "lease"
    """``"lease"``: a claim marks rows ``processing`` under a lease and commits; the settle
    is a second write. ``"lock"``: a batch is one transaction, its row locks the lease, one
    write per event; for sinks that answer in milliseconds (docs/decisions/0007)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.concurrency < 1:
            raise ValueError("batch_size and concurrency must be at least 1")
        if self.claim_mode not in CLAIM_MODES:
            raise ValueError(f"claim_mode must be one of {', '.join(CLAIM_MODES)}")
        if not 0 < self.delivery_timeout < self.lease_seconds:
            raise ValueError("delivery_timeout must be positive and shorter than lease_seconds")
        if self.poll_interval <= 0:
            raise ValueError("poll_interval must be positive")


@dataclasses.dataclass
class RelayStats:
    """Counters since the relay started."""

    batches: int = 0
    claimed: int = 0
    done: int = 0
    retried: int = 0
    failed: int = 0
    deliveries: int = 0
    leases_lost: int = 0


_Deliveries = dict[str, list[tuple[ClaimedRow, Event]]]
_Settled = tuple[list[tuple[ClaimedRow, Settlement]], set[int]]


class RelayObserver:
    """Receives the relay's measurements (for metrics); every method defaults to nothing."""

    wants_backlog = False
    """True to have :meth:`backlog` called each maintenance round (one extra query)."""

    def claimed(self, count: int) -> None:
        """A batch of ``count`` events was claimed."""

    def delivered(self, topic: str, sink: str, ok: bool, permanent: bool, seconds: float) -> None:
        """One delivery attempt ended; ``seconds`` is the sink's time for its whole batch."""

    def settled(self, status: str) -> None:
        """An event was settled to ``status`` (done, pending, failed)."""

    def lease_lost(self) -> None:
        """A settle found its lease taken over: the result was discarded."""

    def backlog(self, pending: int, lag_seconds: float) -> None:
        """Events pending, and the age of the oldest one due."""


def default_relay_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Relay:
    """Moves events from the outbox table to sinks. Build it, then ``await relay.run()``."""

    def __init__(
        self,
        database_url: str,
        sinks: Mapping[str, Sink],
        subscriptions: Sequence[Subscription],
        options: RelayOptions | None = None,
        *,
        observer: RelayObserver | None = None,
    ) -> None:
        self.options = options or RelayOptions()
        self.observer = observer or RelayObserver()
        self.name = self.options.name or default_relay_name()
        self.stats = RelayStats()
        self._url = libpq_url(database_url)
        self._sinks = dict(sinks)
        for sink in self._sinks.values():
            if sink.delivery_timeout is None:
                sink.delivery_timeout = self.options.delivery_timeout
        self._router = Router(subscriptions)
        missing = [name for name in self._router.sink_names if name not in self._sinks]
        if missing:
            raise ValueError(f"subscriptions name sinks that do not exist: {', '.join(missing)}")
        self._store = Store(self.options.schema)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._disabled: set[str] = set()
        self._listening = False
        self._database_seen: float | None = None
        self._recheck = _FIRST_RECHECK

    @property
    def listening(self) -> bool:
        """True while the LISTEN connection is up."""
        return self._listening

    def readiness_problems(self) -> list[str]:
        """Why the relay is not ready; empty when it is (the database answered recently and,
        unless polling only, the listener is connected)."""
        problems = []
        stale_after = 3 * self.options.maintenance_interval + 5
        if self._database_seen is None or time.monotonic() - self._database_seen > stale_after:
            problems.append("database not reached recently")
        if self.options.listen and not self._listening:
            problems.append("listener not connected")
        return problems

    def stop(self) -> None:
        """Stop claiming; batches in flight finish and settle, then :meth:`run` returns."""
        self._stopping.set()
        self._wake.set()

    async def run(self, *, once: bool = False, drain: bool = False) -> RelayStats:
        """Run until :meth:`stop`; with ``drain`` until nothing is due, with ``once`` for one
        batch. Returns the counters."""
        logger.info("relay %s starting", self.name, extra={"relay": self.name})
        await self._load_disabled_sinks()
        background = []
        if self.options.listen and not once:
            background.append(asyncio.create_task(self._listen(), name="outbox-listen"))
        if not once:
            background.append(asyncio.create_task(self._maintain(), name="outbox-maintain"))
        workers = 1 if once else self.options.concurrency
        try:
            async with asyncio.TaskGroup() as group:
                for number in range(workers):
                    group.create_task(
                        self._work(once=once, drain=drain), name=f"outbox-worker-{number}"
                    )
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await asyncio.gather(
                *(sink.aclose() for sink in self._sinks.values()), return_exceptions=True
            )
        logger.info("relay %s stopped: %s", self.name, self.stats, extra={"relay": self.name})
        return self.stats

    async def _load_disabled_sinks(self) -> None:
        # Before the first claim, so that not even one batch goes to a disabled sink; if the
        # database is down now, the maintenance round loads them once it is back.
        try:
            async with await self._connect() as conn:
                self._disabled = await self._store.disabled_sinks(conn)
        except psycopg.OperationalError:
            pass
        except psycopg.errors.UndefinedTable as error:
            raise MigrationError(
                f"the outbox tables are missing from schema {self.options.schema!r}: "
                "run `outbox migrate` first"
            ) from error

    # -- the loop ------------------------------------------------------------------------

    async def _work(self, *, once: bool, drain: bool) -> None:
        conn: Connection | None = None
        failures = 0
        try:
            while not self._stopping.is_set():
                try:
                    if conn is None or conn.closed:
                        conn = await self._connect()
                    # Cleared before the claim, not before the wait: a NOTIFY that lands
                    # after this claim's snapshot must still cut the next wait short.
                    self._wake.clear()
                    claimed = await self._run_batch(conn)
                    failures = 0
                    if once:
                        return
                    if claimed:
                        self._recheck = _FIRST_RECHECK
                        continue
                    if drain and not await self._store.has_outstanding(conn):
                        return
                    await self._idle(conn)
                except psycopg.OperationalError as error:
                    failures += 1
                    await _close_quietly(conn)
                    conn = None
                    await self._sleep_before_reconnect(failures, error)
        finally:
            await _close_quietly(conn)

    async def _run_batch(self, conn: Connection) -> int:
        if self.options.claim_mode == "lock":
            return await self._run_locked_batch(conn)
        claim = await self._store.claim(
            conn,
            limit=self.options.batch_size,
            relay=self.name,
            lease_seconds=self.options.lease_seconds,
        )
        if not claim.rows:
            return 0
        self._claimed(claim)
        started = time.monotonic()
        outcomes: dict[int, dict[str, Outcome]] = {row.id: {} for row in claim.rows}
        direct, in_transaction = self._plan(claim, outcomes)
        try:
            await self._deliver(direct, outcomes)
        except asyncio.CancelledError:
            await asyncio.shield(self._release(conn, claim.rows))
            raise
        if in_transaction:
            # The sink's writes and the settle commit together: exactly once for that sink.
            async with conn.transaction():
                await self._deliver_in_transaction(conn, in_transaction, outcomes)
                settled = await self._settle(conn, claim, outcomes, started, may_reconnect=False)
        else:
            settled = await self._settle(conn, claim, outcomes, started, may_reconnect=True)
        self._report(settled, outcomes)
        self._wake.set()  # a settled keyed event may unblock the next one of its key
        return len(claim.rows)

    async def _run_locked_batch(self, conn: Connection) -> int:
        """Claim mode "lock": claim, deliver and settle in one transaction, whose row locks
        are the lease. A rollback (cancelled, connection lost) hands the rows back with no
        attempt counted, and what was delivered goes out again: at least once."""
        claimed = 0
        try:
            async with conn.transaction():
                claim = await self._store.claim_locked(conn, limit=self.options.batch_size)
                claimed = len(claim.rows)
                if not claimed:
                    return 0
                self._claimed(claim)
                started = time.monotonic()
                outcomes: dict[int, dict[str, Outcome]] = {row.id: {} for row in claim.rows}
                direct, in_transaction = self._plan(claim, outcomes)
                await self._deliver(direct, outcomes)
                await self._deliver_in_transaction(conn, in_transaction, outcomes)
                settled = await self._settle(conn, claim, outcomes, started, may_reconnect=False)
        except asyncio.CancelledError:
            if claimed:
                logger.info("rolled back %d events in flight", claimed, extra={"relay": self.name})
            raise
        except psycopg.OperationalError as error:
            # Not settled on a new connection, unlike lease mode: the locks went with this
            # one, and another relay may hold the rows by now.
            if claimed:
                logger.warning(
                    "connection lost before a batch of %d events committed (%s): "
                    "they are pending again and will be delivered again",
                    claimed,
                    error,
                    extra={"relay": self.name},
                )
            raise
        self._report(settled, outcomes)
        self._wake.set()  # a settled keyed event may unblock the next one of its key
        return claimed

    def _claimed(self, claim: Claim) -> None:
        self.stats.batches += 1
        self.stats.claimed += len(claim.rows)
        self.observer.claimed(len(claim.rows))
        logger.debug("claimed %d events", len(claim.rows), extra={"relay": self.name})

    def _plan(
        self, claim: Claim, outcomes: dict[int, dict[str, Outcome]]
    ) -> tuple[_Deliveries, _Deliveries]:
        """Group the batch by sink: sinks delivered directly, sinks writing in the settle
        transaction. Disabled sinks fail at once, without a call."""
        direct: _Deliveries = {}
        in_transaction: _Deliveries = {}
        for row in claim.rows:
            for sink_name in sinks_due(
                self._router.sinks_for(row.topic), row.deliveries, claim.now
            ):
                if sink_name in self._disabled:
                    outcomes[row.id][sink_name] = Outcome(
                        ok=False, permanent=True, error=f"sink {sink_name} is disabled"
                    )
                    continue
                group = in_transaction if self._sinks[sink_name].transactional else direct
                group.setdefault(sink_name, []).append((row, _event_for(row, sink_name)))
        return direct, in_transaction

    def _settlements(
        self, claim: Claim, outcomes: dict[int, dict[str, Outcome]], now: dt.datetime
    ) -> list[tuple[ClaimedRow, Settlement]]:
        # Events on their first claim that every sink accepted (most of them) settle alike
        # for a given set of sinks, with no randomness: decided once per batch and shared.
        first_try: dict[tuple[tuple[str, ...], tuple[str, ...]], Settlement] = {}
        settled = []
        for row in claim.rows:
            attempted = outcomes[row.id]
            if row.deliveries or row.errors or any(o is not SUCCESS for o in attempted.values()):
                settled.append((row, self._settlement(row, attempted, now)))
                continue
            sinks = (self._router.sinks_for(row.topic), tuple(attempted))
            settlement = first_try.get(sinks)
            if settlement is None:
                settlement = first_try[sinks] = self._settlement(row, attempted, now)
            settled.append((row, settlement))
        return settled

    def _settlement(
        self, row: ClaimedRow, outcomes: dict[str, Outcome], now: dt.datetime
    ) -> Settlement:
        return settle_event(
            subscribed=self._router.sinks_for(row.topic),
            deliveries=row.deliveries,
            errors=row.errors,
            outcomes=outcomes,
            now=now,
            policy=self.options.retry,
        )

    async def _deliver(
        self, per_sink: _Deliveries, outcomes: dict[int, dict[str, Outcome]]
    ) -> None:
        """Deliver to every sink at once, each bounded by its own concurrency."""
        results = await asyncio.gather(
            *(self._deliver_to(name, items) for name, items in per_sink.items())
        )
        for (name, items), (errors, seconds) in zip(per_sink.items(), results, strict=True):
            await self._record(name, items, errors, outcomes, seconds)

    async def _deliver_in_transaction(
        self, conn: Connection, per_sink: _Deliveries, outcomes: dict[int, dict[str, Outcome]]
    ) -> None:
        for name, items in per_sink.items():
            events = [event for _, event in items]
            started = time.monotonic()
            try:
                async with conn.transaction():  # a savepoint: a failing sink writes nothing
                    errors = await self._sinks[name].deliver_in_transaction(conn, events)
            except psycopg.OperationalError:
                raise
            except Exception as error:
                errors = [error] * len(events)
            await self._record(name, items, errors, outcomes, time.monotonic() - started)

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
            self.observer.delivered(row.topic, sink_name, outcome.ok, outcome.permanent, seconds)
            if isinstance(error, SinkGone) and sink_name not in self._disabled:
                await self._disable(sink_name, outcome.error or "gone")
        self.stats.deliveries += len(items)

    async def _disable(self, sink_name: str, reason: str) -> None:
        self._disabled.add(sink_name)
        logger.warning("sink %s disabled: %s", sink_name, reason, extra={"sink": sink_name})
        conn = await self._connect()
        async with conn:
            await self._store.disable_sink(conn, sink_name, reason)

    async def _deliver_to(
        self, sink_name: str, items: list[tuple[ClaimedRow, Event]]
    ) -> tuple[list[BaseException | None], float]:
        """The sink's results for ``items``, and how long it took."""
        started = time.monotonic()
        errors = await self._call_sink(sink_name, [event for _, event in items])
        return errors, time.monotonic() - started

    async def _call_sink(self, sink_name: str, events: list[Event]) -> list[BaseException | None]:
        # Sinks time out their own slow events; this is the backstop for one that does not,
        # still inside the lease.
        timeout = (self.options.delivery_timeout + self.options.lease_seconds) / 2
        try:
            async with asyncio.timeout(timeout):
                errors = await self._sinks[sink_name].deliver_batch(events)
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

    async def _settle(
        self,
        conn: Connection,
        claim: Claim,
        outcomes: dict[int, dict[str, Outcome]],
        started: float,
        *,
        may_reconnect: bool,
    ) -> _Settled:
        """Write the batch's results back; return them, and which rows took them."""
        now = claim.now + dt.timedelta(seconds=time.monotonic() - started)
        settled = self._settlements(claim, outcomes, now)
        if self.options.claim_mode == "lock":
            return settled, await self._store.settle_locked(conn, settled)
        try:
            kept = await self._store.settle(conn, settled)
        except psycopg.OperationalError:
            if not may_reconnect:
                raise
            # The deliveries happened: write them back on a new connection rather than let
            # the leases expire and the events go out again.
            kept = await self._settle_on_new_connection(settled)
        return settled, kept

    def _report(self, settled: _Settled, outcomes: dict[int, dict[str, Outcome]]) -> None:
        """Count and log a committed settle."""
        rows, kept = settled
        for row, settlement in rows:
            if row.id not in kept:
                self.stats.leases_lost += 1
                self.observer.lease_lost()
                _log_event(logging.WARNING, "lease lost, result discarded", row, relay=self.name)
                continue
            self.observer.settled(settlement.status)
            self._count_and_log(row, settlement, outcomes[row.id])

    async def _settle_on_new_connection(
        self, settled: list[tuple[ClaimedRow, Settlement]]
    ) -> set[int]:
        for attempt in range(1, _SETTLE_RETRIES + 1):
            await asyncio.sleep(_reconnect_delay(attempt))
            try:
                async with await self._connect() as conn:
                    return await self._store.settle(conn, settled)
            except psycopg.OperationalError as error:
                if attempt == _SETTLE_RETRIES:
                    raise
                logger.warning("settle failed (%s); retrying on a new connection", error)
        raise AssertionError("unreachable")

    def _count_and_log(
        self, row: ClaimedRow, settlement: Settlement, attempted: dict[str, Outcome]
    ) -> None:
        if settlement.status == "done":
            self.stats.done += 1
            _log_event(logging.INFO, "delivered", row)
        elif settlement.status == "failed":
            self.stats.failed += 1
            _log_event(logging.WARNING, "failed: %s", row, settlement.last_error)
            if row.key is not None:
                _log_event(logging.WARNING, "key parked until the failed event is retried", row)
        else:
            self.stats.retried += 1
            for sink_name in attempted:
                state = settlement.deliveries[sink_name]
                if state["status"] == RETRYING:
                    _log_event(
                        logging.INFO,
                        "retry scheduled for sink %s at %s: %s",
                        row,
                        sink_name,
                        state["not_before"],
                        state["last_error"],
                    )
                elif state["status"] == FAILED:
                    _log_event(
                        logging.WARNING, "sink %s failed: %s", row, sink_name, state["last_error"]
                    )

    async def _release(self, conn: Connection, rows: list[ClaimedRow]) -> None:
        with contextlib.suppress(psycopg.Error):
            await self._store.release(conn, rows)
            logger.info("released %d events in flight", len(rows), extra={"relay": self.name})

    # -- waiting, listening, upkeep ------------------------------------------------------

    async def _idle(self, conn: Connection) -> None:
        if self._stopping.is_set():  # stop() came before this round cleared the wake-up
            return
        timeout = self.options.poll_interval
        next_due, waiting = await self._store.next_due(conn)
        if next_due is not None:
            timeout = min(timeout, next_due)
        if waiting:
            # Due rows that could not be claimed wait on a running transaction or an earlier
            # event of their key; nothing notifies when those end, so look again soon, less
            # often the longer it lasts.
            timeout = min(timeout, self._recheck)
            self._recheck = min(self._recheck * 2, self.options.poll_interval)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    async def _listen(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            conn: psycopg.AsyncConnection[tuple[object, ...]] | None = None
            try:
                conn = await self._connect()
                await conn.execute(listen_statement(self.options.channel))
                self._listening, failures = True, 0
                logger.info("listening on channel %s", self.options.channel)
                self._wake.set()  # catch up on what was published while not listening
                await self._forward_notifications(conn)
            except psycopg.OperationalError as error:
                failures += 1
                logger.warning("listener connection lost: %s", error)
            finally:
                self._listening = False
                await _close_quietly(conn)
            await asyncio.sleep(_reconnect_delay(failures))

    async def _forward_notifications(
        self, conn: psycopg.AsyncConnection[tuple[object, ...]]
    ) -> None:
        while not self._stopping.is_set():
            async for _ in conn.notifies(timeout=self.options.poll_interval * 10):
                self._wake.set()
            await conn.execute("SELECT 1")  # a silent network failure shows up here

    async def _maintain(self) -> None:
        conn: Connection | None = None
        failures = 0
        try:
            while not self._stopping.is_set():
                try:
                    if conn is None or conn.closed:
                        conn = await self._connect()
                    self._disabled = await self._store.disabled_sinks(conn)
                    await self._recover(conn)
                    await self._purge(conn)
                    if self.observer.wants_backlog:
                        self.observer.backlog(*await self._store.backlog(conn))
                    self._database_seen = time.monotonic()
                    failures = 0
                except psycopg.OperationalError as error:
                    failures += 1
                    await _close_quietly(conn)
                    conn = None
                    logger.warning("maintenance connection lost: %s", error)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.options.maintenance_interval):
                        await self._stopping.wait()
        finally:  # run() cancels this task: close on the way out
            await _close_quietly(conn)

    async def _recover(self, conn: Connection) -> None:
        recovered = await self._store.recover_expired(
            conn, max_attempts=self.options.retry.max_attempts
        )
        for event_id, status in recovered:
            logger.warning(
                "lease expired for event %d: now %s",
                event_id,
                status,
                extra={"event_id": event_id, "relay": self.name},
            )
        if recovered:
            self._wake.set()

    async def _purge(self, conn: Connection) -> None:
        total = 0
        for _ in range(100):
            deleted = await self._store.purge_done(
                conn,
                keep_seconds=self.options.retention_seconds,
                limit=self.options.retention_batch,
            )
            total += deleted
            if deleted < self.options.retention_batch:
                break
        if total:
            logger.info("retention deleted %d done events", total)

    async def _connect(self) -> Connection:
        return await psycopg.AsyncConnection.connect(
            self._url, autocommit=True, application_name=relay_application_name(self.name)
        )

    async def _sleep_before_reconnect(self, failures: int, error: Exception) -> None:
        delay = _reconnect_delay(failures)
        logger.warning("database connection lost (%s); reconnecting in %.1fs", error, delay)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._stopping.wait()


def _reconnect_delay(failures: int) -> float:
    if failures <= 0:
        return 0.0
    base = min(_RECONNECT_CAP, _RECONNECT_FIRST * 2.0 ** (failures - 1))
    return base * random.uniform(0.5, 1.0)


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


def _log_event(
    level: int, message: str, row: ClaimedRow, *args: object, relay: str | None = None
) -> None:
    if logger.isEnabledFor(level):
        extra = {"event_id": row.id, "topic": row.topic, "key": row.key, "attempt": row.attempts}
        if relay:
            extra["relay"] = relay
        logger.log(level, "event %d (%s): " + message, row.id, row.topic, *args, extra=extra)


async def _close_quietly(conn: psycopg.AsyncConnection[tuple[object, ...]] | None) -> None:
    if conn is not None:
        with contextlib.suppress(Exception):
            await conn.close()
    return None
