"""The suspect gate: a relay's claim may take a suspect only with nothing else in flight, and
nothing else is claimed while a suspect is (docs/decisions/0010-poison-events.md)."""

from __future__ import annotations

import asyncio

from outbox.suspects import SuspectGate


async def _settle_loop() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_one_worker_may_always_take_a_suspect() -> None:
    gate = SuspectGate()
    for _ in range(3):
        async with gate.turn() as turn:
            assert turn.may_take_suspect
            await turn.claimed(suspect=False)


async def test_a_second_worker_does_not_take_suspects_beside_a_batch_in_flight() -> None:
    gate = SuspectGate()
    async with gate.turn() as first:
        await first.claimed(suspect=False)
        async with gate.turn() as second:
            assert first.may_take_suspect
            assert not second.may_take_suspect


async def test_nothing_is_claimed_beside_a_suspect_in_flight() -> None:
    gate = SuspectGate()
    entered = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with gate.turn() as turn:
            await turn.claimed(suspect=True)
            await release.wait()

    async def other() -> None:
        async with gate.turn():
            entered.set()

    held = asyncio.create_task(holder())
    await _settle_loop()
    waiting = asyncio.create_task(other())
    await _settle_loop()
    assert not entered.is_set(), "a batch was claimed beside a suspect"
    release.set()
    await asyncio.gather(held, waiting)
    assert entered.is_set()


async def test_known_suspects_make_a_busy_relay_finish_its_batches_then_take_one() -> None:
    gate = SuspectGate()
    release = asyncio.Event()
    order: list[str] = []

    async def busy() -> None:
        async with gate.turn() as turn:
            await turn.claimed(suspect=False)
            await release.wait()
            order.append("busy batch ended")

    async def taker() -> None:
        async with gate.turn() as turn:
            order.append(f"claim, may take a suspect: {turn.may_take_suspect}")
            await turn.claimed(suspect=False)

    running = asyncio.create_task(busy())
    await _settle_loop()
    gate.suspects_waiting()
    claiming = asyncio.create_task(taker())
    await _settle_loop()
    assert order == [], "the suspect claim did not wait for the batch in flight"
    release.set()
    await asyncio.gather(running, claiming)
    assert order == ["busy batch ended", "claim, may take a suspect: True"]
