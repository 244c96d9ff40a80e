"""The sink interface: where events go.

A sink is shaped like an httpx transport: one required coroutine, :meth:`Sink.deliver`, an
optional :meth:`Sink.aclose`, and use as an async context manager. Raise
:class:`~outbox.RetryableError` (optionally with ``retry_after``) or
:class:`~outbox.PermanentError`; any other exception counts as retryable.

The relay calls :meth:`Sink.deliver_batch` with its share of a batch and the relay's
``delivery_timeout`` as ``timeout``; it never changes a sink's attributes.

Delivery is at least once: the same event may reach a sink again after a crash, so sinks
use :attr:`Event.id` as their idempotency key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, ClassVar, Self

import psycopg
from pydantic import BaseModel

from outbox.exceptions import RetryableError

__all__ = ["Event", "Sink"]


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """An event as a sink sees it."""

    id: int
    """Unique, increasing per table; the idempotency key."""
    topic: str
    payload: Any
    key: str | None
    headers: Mapping[str, str]
    created_at: dt.datetime
    attempt: int
    """This sink's attempt at this event, from 1."""


def _cancel_unfinished(tasks: Sequence[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()  # a no-op for tasks already done


def timed_out(deadline: float | None) -> RetryableError:
    """The result of an event whose delivery did not finish within ``deadline`` seconds."""
    if deadline is None:  # no deadline: cancelled some other way
        return RetryableError("delivery was cancelled")
    return RetryableError(f"delivery timed out after {deadline:g}s")


class Sink:
    """Base class of every sink type.

    Subclasses implement :meth:`deliver`. Those that can deliver many events in one request
    override :meth:`deliver_batch` instead (or too), with the same signature::

        async def deliver_batch(
            self, events: Sequence[Event], *, timeout: float | None = None
        ) -> list[BaseException | None]: ...

    ``timeout`` is the relay's ``delivery_timeout`` (seconds from the start of the batch;
    None: no deadline); an overriding ``deliver_batch`` respects it too (the relay cuts off
    a batch that overruns it by half the remaining lease). ``concurrency`` bounds how many
    deliveries of this sink run at once across the relay.
    """

    concurrency: int = 16
    delivery_timeout: float | None = None
    """This sink's own deadline for a batch, in seconds, if it wants one shorter than the
    ``timeout`` the relay passes to :meth:`deliver_batch` (the shorter of the two wins)."""
    transactional: bool = False
    """True for sinks that write into the outbox's own database: the relay then calls
    :meth:`deliver_in_transaction` inside the transaction that settles the batch."""
    Options: ClassVar[type[BaseModel]] = BaseModel
    """The pydantic model of this sink type's configuration options."""

    def __init__(self, options: Any = None) -> None:
        self._limit: asyncio.Semaphore | None = None

    def deadline(self, timeout: float | None) -> float | None:
        """Seconds a batch may take: the shorter of the caller's ``timeout`` and this sink's
        own :attr:`delivery_timeout` (None: no deadline). For overrides of
        :meth:`deliver_batch`; answer an event cut off by it with :func:`timed_out`."""
        if timeout is None:
            return self.delivery_timeout
        return timeout if self.delivery_timeout is None else min(timeout, self.delivery_timeout)

    async def deliver(self, event: Event) -> None:
        """Deliver one event; return normally only once the receiver has it. A sink that
        overrides only :meth:`deliver_batch` gets this as a batch of one."""
        if type(self).deliver_batch is Sink.deliver_batch:
            raise NotImplementedError
        [error] = await self.deliver_batch([event])
        if error is not None:
            raise error

    async def deliver_batch(
        self,
        events: Sequence[Event],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a deadline per event, not the call's)
    ) -> list[BaseException | None]:
        """Deliver several events; return, in order, ``None`` for each success or its error.

        Each event gets until ``timeout`` seconds after the batch started (or this sink's
        :attr:`delivery_timeout`, if set and shorter): one slow event times out alone, and
        the events already delivered keep their success.
        """
        deadline = self.deadline(timeout)
        # What an event not delivered by the deadline keeps; the others overwrite theirs.
        results: list[BaseException | None] = [timed_out(deadline)] * len(events)
        todo = iter(enumerate(events))
        # A few workers take the events in turn, under one timer for the batch: a task or a
        # timeout per event was most of a fast sink's time.
        loop = asyncio.get_running_loop()
        workers = [
            loop.create_task(self._work(todo, results, deadline))
            for _ in range(min(self.concurrency, len(events)))
        ]
        timer = None
        if deadline is not None:
            timer = loop.call_at(loop.time() + deadline, _cancel_unfinished, workers)
        try:
            await asyncio.gather(*workers, return_exceptions=True)
        finally:
            if timer is not None:
                timer.cancel()
        return results

    async def _work(
        self,
        todo: Iterator[tuple[int, Event]],
        results: list[BaseException | None],
        deadline: float | None,
    ) -> None:
        if self._limit is None:
            self._limit = asyncio.Semaphore(self.concurrency)
        async with self._limit:  # a worker is one of this sink's slots, across batches
            for index, event in todo:
                results[index] = await self._deliver_one(event, deadline)

    async def _deliver_one(self, event: Event, deadline: float | None) -> BaseException | None:
        try:
            await self.deliver(event)
        except Exception as error:
            return error
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # the deadline, or the caller
                raise
            return timed_out(deadline)  # raised by the sink itself: this event's failure alone
        return None

    async def deliver_in_transaction(
        self, conn: psycopg.AsyncConnection[Any], events: Sequence[Event]
    ) -> list[BaseException | None]:
        """Write ``events`` on ``conn``, inside the relay's settle transaction (only called
        when :attr:`transactional` is true). Raising rolls back this sink's writes alone."""
        raise NotImplementedError

    async def check(self) -> None:
        """Try what a delivery needs (the connection, the login, the destination) without
        delivering anything; raise an exception whose message says what is wrong.
        ``outbox config check --connect`` calls it once per sink. Checks nothing here."""

    async def aclose(self) -> None:
        """Release connections and other resources."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
