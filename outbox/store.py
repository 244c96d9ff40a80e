"""The outbox tables as the relay sees them, and the one place driver errors become ours.

Every statement comes from the registry (``outbox/sql/queries.sql``, rendered once per
schema); this module is the relay's only caller of them. Identifiers come from
configuration, are validated when it loads, and are quoted by ``psycopg.sql``. All lease and
schedule arithmetic uses the database clock.

A driver error raised here leaves as the library's own (the driver's error is the
``__cause__``): a connection lost or refused (``psycopg.OperationalError``) as
:class:`~outbox.exceptions.DatabaseUnavailable`, anything else as
:class:`~outbox.exceptions.DatabaseError`. The relay's loops treat both alike: whatever the
server sends (a timeout, a cancel, a terminated session, a serialization failure, a data
error), they log it once with :func:`describe`, close the connection, and try again after
:class:`outbox.reconnects.Reconnects` says how long. Reopening is not needed after every
class, but it is always safe, and it is the only safe choice after an error inside a
transaction or a terminated session; the wait dominates its cost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import AsyncIterator, Sequence
from types import TracebackType

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from outbox import _queries, store_rows
from outbox._urls import options_without_jit
from outbox.exceptions import DatabaseError, DatabaseUnavailable, MigrationError
from outbox.records import Claim, ClaimedRow, Settlement
from outbox.retry import RetryPolicy

Connection = psycopg.AsyncConnection[TupleRow]

# Every relay connection says whose it is in pg_stat_activity (`outbox status` reads it).
RELAY_APPLICATION_PREFIX = "outbox relay "

_MAX_TIMEOUT_MS = 2**31 - 1  # the largest value a Postgres timeout setting takes


def relay_application_name(relay: str) -> str:
    """The ``application_name`` of ``relay``'s connections (Postgres keeps 63 bytes)."""
    return (RELAY_APPLICATION_PREFIX + relay).encode()[:63].decode(errors="ignore")


# -- driver errors ----------------------------------------------------------------------------


def _translated(error: psycopg.Error, schema: str | None = None) -> DatabaseError | MigrationError:
    if isinstance(error, psycopg.OperationalError):
        return DatabaseUnavailable(str(error))
    if schema is not None and isinstance(error, psycopg.errors.UndefinedTable):
        return MigrationError(
            f"the outbox tables are missing from schema {schema!r}: run `outbox migrate` first"
        )
    return DatabaseError(str(error))


class _DriverErrors:
    """Raises the driver's errors from inside ``with`` as the library's own. Given a schema,
    a missing table means the outbox was never migrated there: a MigrationError."""

    __slots__ = ("_schema",)

    def __init__(self, schema: str | None = None) -> None:
        self._schema = schema

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if isinstance(error, psycopg.Error):
            raise _translated(error, self._schema) from error


_DRIVER_ERRORS = _DriverErrors()


def driver_errors() -> _DriverErrors:
    """A context in which the driver's errors are raised as the library's own: for callers
    that run statements of their own (the CLI's operator commands, migrations)."""
    return _DRIVER_ERRORS


