"""Poison events: a relay that dies while delivering charges the crash to the right event.

A sink that crashes the relay process on one payload (a segfault, memory exhausted,
``os._exit``) must cost only that event, not the batch it came in. So the rows a relay held
when it died (found by maintenance: an expired lease, or a lock-mode batch whose relay has no
connection left) become *suspects*, with no attempt counted. A suspect is claimed alone, by a
relay with nothing else in flight: if that relay dies too, the crash is the suspect's own, and
it is charged to it; ``max_attempts`` crashes fail it (docs/decisions/0010-poison-events.md).

:class:`SuspectGate` keeps a relay's workers to that rule. :class:`ClaimJournal` is how lock
mode, whose claims write nothing, leaves a record of each batch in flight that outlives the
relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

from outbox.exceptions import DatabaseError
from outbox.own_connection import OwnConnection
from outbox.records import ClaimedRow
from outbox.store import Connection, Connector, Store

logger = logging.getLogger(__name__)


class Turn:
    """One worker's batch under the gate: whether its claim may take a suspect."""

    __slots__ = ("_gate", "may_take_suspect")

    def __init__(self, gate: SuspectGate, may_take_suspect: bool) -> None:
        self._gate = gate
        self.may_take_suspect = may_take_suspect

    async def claimed(self, suspect: bool) -> None:
        """Report what the claim took: a suspect keeps the relay's other workers waiting
        until this batch ends; anything else lets them claim now."""
        if suspect:
            self._gate.suspects_waiting()  # there may be more: the next turn looks again
        elif self.may_take_suspect:
            await self._gate.reopen()


class SuspectGate:
    """At most one suspect in flight per relay, and nothing beside it.

    A worker's claim may take a suspect only when none of the relay's other batches is being
    claimed or in flight; while such a claim runs, and while its suspect is delivered, the
    other workers wait before claiming. With one worker (the default) that is every claim.
    With more, a worker waits for the others to finish only when suspects are known to wait
    (:meth:`suspects_waiting`, from maintenance), so that they are never starved.
    """

    def __init__(self) -> None:
        self._changed = asyncio.Condition()
        self._busy = 0
        self._exclusive = False
        self._suspects_waiting = False

    def suspects_waiting(self) -> None:
        """Suspects are due: the next claim waits for the relay's batches to finish, then may
        take one."""
        self._suspects_waiting = True

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[Turn]:
        """A worker's batch, from before its claim to after its settle."""
        async with self._changed:
            await self._changed.wait_for(lambda: not self._exclusive)
            take = self._busy == 0 or self._suspects_waiting
            if take:
                self._exclusive = True
                self._suspects_waiting = False
                await self._changed.wait_for(lambda: self._busy == 0)
            self._busy += 1
        turn = Turn(self, take)
        try:
            yield turn
        finally:
            async with self._changed:
                self._busy -= 1
                if turn.may_take_suspect:
                    self._exclusive = False
                self._changed.notify_all()

    async def reopen(self) -> None:
        async with self._changed:
            self._exclusive = False
            self._changed.notify_all()


class ClaimJournal:
    """Lock mode's record of its batches in flight (``outbox_claims``), written on a
    connection of the relay's own beside the batches' (a batch's rollback must not take it
    back). A batch's settle deletes its record in the same commit; a batch that ends
    otherwise drops it here. A relay that dies leaves its records for maintenance to find."""

    def __init__(self, store: Store, connector: Connector) -> None:
        self._store = store
        self._own = OwnConnection(connector, store.prepare_journal_session)
        self._undropped: list[int] = []

    async def open(self, rows: Sequence[ClaimedRow], suspect: bool) -> int:
        """Record a batch before its sinks are called; return the record's id."""
        async with self._own.use() as conn:
            await self._drop_undropped(conn)
            return await self._store.open_claim(conn, rows, suspect)

    async def flush(self) -> None:
        """Drop the records that :meth:`drop` could not (their rows are not claimed while
        the records stand); a DatabaseError if the database still fails."""
        if self._undropped:
            async with self._own.use() as conn:
                await self._drop_undropped(conn)

    async def drop(self, claim: int) -> None:
        """Forget the record of a batch that ended without a commit (retried with the next
        :meth:`open` if the database fails now)."""
        try:
            async with self._own.use() as conn:
                await self._store.drop_claim(conn, claim)
        except DatabaseError:
            self._undropped.append(claim)

    async def aclose(self) -> None:
        await self._own.aclose()

    async def _drop_undropped(self, conn: Connection) -> None:
        while self._undropped:
            await self._store.drop_claim(conn, self._undropped[-1])
            self._undropped.pop()
