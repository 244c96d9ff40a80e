"""Maintenance: what a relay does every ``maintenance_interval`` besides relaying.

Each round, on a connection of its own: reload which sinks are held (paused or disabled),
take back the rows of relays that died (an expired lease, a lock-mode batch left in
outbox_claims: outbox.suspects), delete ``done`` rows older than the retention a bounded
batch at a time, and, if the observer wants it, sample the figures ``outbox status`` shows
(the metrics). A round that reaches the database is what the relay's readiness reports.

Each round also logs, at INFO, a summary of what the relay did since the last one (events
delivered and per second, retried, failed, and the lag): a line per event is logged at
DEBUG only, since at INFO it cost a fifth of the throughput. A round with nothing delivered,
retried or failed, and no lag, logs nothing.

No error the server sends ends this task: a step that fails (a data error in retention, a
statement timeout in recovery) is logged with its name and the next steps still run, so
one failing duty never stops the others; after a failed round the connection is opened
again and the next round waits at least the interval, longer (with backoff) while the
failures last.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from outbox import sink_status
from outbox.exceptions import DatabaseError, DatabaseUnavailable
from outbox.observer import RelayObserver, RelayStats
from outbox.reconnects import Reconnects
from outbox.retry import RetryPolicy
from outbox.store import Connection, Connector, Store, close_quietly, describe

logger = logging.getLogger(__name__)

_PURGE_ROUNDS = 100
"""At most this many retention batches per round; what is left waits for the next one."""


class Maintenance:
    """Runs maintenance rounds until ``stopping`` is set (or the task is cancelled)."""

    def __init__(
        self,
        store: Store,
        connector: Connector,
        *,
        interval: float,
        retry: RetryPolicy,
        lease_seconds: float,
        retention_seconds: float,
        retention_batch: int,
        observer: RelayObserver,
        stats: RelayStats,
        held_sinks: Callable[[set[str]], set[str]],
        suspects_waiting: Callable[[], None],
        sink_names: Sequence[str] = (),
        wake: asyncio.Event,
        stopping: asyncio.Event,
    ) -> None:
        self._store = store
        self._connector = connector
        self._interval = interval
        self._retry = retry
        self._lease_seconds = lease_seconds
        # How long a lock-mode relay must have had no connection before its batches are
        # taken back as a dead relay's: the lease, up to 10 s (a relay only cut off
        # reconnects well within it).
        self._orphan_grace = min(lease_seconds, 10.0)
        self._wake_again: dict[str, float] = {}
        self._retention_seconds = retention_seconds
        self._retention_batch = retention_batch
        self._observer = observer
        self._stats = stats
        self._held_sinks = held_sinks
        self._suspects_waiting = suspects_waiting
        # The relay's sinks are sampled even before any event reaches them, as the status
        # lists every configured sink.
        self._sink_names: dict[str, str | None] = dict.fromkeys(sink_names)
        self._wake = wake
        self._stopping = stopping
        self._poked = asyncio.Event()
        self.database_seen: float | None = None
        """``time.monotonic()`` of the last round that reached the database."""
        self._summary = _Summary(stats, connector.relay)
        self._sampled_lag: tuple[int, float] | None = None

    async def run(self) -> None:
        conn: Connection | None = None
        reconnects = Reconnects()
        try:
            while not self._stopping.is_set():
                wait = self._interval
                try:
                    if conn is None or conn.closed:
                        conn = await self._connector.connect()
                    await self._round(conn)
                    reconnects.succeeded()
                except DatabaseError as error:
                    await close_quietly(conn)
                    conn = None
                    wait = max(wait, reconnects.failed(error))
                    if isinstance(error, DatabaseUnavailable):
                        self._log("connection", error)
                await self._pause(wait)
        finally:  # the relay cancels this task: close on the way out
            await close_quietly(conn)

    def poke(self) -> None:
        """Start the next round now (a sink was switched: read the switches)."""
        self._poked.set()

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds`` before the next round, less if stopping or poked."""
        stopping = asyncio.ensure_future(self._stopping.wait())
        poked = asyncio.ensure_future(self._poked.wait())
        try:
            await asyncio.wait([stopping, poked], timeout=seconds, return_when="FIRST_COMPLETED")
        finally:
            stopping.cancel()
            poked.cancel()
        self._poked.clear()

    async def _round(self, conn: Connection) -> None:
        """Every step, each on its own: a step's server error is logged and the next step
        runs; a lost connection ends the round. Raises the first error once all have run."""
        steps: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("held sinks", lambda: self._load_held(conn)),
            ("lease recovery", lambda: self._recover(conn)),
            ("crash recovery", lambda: self._recover_dead_claims(conn)),
            ("suspects", lambda: self._look_for_suspects(conn)),
            ("retention", lambda: self._purge(conn)),
        ]
        if self._observer.wants_backlog:
            steps.append(("backlog", lambda: self._sample_backlog(conn)))
        if logger.isEnabledFor(logging.INFO):
            steps.append(("summary", lambda: self._summarize(conn)))
        first: DatabaseError | None = None
        for name, step in steps:
            try:
                await step()
            except DatabaseUnavailable:
                raise
            except DatabaseError as error:
                self._log(name, error)
                first = first or error
        self.database_seen = time.monotonic()  # it answered, if only with errors
        if first is not None:
            raise first

    def _log(self, step: str, error: DatabaseError) -> None:
        logger.warning(
            "maintenance step %s failed: %s",
            step,
            describe(error),
            extra={"relay": self._connector.relay, "step": step},
        )

    async def _load_held(self, conn: Connection) -> None:
        released = self._held_sinks(await self._store.held_sinks(conn))
        # Until now this relay held the deliveries of these sinks, perhaps after the switch
        # made them due: make them due again, now that it knows (decision 11); and once more
        # a lease later, when every batch it routed before it knew has settled.
        now = time.monotonic()
        again = {name for name, at in self._wake_again.items() if at <= now}
        for name in again:
            del self._wake_again[name]
        for name in released:
            self._wake_again[name] = now + self._lease_seconds
        released |= again
        for name in sorted(released):
            await self._store.wake_sink(conn, name)
        if released:
            self._wake.set()

    async def _sample_backlog(self, conn: Connection) -> None:
        figures = await sink_status.event_figures(conn, self._store.schema)
        self._sampled_lag = (figures.due, figures.lag_seconds)
        self._observer.event_figures(figures)
        self._observer.fence_wait(await self._store.fence_wait(conn))
        self._observer.sinks(await sink_status.statuses(conn, self._store.schema, self._sink_names))

    async def _summarize(self, conn: Connection) -> None:
        # The lag the metrics just sampled, else one statement of its own.
        lag = self._sampled_lag or await sink_status.relay_lag(conn, self._store.schema)
        self._sampled_lag = None
        self._summary.log(*lag)

    async def _recover(self, conn: Connection) -> None:
        recovered = await self._store.recover_expired(conn, self._retry)
        self._recovered("lease expired for event %d: %s", recovered)

    async def _recover_dead_claims(self, conn: Connection) -> None:
        recovered = await self._store.recover_dead_claims(
            conn, self._retry, grace=self._orphan_grace
        )
        self._recovered("relay died with event %d in flight: %s", recovered)

    def _recovered(self, message: str, recovered: list[tuple[int, str, bool]]) -> None:
        relay = self._connector.relay
        for event_id, status, charged in recovered:
            if status == "failed":
                outcome = "failed: the relay died while delivering it, max_attempts times"
                self._stats.failed += 1  # a draining relay's summary and exit code count it
                self._observer.settled(status)
            elif charged:
                outcome = "the relay died while delivering it alone: crash counted"
            else:
                outcome = "to be retried alone, not counted as an attempt"
            if charged and self._stats.track_waiting:
                self._stats.settled(event_id, status)  # a crash retry waits like any retry
            extra = {"event_id": event_id, "relay": relay}
            logger.warning(message, event_id, outcome, extra=extra)
        if recovered:
            self._suspects_waiting()
            self._wake.set()

    async def _look_for_suspects(self, conn: Connection) -> None:
        if await self._store.suspects_due(conn):
            self._suspects_waiting()

    async def _purge(self, conn: Connection) -> None:
        total = 0
        for _ in range(_PURGE_ROUNDS):
            deleted = await self._store.purge_done(
                conn, keep_seconds=self._retention_seconds, limit=self._retention_batch
            )
            total += deleted
            if deleted < self._retention_batch:
                break
        if total:
            logger.info("retention deleted %d done events", total)


class _Summary:
    """The relay's counters since the last summary line, logged once per round."""

    def __init__(self, stats: RelayStats, relay: str) -> None:
        self._stats = stats
        self._relay = relay
        self._since = time.monotonic()
        self._done, self._retried, self._failed = stats.done, stats.retried, stats.failed

    def log(self, due: int, lag_seconds: float) -> None:
        """Log what happened since the last call, unless nothing did and nothing is due."""
        stats, now = self._stats, time.monotonic()
        done, retried = stats.done - self._done, stats.retried - self._retried
        failed = stats.failed - self._failed
        if not (done or retried or failed or due):
            self._since = now
            return
        seconds = max(now - self._since, 1e-3)
        logger.info(
            "relayed in the last %.1fs: %d events delivered (%.1f/s), %d to retry, "
            "%d failed; lag %.1fs (%s due)",
            seconds,
            done,
            done / seconds,
            retried,
            failed,
            lag_seconds,
            f"{due}+" if due >= sink_status.LAG_COUNT_CAP else due,
            extra={"relay": self._relay},
        )
        self._since = now
        self._done, self._retried, self._failed = stats.done, stats.retried, stats.failed
