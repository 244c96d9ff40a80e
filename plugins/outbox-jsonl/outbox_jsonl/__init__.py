"""The ``jsonl`` sink: one JSON line per event, appended to a file.

Each line is ``{"id": ..., "topic": ..., "key": ..., "created_at": ..., "payload": ...}``.
An event already in the file is not written again, so redelivery after a crash leaves one
line per event.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

import outbox
from outbox.sinks import Event, Sink, timed_out


class JsonlOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path = Field(description="File to append to; created if missing.")
    fsync: bool = Field(True, description="fsync after each batch, so an ack means on disk.")


class JsonlSink(Sink):
    """Appends events to a JSON Lines file, skipping ids already written."""

    Options: ClassVar[type[BaseModel]] = JsonlOptions
    concurrency = 1

    def __init__(self, options: JsonlOptions) -> None:
        super().__init__()
        self._options = options
        self._written: set[int] | None = None
        self._lock = threading.Lock()

    async def deliver_batch(
        self,
        events: Sequence[Event],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (the base class's signature)
    ) -> list[BaseException | None]:
        # The whole batch gets the deadline the base class would give each event.
        deadline = self.deadline(timeout)
        cutoff = asyncio.timeout(deadline)
        try:
            async with cutoff:
                await asyncio.to_thread(self._append, events)
        except OSError as error:  # TimeoutError included
            if cutoff.expired():
                failure = timed_out(deadline)
            else:
                failure = outbox.RetryableError(f"cannot write {self._options.path}: {error}")
            return [failure] * len(events)
        return [None] * len(events)

    def _append(self, events: Sequence[Event]) -> None:
        # A thread's lock: a write cut off by the deadline still finishes, in its thread,
        # before the next one starts.
        with self._lock:
            self._append_new(events)

    def _append_new(self, events: Sequence[Event]) -> None:
        written = self._load_written()
        lines = []
        for event in events:
            if event.id not in written:
                written.add(event.id)
                lines.append(_line(event))
        if not lines:
            return
        with self._options.path.open("a", encoding="utf-8") as file:
            file.write("".join(lines))
            file.flush()
            if self._options.fsync:
                os.fsync(file.fileno())

    def _load_written(self) -> set[int]:
        if self._written is None:
            self._written = set()
            if self._options.path.exists():
                with self._options.path.open(encoding="utf-8") as file:
                    self._written = {json.loads(line)["id"] for line in file if line.strip()}
        return self._written


def _line(event: Event) -> str:
    record = {
        "id": event.id,
        "topic": event.topic,
        "key": event.key,
        "created_at": event.created_at.isoformat(),
        "payload": event.payload,
    }
    return json.dumps(record, ensure_ascii=False) + "\n"


@outbox.hookimpl
def outbox_register_sinks(register: outbox.hookspecs.RegisterSink) -> None:
    register("jsonl", JsonlSink)
