"""The relay: claim a batch, route it to the subscribed sinks, deliver it, settle it, repeat.

Any number of relays may run against one table; they share work through
``FOR UPDATE SKIP LOCKED`` and need nothing else. A relay wakes on NOTIFY (with a poll
interval as the fallback, or polls only), recovers rows whose lease expired, deletes old
``done`` rows, and rides out database restarts, and any error the server sends, by
reconnecting with backoff (``--drain`` and ``--once`` give up after ``give_up_after``).

This module is the loop. Its parts have modules of their own: the two claim modes
(``outbox.claims``), routing and delivering a batch (``outbox.fanout``), waking on NOTIFY
(``outbox.listener``), lease recovery and retention (``outbox.maintenance``), and the
statements (``outbox.store``, the one place driver errors become ours).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Literal

from outbox._urls import libpq_url
from outbox.claims import (
    ClaimContext,
    ClaimStrategy,
    CutOff,
    LeaseStrategy,
    LockStrategy,
    Settled,
)
from outbox.exceptions import DatabaseError, DatabaseUnavailable
from outbox.fanout import FanOut, SinkLimits
from outbox.listener import Listener
from outbox.maintenance import Maintenance
from outbox.migrate import check_migrated
from outbox.observer import RelayObserver, RelayStats
from outbox.reconnects import Reconnects
from outbox.records import Claim, ClaimedRow, Settlement
from outbox.retry import FAILED, RETRYING, Outcome, RetryPolicy
from outbox.routing import Router, Subscription
from outbox.sinks import Sink
from outbox.store import Connection, Connector, Store, close_quietly, describe

__all__ = [
    "CLAIM_MODES",
    "ClaimMode",
    "Relay",
    "RelayObserver",
    "RelayOptions",
    "RelayStats",
    "default_relay_name",
]

logger = logging.getLogger(__name__)

_FIRST_RECHECK = 0.01

ClaimMode = Literal["lease", "lock"]
CLAIM_MODES: tuple[ClaimMode, ...] = ("lease", "lock")
_STRATEGIES: dict[ClaimMode, type[ClaimStrategy]] = {"lease": LeaseStrategy, "lock": LockStrategy}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RelayOptions:
    """How a relay runs, as plain values. :func:`outbox.runtime.relay_options` builds them
    from the settings, which hold every default and check every value
    (``config/outbox.toml`` documents them)."""

    schema: str
    channel: str
    batch_size: int
    concurrency: int
    lease_seconds: float
    delivery_timeout: float
    poll_interval: float
    listen: bool
    retry: RetryPolicy
    retention_seconds: float
    retention_batch: int
    maintenance_interval: float
    name: str
    """The relay's name in leases and ``pg_stat_activity``; empty: host, pid and a suffix."""
    claim_mode: ClaimMode
    """``"lease"``: a claim marks rows ``processing`` under a lease and commits; the settle
    is a second write. ``"lock"``: a batch is one transaction, its row locks the lease, one
    write per event; for sinks that answer in milliseconds (docs/decisions/0007)."""
    give_up_after: float
    """With ``drain`` or ``once``: seconds without a batch going through (the database
    unreachable, or failing every statement) before :meth:`Relay.run` raises
    :class:`DatabaseUnavailable`. A relay run for ever keeps trying for ever."""
    shutdown_timeout: float
    """Seconds after :meth:`Relay.stop` that batches in flight have to finish; then their
    deliveries are cancelled and their rows handed back (lease: released, lock: rolled
    back), and :meth:`Relay.run` returns."""
    sinks: Mapping[str, SinkLimits] = dataclasses.field(default_factory=dict)
    """Sinks with settings of their own (``[sinks.NAME]``); the others use the relay's."""