# -- connections ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Connector:
    """Opens ``relay``'s connections to ``url``: autocommit, each named for the relay."""

    url: str
    relay: str

    async def connect(self) -> Connection:
        """A connection the caller keeps (and closes with :func:`close_quietly`). JIT is off
        on it: the claim's per-key subplans are estimated far above ``jit_above_cost`` on a
        table with a backlog, and compiling them took most of a claim's time (issue 12)."""
        with _DRIVER_ERRORS:
            return await psycopg.AsyncConnection.connect(
                self.url,
                autocommit=True,
                application_name=relay_application_name(self.relay),
                options=options_without_jit(self.url),
            )

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A connection for a few statements, closed on the way out."""
        conn = await self.connect()
        with _DRIVER_ERRORS:
            async with conn:
                yield conn


async def close_quietly(conn: Connection | None) -> None:
    """Close ``conn`` if there is one; a connection already broken closes without a word."""
    if conn is not None:
        with contextlib.suppress(Exception):
            await conn.close()


def describe(error: BaseException) -> str:
    """``error`` in one line for a log: the driver's class (when there is one) and the first
    line of its message."""
    cause = error.__cause__ if isinstance(error.__cause__, psycopg.Error) else error
    lines = str(error).strip().splitlines() or [""]
    return f"{type(cause).__name__}: {lines[0]}"


@contextlib.asynccontextmanager
async def transaction(conn: Connection) -> AsyncIterator[None]:
    """A transaction on ``conn`` (a savepoint inside another), committed on the way out."""
    with _DRIVER_ERRORS:
        async with conn.transaction():
            yield


@contextlib.asynccontextmanager
async def sink_savepoint(conn: Connection) -> AsyncIterator[None]:
    """A savepoint around a transactional sink's writes: a failing sink writes nothing. What
    the sink raises stays its own (a delivery result), except a lost connection, which ends
    the batch: that leaves as DatabaseUnavailable."""
    try:
        async with conn.transaction():
            yield
    except psycopg.OperationalError as error:
        raise _translated(error) from error


# -- statements -------------------------------------------------------------------------------


class Store:
    """The outbox table of one schema, as the relay sees it."""

    def __init__(self, schema: str = "public") -> None:
        self.schema = schema
        statements = _queries.for_schema(schema)
        self._claim = statements["claim_leased"]
        self._settle = statements["settle_leased"]
        self._settle_alike = statements["settle_leased_alike"]
        self._lock_keys = statements["lock_keys"]
        self._claim_locked = statements["claim_locked"]
        self._settle_locked = statements["settle_locked"]
        self._settle_locked_alike = statements["settle_locked_alike"]
        self._release = statements["release_claimed"]
        self._recover = statements["recover_expired_leases"]
        self._open_claim = statements["open_claim"]
        self._drop_claim = statements["drop_claim"]
        self._journal_session = statements["journal_session"]
        self._recover_claims = statements["recover_dead_claims"]
        self._suspects_due = statements["suspects_due"]
        self._purge_done = statements["purge_done_events"]
        self._next_due = statements["next_due"]
        self._fence_holder = statements["fence_holder"]
        self._outstanding = statements["work_outstanding"]
        self._held_sinks = statements["held_sinks"]
        self._held_sinks_settled = statements["held_sinks_after_settle"]
        self._wake_sink = statements["wake_sink_deliveries"]
        self._disable_sink = statements["disable_sink"]
        self._ping = statements["listener_ping"]
        self._lock_session = statements["lock_session"]
        self._missing_tables = _DriverErrors(schema)

    async def claim(
        self,
        conn: Connection,
        *,
        limit: int,
        relay: str,
        lease_seconds: float,
        take_suspect: bool,
    ) -> Claim:
        """Claim a batch of due rows under a lease; with ``take_suspect``, one suspect alone
        instead if one is due (decision 10)."""
        params = {
            "limit": limit, "relay": relay, "lease": lease_seconds, "take_suspect": take_suspect
        }  # fmt: skip
        with _DRIVER_ERRORS:
            cursor = await conn.execute(self._claim, params)
            records = await cursor.fetchall()
        return store_rows.claim_of(records)

    async def claim_locked(self, conn: Connection, *, limit: int, take_suspect: bool) -> Claim:
        """Lock a batch of due rows (or one suspect, as :meth:`claim`); call inside the
        transaction that will settle them."""
        params = {"limit": limit, "take_suspect": take_suspect}
        with _DRIVER_ERRORS:
            cursor = await conn.execute(self._claim_locked, params)
            records = await cursor.fetchall()
        return store_rows.claim_of(records)

    async def open_claim(self, conn: Connection, rows: Sequence[ClaimedRow], suspect: bool) -> int:
        """Record a lock-mode batch in flight, on a connection other than the batch's; return
        the record's id, for the settle (which deletes it) or :meth:`drop_claim`."""
        with _DRIVER_ERRORS:
            cursor = await conn.execute(
                self._open_claim, {"ids": [row.id for row in rows], "suspect": suspect}
            )
            record = await cursor.fetchone()
        assert record is not None
        return int(record[0])

    async def prepare_journal_session(self, conn: Connection) -> None:
        with _DRIVER_ERRORS:
            await conn.execute(self._journal_session)

    async def drop_claim(self, conn: Connection, claim: int) -> None:
        with _DRIVER_ERRORS:
            await conn.execute(self._drop_claim, {"claim": claim})

    async def settle(
        self, conn: Connection, settled: Sequence[tuple[ClaimedRow, Settlement]]
    ) -> set[int]:
        """Write back a batch; return the ids whose lease still held."""
        if settled and store_rows.settle_alike(settled):
            params = store_rows.alike_params(settled, settled[0][1])
            params["tokens"] = [row.lease_token for row, _ in settled]
            with _DRIVER_ERRORS:
                cursor = await conn.execute(self._settle_alike, params)
                return {record[0] for record in await cursor.fetchall()}
        params = store_rows.rows_params(settled)
        keys = store_rows.keys_to_lock(settled)
        with _DRIVER_ERRORS:
            if not keys:
                cursor = await conn.execute(self._settle, params)
                return {record[0] for record in await cursor.fetchall()}
            async with conn.transaction():
                await conn.execute(self._lock_keys, {"keys": keys})
                cursor = await conn.execute(self._settle, params)
                return {record[0] for record in await cursor.fetchall()}

    async def settle_locked(
        self, conn: Connection, settled: Sequence[tuple[ClaimedRow, Settlement]], claim: int
    ) -> set[int]:
        """Write back a batch from :meth:`claim_locked`, in the transaction holding its locks,
        and delete its record ``claim``; return the ids written."""
        if not settled:
            return set()
        if store_rows.settle_alike(settled):
            statement = self._settle_locked_alike
            params = store_rows.alike_params(settled, settled[0][1])
        else:
            statement, params = self._settle_locked, store_rows.rows_params(settled)
        params["claim"] = claim
        keys = store_rows.keys_to_lock(settled)
        with _DRIVER_ERRORS:
            if keys:
                await conn.execute(self._lock_keys, {"keys": keys})
            cursor = await conn.execute(statement, params)
            return {record[0] for record in await cursor.fetchall()}

    async def release(self, conn: Connection, rows: Sequence[ClaimedRow]) -> None:
        with _DRIVER_ERRORS:
            await conn.execute(
                self._release,
                {"ids": [row.id for row in rows], "tokens": [row.lease_token for row in rows]},
            )

    async def recover_expired(
        self, conn: Connection, retry: RetryPolicy
    ) -> list[tuple[int, str, bool]]:
        """Take back rows whose lease expired: ``(id, status, charged)`` each, where
        ``charged`` says the relay died while delivering that suspect alone (a crash,
        retried after ``retry``'s backoff, failed at its ``max_attempts``)."""
        return await self._recover_with(self._recover, conn, retry)

    async def recover_dead_claims(
        self, conn: Connection, retry: RetryPolicy, *, grace: float
    ) -> list[tuple[int, str, bool]]:
        """Take back the lock-mode batches of relays gone for ``grace`` seconds, as
        :meth:`recover_expired`."""
        return await self._recover_with(self._recover_claims, conn, retry, grace=grace)

    async def _recover_with(
        self, statement: bytes, conn: Connection, retry: RetryPolicy, **more: float
    ) -> list[tuple[int, str, bool]]:
        params = {
            "max_attempts": retry.max_attempts,
            "backoff_base": retry.base_seconds,
            "backoff_cap": retry.cap_seconds,
            **more,
        }
        with _DRIVER_ERRORS:
            cursor = await conn.execute(statement, params)
            return [(rec[0], rec[1], bool(rec[2])) for rec in await cursor.fetchall()]

    async def suspects_due(self, conn: Connection) -> bool:
        with _DRIVER_ERRORS:
            cursor = await conn.execute(self._suspects_due)
            record = await cursor.fetchone()
        return bool(record and record[0])

    async def purge_done(self, conn: Connection, *, keep_seconds: float, limit: int) -> int:
        with _DRIVER_ERRORS:
            cursor = await conn.execute(self._purge_done, {"keep": keep_seconds, "limit": limit})
            return cursor.rowcount

    async def next_due(self, conn: Connection) -> tuple[float | None, bool]:
        """Seconds until the next scheduled row is due (None: none), and whether rows that
        are due now wait unclaimed."""
        with _DRIVER_ERRORS:
            cursor = await conn.execute(self._next_due)
            record = await cursor.fetchone()
        assert record is not None
        seconds = None if record[0] is None else max(float(record[0]), 0.0)
        return seconds, bool(record[1])

    async def fence_wait(self, conn: Connection) -> float:
        """Seconds the oldest transaction of this database has been open, if due keyed events
        wait for it to end (decision 9); 0 when none wait."""
        with _DRIVER_ERRORS:
            cursor = await conn.execute(self._fence_holder)
            record = await cursor.fetchone()
        return float(record[-2]) if record is not None and record[-1] else 0.0

    async def has_outstanding(self, conn: Connection) -> bool:
        with _DRIVER_ERRORS:
            cursor = await conn.execute(self._outstanding)
            record = await cursor.fetchone()
        return bool(record and record[0])

    async def held_sinks(self, conn: Connection, *, settled: bool = False) -> set[str]:
        """The names of the sinks whose deliveries wait (paused or disabled); a
        MigrationError if the outbox tables are missing. ``settled``: read after a settle,
        waiting for a switch being committed."""
        with self._missing_tables:
            cursor = await conn.execute(self._held_sinks_settled if settled else self._held_sinks)
            return {str(record[0]) for record in await cursor.fetchall()}

    async def wake_sink(self, conn: Connection, name: str) -> None:
        """Make due the pending events that wait for sink ``name`` (no longer held)."""
        with _DRIVER_ERRORS:
            await conn.execute(self._wake_sink, {"name": name})

    async def disable_sink(self, conn: Connection, name: str, reason: str) -> None:
        with _DRIVER_ERRORS:
            await conn.execute(self._disable_sink, {"name": name, "reason": reason})

    async def listen(self, conn: Connection, channel: str) -> None:
        """Have NOTIFYs on ``channel`` delivered to ``conn``."""
        with _DRIVER_ERRORS:
            await conn.execute(_queries.render("listen", channel=sql.Identifier(channel)))

    async def notifications(self, conn: Connection, *, seconds: float) -> AsyncIterator[str]:
        """Yield the payload of each NOTIFY ``conn`` receives in the next ``seconds``."""
        with _DRIVER_ERRORS:
            async for notify in conn.notifies(timeout=seconds):
                yield notify.payload

    async def prepare_lock_session(self, conn: Connection, *, lease_seconds: float) -> None:
        """Set what a lock-mode worker's session needs: its batch transaction idles while
        sinks run, so a server-wide ``idle_in_transaction_session_timeout`` must not end it.
        Twice the lease, not off: a relay stuck holding row locks is still cut loose."""
        timeout_ms = min(math.ceil(lease_seconds * 2000), _MAX_TIMEOUT_MS)
        with _DRIVER_ERRORS:
            await conn.execute(self._lock_session, {"timeout_ms": str(timeout_ms)})

    async def ping(self, conn: Connection) -> None:
        """A round trip on ``conn``: a silent network failure shows up here."""
        with _DRIVER_ERRORS:
            await conn.execute(self._ping)
