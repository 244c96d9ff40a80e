"""The ``callable`` sink: a Python function, sync (run in threads of its own) or async.

    [sinks.cache]
    type = "callable"
    target = "myapp.handlers:invalidate_cache"
    batch = false          # true: the function takes a list of events at once
    concurrency = 16       # calls running at once (a sync function: the sink's threads)

The function receives an :class:`outbox.sinks.Event` (or a list of them with ``batch``).
Importing the target happens when the relay starts, so a wrong path is a configuration
error, not a failure per event.

A sync function runs in a pool of ``concurrency`` threads that belongs to this sink alone:
a batch goes to the pool in one hop per thread (not one per event), and the threads take
its events in turn. A call still running at the batch's deadline cannot be interrupted;
its event alone times out, its thread counts as stuck and is replaced (up to
``concurrency`` stuck threads at once), and an event no thread started before the deadline
times out without being called. The threads are daemons, so a hung call never keeps the
process from exiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from outbox.hookspecs import RegisterSink, hookimpl
from outbox.sinks import Event, Sink, timed_out

logger = logging.getLogger(__name__)


class CallableOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = Field(description="Import path of the function, 'package.module:function'.")
    batch: bool = Field(False, description="Pass a list of events in one call.")
    concurrency: int = Field(
        16, ge=1, le=1024, description="Calls running at once (a sync function: its threads)."
    )

    @field_validator("target")
    @classmethod
    def _importable(cls, value: str) -> str:
        resolve_target(value)
        return value


def resolve_target(path: str) -> Callable[..., Any]:
    """Import ``package.module:function``; raise ``ValueError`` saying what is wrong."""
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{path!r} is not of the form 'package.module:function'")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as error:  # a module failing as it runs is a configuration error too
        raise ValueError(
            f"cannot import module {module_name!r}: {type(error).__name__}: {error}"
        ) from error
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as error:
            raise ValueError(f"module {module_name!r} has no attribute {attribute!r}") from error
    if not callable(target):
        raise ValueError(f"{path!r} is not callable")
    return target  # type: ignore[no-any-return]


class CallableSink(Sink):
    """Calls a Python function for each event (or batch)."""

    Options: ClassVar[type[BaseModel]] = CallableOptions

    def __init__(
        self, options: CallableOptions | Callable[..., Any], *, batch: bool = False
    ) -> None:
        super().__init__()
        if isinstance(options, CallableOptions):
            self._function = resolve_target(options.target)
            self._batch = options.batch
            self.concurrency = options.concurrency
        else:
            self._function, self._batch = options, batch
        self._is_async = _is_async(self._function)
        self._pool: _ThreadPool | None = None
        self._closed = False

    async def deliver(self, event: Event) -> None:
        argument = [event] if self._batch else event
        if self._is_async:
            try:
                await self._function(argument)
            except Exception as raised:
                _log_raised(self._function, argument, raised)
                raise
            return
        (error,) = await self._in_threads([argument], self.delivery_timeout)
        if error is not None:
            raise error

    async def deliver_batch(
        self,
        events: Sequence[Event],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the base class's signature)
    ) -> list[BaseException | None]:
        if not self._is_async:
            if not self._batch:
                return await self._in_threads(list(events), self.deadline(timeout))
            (result,) = await self._in_threads([list(events)], self.deadline(timeout))
            return [result] * len(events)
        if not self._batch:
            return await super().deliver_batch(events, timeout=timeout)
        # One call for the batch, under the deadline the base class would give each event.
        deadline = self.deadline(timeout)
        cutoff = asyncio.timeout(deadline)
        try:
            async with cutoff:
                await self._function(list(events))
        except Exception as error:
            if not cutoff.expired():
                _log_raised(self._function, events, error)
                return [error] * len(events)
            return [timed_out(deadline)] * len(events)
        return [None] * len(events)

    async def aclose(self) -> None:
        """Stop taking work; idle threads end, a hung call is not waited for."""
        self._closed = True
        if self._pool is not None:
            self._pool.close()

    async def _in_threads(
        self, arguments: list[object], deadline: float | None
    ) -> list[BaseException | None]:
        """Call the function with each of ``arguments`` in this sink's threads, within
        ``deadline`` seconds (None: no deadline); the results, in order."""
        if self._closed:
            raise RuntimeError("the sink is closed")
        if not arguments:
            return []
        if self._pool is None:
            self._pool = _ThreadPool(self.concurrency, _thread_name(self._function))
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()
        workers = min(self.concurrency, len(arguments))
        calls = _Calls(self._function, arguments, deadline, lambda: _resolve(loop, finished))
        for _ in range(workers):
            self._pool.submit(calls.work)
        try:
            async with asyncio.timeout(deadline):
                await finished
        except TimeoutError:
            pass  # the events not done by now time out
        finally:
            self._pool.stuck(calls.close())
        return calls.results


class _Calls:
    """One batch in the threads: its arguments, taken in turn, and the results so far."""

    def __init__(
        self,
        function: Callable[[object], object],
        arguments: list[object],
        deadline: float | None,
        finished: Callable[[], None],
    ) -> None:
        self._function = function
        self._arguments = arguments
        self._ends_at = None if deadline is None else time.monotonic() + deadline
        self._finished = finished
        self.results: list[BaseException | None] = [timed_out(deadline)] * len(arguments)
        self._lock = threading.Lock()
        self._next = 0
        self._calling = 0
        self._done = 0
        self._closed = False

    def work(self) -> bool:
        """Run in a pool thread: call for one argument after another until none is left,
        the deadline passed or the batch was closed. True if this thread was declared
        stuck (its call outlasted the batch)."""
        while (index := self._take()) is not None:
            result: BaseException | None = None
            try:
                self._function(self._arguments[index])
            except BaseException as error:  # SystemExit in a thread is this event's failure
                _log_raised(self._function, self._arguments[index], error)
                result = error
            with self._lock:
                self._calling -= 1
                if self._closed:  # the batch ended while this call ran: counted as stuck
                    return True
                self.results[index] = result
                self._done += 1
                last = self._done == len(self._arguments)
            if last:  # the batch is over, whether or not its other jobs started
                self._finished()
        return False

    def close(self) -> int:
        """End the batch: no more calls start, late results are dropped, and the results
        are fixed. Returns how many calls are still running (their threads are stuck)."""
        with self._lock:
            self._closed = True
            return self._calling

    def _take(self) -> int | None:
        with self._lock:
            if self._closed or self._next == len(self._arguments):
                return None
            if self._ends_at is not None and time.monotonic() >= self._ends_at:
                return None  # not started by the deadline: never called
            self._calling += 1
            self._next += 1
            return self._next - 1


class _ThreadPool:
    """``size`` daemon threads taking jobs from a queue. A thread whose call outlasted its
    batch is stuck: it ends when the call returns, and a new thread takes its place
    meanwhile, as long as no more than ``size`` are stuck."""

    def __init__(self, size: int, name: str) -> None:
        self._size = size
        self._name = name
        self._jobs: queue.SimpleQueue[Callable[[], bool] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._stuck = 0
        self._started = 0
        self._closed = False

    def submit(self, job: Callable[[], bool]) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the sink is closed")
            working = self._threads - self._stuck
            if working < self._size and self._stuck <= self._size:
                self._start_thread()
        self._jobs.put(job)

    def stuck(self, count: int) -> None:
        if not count:
            return
        with self._lock:
            self._stuck += count
            stuck = self._stuck
        logger.warning(
            "%s: %d calls still running after their deadline (%d threads stuck)",
            self._name,
            count,
            stuck,
            extra={"sink_threads": self._name},
        )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle = self._threads - self._stuck
        for _ in range(idle):
            self._jobs.put(None)

    def _start_thread(self) -> None:
        self._threads += 1
        self._started += 1
        name = f"{self._name}-{self._started}"
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if job():  # stuck, and now back: a replacement has its place
                with self._lock:
                    self._stuck -= 1
                    self._threads -= 1
                return
        with self._lock:
            self._threads -= 1


def _resolve(loop: asyncio.AbstractEventLoop, finished: asyncio.Future[None]) -> None:
    def resolve() -> None:
        if not finished.done():
            finished.set_result(None)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(resolve)


def _log_raised(function: Callable[..., Any], argument: object, error: BaseException) -> None:
    """Log the whole traceback at DEBUG: the event's error history keeps only the innermost
    frame (outbox.retry), which is seldom the whole story of a failing handler."""
    if not logger.isEnabledFor(logging.DEBUG):
        return
    events = argument if isinstance(argument, Sequence) else [argument]
    ids = [event.id for event in events if isinstance(event, Event)]
    logger.debug(
        "%s raised %s for event %s",
        getattr(function, "__qualname__", None) or type(function).__qualname__,
        type(error).__name__,
        ", ".join(map(str, ids)),
        exc_info=error,
        extra={"event_id": ids[0]} if len(ids) == 1 else {},
    )


def _thread_name(function: Callable[..., Any]) -> str:
    name = getattr(function, "__qualname__", None) or type(function).__qualname__
    return f"outbox-callable-{name}"


def _is_async(function: Callable[..., Any]) -> bool:
    # An object with ``async def __call__`` is async too: run in a thread, its coroutine
    # would never be awaited and the event would count as delivered.
    call = type(function).__call__
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(call)


@hookimpl
def outbox_register_sinks(register: RegisterSink) -> None:
    register("callable", CallableSink)