def default_relay_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Relay:
    """Moves events from the outbox table to sinks. Build it, then ``await relay.run()``."""

    def __init__(
        self,
        database_url: str,
        sinks: Mapping[str, Sink],
        subscriptions: Sequence[Subscription],
        options: RelayOptions,
        *,
        observer: RelayObserver | None = None,
    ) -> None:
        self.options = options
        self.observer = observer or RelayObserver()
        self.name = options.name or default_relay_name()
        self.stats = RelayStats()
        self._router = Router(subscriptions)
        self._store = Store(options.schema)
        self._connector = Connector(libpq_url(database_url), self.name)
        self._fanout = FanOut(
            sinks,
            self._router,
            self._store,
            self._connector,
            options=options,
            observer=self.observer,
            stats=self.stats,
        )
        self._strategy = _STRATEGIES[options.claim_mode]
        self._claims = ClaimContext(
            self._store, self._fanout, self._connector, options.batch_size, options.lease_seconds
        )
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._listener = Listener(
            self._store,
            self._connector,
            channel=options.channel,
            poll_interval=options.poll_interval,
            wake=self._wake,
            stopping=self._stopping,
            sinks_changed=lambda: self._maintenance.poke(),
        )
        self._maintenance = Maintenance(
            self._store,
            self._connector,
            interval=options.maintenance_interval,
            retry=options.retry,
            lease_seconds=options.lease_seconds,
            retention_seconds=options.retention_seconds,
            retention_batch=options.retention_batch,
            observer=self.observer,
            stats=self.stats,
            held_sinks=self._fanout.set_held,
            suspects_waiting=self._claims.gate.suspects_waiting,
            sink_names=tuple(sinks),
            wake=self._wake,
            stopping=self._stopping,
        )
        self._recheck = _FIRST_RECHECK
        self._gave_up: DatabaseUnavailable | None = None

    @property
    def listening(self) -> bool:
        """True while the LISTEN connection is up."""
        return self._listener.listening

    def readiness_problems(self) -> list[str]:
        """Why the relay is not ready; empty when it is (the database answered recently and,
        unless polling only, the listener is connected)."""
        problems = []
        seen = self._maintenance.database_seen
        stale_after = 3 * self.options.maintenance_interval + 5
        if seen is None or time.monotonic() - seen > stale_after:
            problems.append("database not reached recently")
        if self.options.listen and not self.listening:
            problems.append("listener not connected")
        return problems

    def stop(self) -> None:
        """Stop claiming; batches in flight finish and settle (or, after
        ``shutdown_timeout``, are handed back), then :meth:`run` returns."""
        self._stopping.set()
        self._wake.set()

    async def run(self, *, once: bool = False, drain: bool = False) -> RelayStats:
        """Run until :meth:`stop`; with ``drain`` until nothing is due, with ``once`` for one
        batch. Returns the counters. With ``drain`` or ``once``, raises
        :class:`DatabaseUnavailable` after ``give_up_after`` seconds without progress."""
        self.stats.track_waiting = drain or once
        logger.info("relay %s starting", self.name, extra={"relay": self.name})
        await self._load_held_sinks()
        background = []
        if self.options.listen and not once:
            background.append(asyncio.create_task(self._listener.run(), name="outbox-listen"))
        if not once:
            background.append(asyncio.create_task(self._maintenance.run(), name="outbox-maintain"))
        background.append(asyncio.create_task(self._cut_off_when_late(), name="outbox-cut-off"))
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
            await self._claims.journal.aclose()
            await self._fanout.aclose()
        if self._gave_up is not None:
            raise self._gave_up
        logger.info("relay %s stopped: %s", self.name, self.stats, extra={"relay": self.name})
        return self.stats

    async def _load_held_sinks(self) -> None:
        # Before the first claim: not one batch goes to a held sink (if the database fails
        # now, a worker reads them on connecting). Missing tables raise MigrationError here.
        with contextlib.suppress(DatabaseError):
            async with self._connector.connection() as conn:
                await check_migrated(conn, self.options.schema)
                await self._fanout.read_held(conn)

    # -- the loop ------------------------------------------------------------------------

    async def _work(self, *, once: bool, drain: bool) -> None:
        conn: Connection | None = None
        reconnects = Reconnects(self.options.give_up_after if once or drain else None)
        step = "connect"
        try:
            while not self._stopping.is_set():
                try:
                    if conn is None or conn.closed:
                        step = "connect"
                        conn = await self._connector.connect()
                        await self._strategy.prepare(self._claims, conn)
                        await self._fanout.read_held(conn)
                    # Cleared before the claim, not before the wait: a NOTIFY that lands
                    # after this claim's snapshot must still cut the next wait short.
                    self._wake.clear()
                    step = "batch"
                    claimed = await self._run_batch(conn)
                    reconnects.succeeded()
                    if once:
                        return
                    if claimed:
                        self._recheck = _FIRST_RECHECK
                        continue
                    step = "wait"
                    if drain and not await self._store.has_outstanding(conn):
                        return
                    await self._idle(conn, drain=drain)
                except CutOff:  # stopping, and shutdown_timeout passed: rows handed back
                    return
                except DatabaseError as error:  # whatever the server sent: reconnect
                    await close_quietly(conn)
                    conn = None
                    await self._sleep_before_reconnect(reconnects, step, error)
        finally:
            await close_quietly(conn)

    async def _run_batch(self, conn: Connection) -> int:
        """Claim, route, deliver and settle one batch, in the claim mode's way; then count
        and log what was settled. Returns how many events were claimed."""
        async with (
            self._claims.gate.turn() as turn,
            self._strategy(self._claims, conn) as strategy,
        ):
            claim = await strategy.claim(take_suspect=turn.may_take_suspect)
            await turn.claimed(claim.suspect)
            if not claim.rows:
                return 0
            self._claimed(claim)
            batch = self._fanout.route(claim)
            await strategy.deliver(batch)
            settled = await strategy.settle(batch)
        await self._fanout.wake_if_switched_on(conn, batch)
        self._report(settled, batch.outcomes)
        self._wake.set()  # a settled keyed event may unblock the next one of its key
        return len(claim.rows)

    def _claimed(self, claim: Claim) -> None:
        self.stats.batches += 1
        self.stats.claimed += len(claim.rows)
        self.observer.claimed(len(claim.rows))
        logger.debug("claimed %d events", len(claim.rows), extra={"relay": self.name})

    def _report(self, settled: Settled, outcomes: dict[int, dict[str, Outcome]]) -> None:
        """Count and log a committed settle."""
        kept = settled.kept
        track_waiting = self.stats.track_waiting  # a draining relay's summary only
        for row, settlement in settled.rows:
            if row.id not in kept:
                self.stats.leases_lost += 1
                self.observer.lease_lost()
                _log_event(logging.WARNING, "lease lost, result discarded", row, relay=self.name)
                continue
            self.observer.event_settled(row.topic, settlement)
            if track_waiting:
                self.stats.settled(row.id, settlement.status)
            _count_and_log(self.stats, row, settlement, outcomes[row.id])

    # -- waiting -------------------------------------------------------------------------

    async def _cut_off_when_late(self) -> None:
        await self._stopping.wait()
        await asyncio.sleep(self.options.shutdown_timeout)
        logger.warning("shutdown_timeout passed: handing back the batches in flight")
        self._claims.cut_off()

    async def _idle(self, conn: Connection, *, drain: bool = False) -> None:
        if self._stopping.is_set():  # stop() came before this round cleared the wake-up
            return
        timeout = self.options.poll_interval
        next_due, waiting = await self._store.next_due(conn)
        if next_due is not None:
            timeout = min(timeout, next_due)
        if waiting or drain:
            # Due rows that could not be claimed wait on a running transaction or an earlier
            # event of their key; a draining relay waits for rows another relay has in
            # flight. Nothing notifies when those end, so look again soon, less often the
            # longer it lasts.
            timeout = min(timeout, self._recheck)
            self._recheck = min(self._recheck * 2, self.options.poll_interval)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    async def _sleep_before_reconnect(
        self, reconnects: Reconnects, step: str, error: DatabaseError
    ) -> None:
        try:
            delay = reconnects.failed(error)
        except DatabaseUnavailable as gave_up:  # only with drain or once
            self._gave_up = self._gave_up or gave_up
            self.stop()
            return
        logger.warning(
            "%s failed (%s); reconnecting in %.1fs",
            step,
            describe(error),
            delay,
            extra={"relay": self.name, "step": step},
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._stopping.wait()


def _count_and_log(
    stats: RelayStats, row: ClaimedRow, settlement: Settlement, attempted: dict[str, Outcome]
) -> None:
    if settlement.status == "done":
        stats.done += 1
        _log_event(logging.DEBUG, "delivered", row)  # at INFO: the maintenance summary
    elif settlement.status == "failed":
        stats.failed += 1
        _log_event(logging.WARNING, "failed: %s", row, settlement.last_error)
        if row.key is not None:
            _log_event(logging.WARNING, "key parked until the failed event is retried", row)
    else:
        stats.retried += 1
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


def _log_event(
    level: int, message: str, row: ClaimedRow, *args: object, relay: str | None = None
) -> None:
    if logger.isEnabledFor(level):
        extra = {"event_id": row.id, "topic": row.topic, "key": row.key, "attempt": row.attempts}
        if relay:
            extra["relay"] = relay
        logger.log(level, "event %d (%s): " + message, row.id, row.topic, *args, extra=extra)
