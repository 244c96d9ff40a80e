"""The ``callable`` sink: a Python function, sync (run in a thread) or async.

    [sinks.cache]
    type = "callable"
    target = "myapp.handlers:invalidate_cache"
    batch = false          # true: the function takes a list of events at once

The function receives an :class:`outbox.sinks.Event` (or a list of them with ``batch``).
Importing the target happens when the relay starts, so a wrong path is a configuration
error, not a failure per event.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from outbox.hookspecs import RegisterSink, hookimpl
from outbox.sinks import Event, Sink, timed_out


class CallableOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: str = Field(description="Import path of the function, 'package.module:function'.")
    batch: bool = Field(False, description="Pass a list of events in one call.")
    concurrency: int = Field(16, ge=1, le=1024, description="Calls running at once.")

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

    async def deliver(self, event: Event) -> None:
        await self._call([event] if self._batch else event)

    async def deliver_batch(
        self,
        events: Sequence[Event],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the base class's signature)
    ) -> list[BaseException | None]:
        if not self._batch:
            return await super().deliver_batch(events, timeout=timeout)
        # One call for the batch, under the deadline the base class would give each event.
        deadline = self.deadline(timeout)
        cutoff = asyncio.timeout(deadline)
        try:
            async with cutoff:
                await self._call(list(events))
        except Exception as error:
            if not cutoff.expired():
                return [error] * len(events)
            return [timed_out(deadline)] * len(events)
        return [None] * len(events)

    async def _call(self, argument: object) -> None:
        if self._is_async:
            await self._function(argument)
        else:
            await asyncio.to_thread(self._function, argument)


def _is_async(function: Callable[..., Any]) -> bool:
    # An object with ``async def __call__`` is async too: run in a thread, its coroutine
    # would never be awaited and the event would count as delivered.
    call = type(function).__call__
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(call)


@hookimpl
def outbox_register_sinks(register: RegisterSink) -> None:
    register("callable", CallableSink)
