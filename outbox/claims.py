"""The two claim modes, as two strategies behind one interface.

A strategy is one batch on one connection: the relay's loop enters it (``async with``), then
calls :meth:`~ClaimStrategy.claim`, :meth:`~ClaimStrategy.deliver` and
:meth:`~ClaimStrategy.settle` in order, and reports what was settled once it has left.

``lease`` (the default): a claim commits the rows as ``processing`` under a lease, sinks are
called outside any transaction, and a settle writes the result. ``lock``: one transaction
per batch, whose row locks are the lease, and a single write per event at settle
(docs/decisions/0007-claim-mode-lock.md).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import dataclasses
import functools
import logging
from types import TracebackType
from typing import Self

from outbox.exceptions import DatabaseError
from outbox.fanout import Batch, FanOut
from outbox.reconnects import reconnect_delay
from outbox.records import Claim, ClaimedRow, Settlement
from outbox.store import Connection, Connector, Store, describe, transaction
from outbox.suspects import ClaimJournal, SuspectGate

logger = logging.getLogger(__name__)

_SETTLE_RETRIES = 4


class CutOff(Exception):
    """A batch's deliveries were cancelled by :meth:`ClaimContext.cut_off` (the relay is
    stopping and ``shutdown_timeout`` passed); its rows were handed back."""


@dataclasses.dataclass(frozen=True, slots=True)
class Settled:
    """A batch's settle: what was written for each event, and the ids of the rows that took
    it (a row whose lease was lost kept what another relay wrote)."""

    rows: list[tuple[ClaimedRow, Settlement]]
    kept: set[int]


@dataclasses.dataclass(frozen=True)
class ClaimContext:
    """What every batch of one relay needs, shared by its workers."""

    store: Store
    fanout: FanOut
    connector: Connector
    batch_size: int
    lease_seconds: float
    gate: SuspectGate = dataclasses.field(default_factory=SuspectGate)
    deliveries: set[asyncio.Task[None]] = dataclasses.field(default_factory=set)
    """The deliveries in flight, for :meth:`cut_off`."""

    @functools.cached_property
    def journal(self) -> ClaimJournal:
        """Lock mode's record of its batches in flight."""
        return ClaimJournal(self.store, self.connector)

    async def deliver(self, batch: Batch) -> None:
        """Deliver ``batch`` in a task of its own; raise :class:`CutOff` if :meth:`cut_off`
        cancels it (a cancellation of the caller stays one)."""
        delivery = asyncio.ensure_future(self.fanout.deliver(batch))
        self.deliveries.add(delivery)
        try:
            await delivery
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            raise CutOff from None
        finally:
            self.deliveries.discard(delivery)

    def cut_off(self) -> None:
        """Cancel every delivery in flight: each batch is handed back (released in lease
        mode, rolled back in lock mode), its sinks' late results dropped."""
        for delivery in self.deliveries:
            delivery.cancel()


class ClaimStrategy(abc.ABC):
    """One batch on ``conn`` in one claim mode."""

    def __init__(self, context: ClaimContext, conn: Connection) -> None:
        self.context = context
        self.conn = conn

    @classmethod
    async def prepare(cls, context: ClaimContext, conn: Connection) -> None:
        """Set up a worker's new connection for this claim mode (nothing, by default)."""
        return None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None

    @abc.abstractmethod
    async def claim(self, *, take_suspect: bool) -> Claim:
        """Claim up to a batch of due rows; with ``take_suspect``, one suspect alone instead
        when one is due (outbox.suspects)."""

    @abc.abstractmethod
    async def deliver(self, batch: Batch) -> None:
        """Deliver the routed batch."""

    @abc.abstractmethod
    async def settle(self, batch: Batch) -> Settled:
        """Write back what the deliveries came to."""


