"""anycastd.testing.clock.FakeClock: virtual time moves only when told, in deadline order."""

from __future__ import annotations

import asyncio

import pytest

from anycastd.testing.clock import FakeClock


async def test_sleepers_wake_in_deadline_order_at_their_exact_times() -> None:
    clock = FakeClock(start=100.0)
    woke: list[tuple[str, float]] = []

    async def sleeper(name: str, t: float) -> None:
        await clock.sleep_until(t)
        woke.append((name, clock.now()))

    tasks = [asyncio.create_task(sleeper(n, t)) for n, t in [("b", 103), ("a", 101), ("c", 109)]]
    await clock.run_until(105.0)
    assert woke == [("a", 101.0), ("b", 103.0)]
    assert clock.now() == 105.0
    assert clock.next_deadline == 109.0
    await clock.advance(10.0)
    assert woke[-1] == ("c", 109.0)
    assert clock.now() == 115.0
    await asyncio.gather(*tasks)


async def test_a_chain_of_sleeps_follows_virtual_time() -> None:
    clock = FakeClock()
    seen: list[float] = []

    async def ticker() -> None:
        for _ in range(4):
            await clock.sleep(0.25)
            seen.append(clock.now())

    task = asyncio.create_task(ticker())
    await clock.run_until(10.0)
    assert seen == [0.25, 0.5, 0.75, 1.0]
    await task


async def test_timeout_at_raises_exactly_at_the_deadline() -> None:
    clock = FakeClock()
    outcome: list[tuple[str, float]] = []

    async def slow() -> None:
        try:
            async with clock.timeout_at(2.0):
                await clock.sleep_until(5.0)
        except TimeoutError:
            outcome.append(("timeout", clock.now()))

    task = asyncio.create_task(slow())
    await clock.run_until(1.999)
    assert outcome == []
    await clock.run_until(3.0)
    assert outcome == [("timeout", 2.0)]
    assert clock.pending == 0
    await task


async def test_timeout_at_does_not_fire_when_the_block_finishes_in_time() -> None:
    clock = FakeClock()

    async def quick() -> str:
        async with clock.timeout_at(2.0):
            await clock.sleep_until(1.0)
        await clock.sleep_until(3.0)  # past the old deadline: no stray cancellation
        return "done"

    task = asyncio.create_task(quick())
    await clock.run_until(4.0)
    assert await task == "done"


async def test_outer_cancellation_is_not_turned_into_a_timeout() -> None:
    clock = FakeClock()

    async def guarded() -> None:
        async with clock.timeout_at(10.0):
            await clock.sleep_until(20.0)

    task = asyncio.create_task(guarded())
    await clock.run_until(1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.pending == 0
