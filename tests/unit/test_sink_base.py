"""The Sink base class: batches run concurrently within the sink's bound, and a slow event
times out alone while the others keep their success."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import pytest

import outbox
from outbox.exceptions import PermanentError
from outbox.sinks import Event, Sink
from outbox.testing import make_event


class Slow(Sink):
    concurrency = 2

    def __init__(self, slow_ids: set[int]) -> None:
        super().__init__()
        self.slow_ids = slow_ids
        self.delivered: list[int] = []
        self.running = 0
        self.most_running = 0

    async def deliver(self, event: Event) -> None:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(30 if event.id in self.slow_ids else 0.01)
            self.delivered.append(event.id)
        finally:
            self.running -= 1


async def test_a_slow_event_times_out_alone() -> None:
    events = [make_event() for _ in range(6)]
    sink = Slow({events[2].id})
    sink.delivery_timeout = 0.5
    results = await sink.deliver_batch(events)
    assert [result is None for result in results] == [True, True, False, True, True, True]
    assert isinstance(results[2], outbox.RetryableError)
    assert "timed out" in str(results[2])
    assert sorted(sink.delivered) == sorted(e.id for i, e in enumerate(events) if i != 2)


async def test_concurrency_is_bounded() -> None:
    sink = Slow(set())
    assert await sink.deliver_batch([make_event() for _ in range(10)]) == [None] * 10
    assert sink.most_running == 2


async def test_errors_come_back_in_order() -> None:
    class Picky(Sink):
        async def deliver(self, event: Event) -> None:
            if event.payload == "no":
                raise outbox.PermanentError("refused")

    results = await Picky().deliver_batch([make_event(payload="yes"), make_event(payload="no")])
    assert results[0] is None
    assert isinstance(results[1], outbox.PermanentError)


async def test_a_sink_raising_cancelled_fails_that_event_alone() -> None:
    class Flaky(Sink):
        concurrency = 1

        def __init__(self) -> None:
            super().__init__()
            self.delivered: list[int] = []

        async def deliver(self, event: Event) -> None:
            if event.payload == "cancel":
                raise asyncio.CancelledError
            self.delivered.append(event.id)

    events = [make_event(), make_event(payload="cancel"), make_event()]
    sink = Flaky()
    sink.delivery_timeout = 5
    results = await sink.deliver_batch(events)
    assert results[0] is None
    assert results[2] is None
    assert isinstance(results[1], outbox.RetryableError)
    assert sink.delivered == [events[0].id, events[2].id]


async def test_a_cancelled_batch_stops_delivering() -> None:
    sink = Slow(set())
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(0.015):
            await sink.deliver_batch([make_event() for _ in range(10)])
    delivered = len(sink.delivered)
    await asyncio.sleep(0.05)
    assert len(sink.delivered) == delivered < 10
    assert sink.running == 0


async def test_the_callers_timeout_is_each_events_deadline() -> None:
    events = [make_event() for _ in range(3)]
    sink = Slow({events[1].id})
    results = await sink.deliver_batch(events, timeout=0.3)
    assert [result is None for result in results] == [True, False, True]
    assert "timed out after 0.3s" in str(results[1])
    assert sink.delivery_timeout is None


async def test_the_shorter_of_the_two_deadlines_wins() -> None:
    events = [make_event() for _ in range(2)]
    own_shorter = Slow({events[0].id})
    own_shorter.delivery_timeout = 0.2
    [late, _] = await own_shorter.deliver_batch(events, timeout=30)
    assert "timed out after 0.2s" in str(late)

    callers_shorter = Slow({events[0].id})
    callers_shorter.delivery_timeout = 30
    [late, _] = await callers_shorter.deliver_batch(events, timeout=0.2)
    assert "timed out after 0.2s" in str(late)


async def test_a_sink_with_only_deliver_batch_delivers_one_event_as_a_batch_of_one() -> None:
    class BatchOnly(Sink):
        def __init__(self) -> None:
            super().__init__()
            self.batches: list[list[int]] = []

        async def deliver_batch(
            self,
            events: Sequence[Event],
            *,
            timeout: float | None = None,  # noqa: ASYNC109 (the base class's signature)
        ) -> list[BaseException | None]:
            self.batches.append([event.id for event in events])
            return [PermanentError("refused") if event.key == "bad" else None for event in events]

    sink = BatchOnly()
    good, bad = make_event(), make_event(key="bad")
    await sink.deliver(good)
    with pytest.raises(PermanentError, match="refused"):
        await sink.deliver(bad)
    assert sink.batches == [[good.id], [bad.id]]
    with pytest.raises(NotImplementedError):
        await Sink().deliver(good)  # neither overridden