class LeaseStrategy(ClaimStrategy):
    """Claim mode "lease": the claim commits on its own, the settle compares lease tokens."""

    async def claim(self, *, take_suspect: bool) -> Claim:
        context = self.context
        return await context.store.claim(
            self.conn,
            limit=context.batch_size,
            relay=context.connector.relay,
            lease_seconds=context.lease_seconds,
            take_suspect=take_suspect,
        )

    async def deliver(self, batch: Batch) -> None:
        try:
            await self.context.deliver(batch)
        except (asyncio.CancelledError, CutOff):
            await asyncio.shield(self._release(batch.claim.rows))
            raise

    async def settle(self, batch: Batch) -> Settled:
        if not batch.in_transaction:
            return await self._write(batch, may_reconnect=True)
        # The sink's writes and the settle commit together: exactly once for that sink.
        async with transaction(self.conn):
            await self.context.fanout.deliver_in_transaction(self.conn, batch)
            return await self._write(batch, may_reconnect=False)

    async def _write(self, batch: Batch, *, may_reconnect: bool) -> Settled:
        settled = self.context.fanout.settlements(batch)
        try:
            kept = await self.context.store.settle(self.conn, settled)
        except DatabaseError:
            if not may_reconnect:
                raise
            # The deliveries happened: write them back on a new connection rather than let
            # the leases expire and the events go out again (after a lost connection, a
            # statement timeout, a terminated session alike).
            kept = await self._settle_on_new_connection(settled)
        return Settled(settled, kept)

    async def _settle_on_new_connection(
        self, settled: list[tuple[ClaimedRow, Settlement]]
    ) -> set[int]:
        for attempt in range(1, _SETTLE_RETRIES + 1):
            await asyncio.sleep(reconnect_delay(attempt))
            try:
                async with self.context.connector.connection() as conn:
                    return await self.context.store.settle(conn, settled)
            except DatabaseError as error:
                if attempt == _SETTLE_RETRIES:
                    raise
                logger.warning(
                    "settle failed (%s); retrying on a new connection",
                    describe(error),
                    extra={"relay": self.context.connector.relay},
                )
        raise AssertionError("unreachable")

    async def _release(self, rows: list[ClaimedRow]) -> None:
        with contextlib.suppress(DatabaseError):
            await self.context.store.release(self.conn, rows)
            relay = self.context.connector.relay
            logger.info("released %d events in flight", len(rows), extra={"relay": relay})


class LockStrategy(ClaimStrategy):
    """Claim mode "lock": claim, deliver and settle in one transaction, whose row locks are
    the lease. A rollback (cancelled, connection lost) hands the rows back with no attempt
    counted, and what was delivered goes out again: at least once. Each batch in flight is
    recorded in the claim journal, which outlives a relay that dies (outbox.suspects)."""

    def __init__(self, context: ClaimContext, conn: Connection) -> None:
        super().__init__(context, conn)
        self._transaction = transaction(conn)
        self._claimed = 0
        self._record: int | None = None

    @classmethod
    async def prepare(cls, context: ClaimContext, conn: Connection) -> None:
        await context.store.prepare_lock_session(conn, lease_seconds=context.lease_seconds)

    async def __aenter__(self) -> Self:
        await self._transaction.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        error = exc
        try:
            await self._transaction.__aexit__(exc_type, exc, traceback)
        except BaseException as raised:  # the commit failed
            error = raised
            raise
        finally:
            if error is not None and self._claimed:
                self._not_committed(error)
            if error is not None and self._record is not None:
                await asyncio.shield(self.context.journal.drop(self._record))

    async def claim(self, *, take_suspect: bool) -> Claim:
        context = self.context
        await context.journal.flush()
        claim = await context.store.claim_locked(
            self.conn, limit=context.batch_size, take_suspect=take_suspect
        )
        self._claimed = len(claim.rows)
        if claim.rows:
            self._record = await context.journal.open(claim.rows, claim.suspect)
        return claim

    async def deliver(self, batch: Batch) -> None:
        await self.context.deliver(batch)
        await self.context.fanout.deliver_in_transaction(self.conn, batch)

    async def settle(self, batch: Batch) -> Settled:
        settled = self.context.fanout.settlements(batch)
        assert self._record is not None
        kept = await self.context.store.settle_locked(self.conn, settled, self._record)
        return Settled(settled, kept)

    def _not_committed(self, error: BaseException) -> None:
        relay = self.context.connector.relay
        if isinstance(error, asyncio.CancelledError | CutOff):
            logger.info("rolled back %d events in flight", self._claimed, extra={"relay": relay})
        elif isinstance(error, DatabaseError):
            # Not settled on a new connection, unlike lease mode: the locks went with this
            # one (or the transaction failed), and another relay may hold the rows by now.
            # The error itself is the relay loop's to log, once.
            logger.warning(
                "a batch of %d events did not commit: "
                "they are pending again and will be delivered again",
                self._claimed,
                extra={"relay": relay},
            )
