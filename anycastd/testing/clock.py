"""A fake monotonic clock for asyncio code that takes its time from an injected clock.

In the spirit of trio's MockClock: virtual time only moves when the test says so, and it
moves in order through every pending deadline, so tests assert exact times and run in
microseconds of real time. It implements the same small protocol as the real clock of
``anycastd.engine.scheduler`` (``now``, ``sleep_until``, ``timeout_at``).

Typical use::

    clock = FakeClock()
    task = asyncio.create_task(code_under_test(clock))
    await clock.run_until(10.0)      # wakes every sleeper due by t=10, in time order
    assert ...                        # state at exactly t=10

``run_until`` lets the event loop settle (run every ready callback) before each jump, so
work triggered by one wakeup (including new sleeps) is in place before time moves on.
Code under test must not mix the fake clock with real timers (``asyncio.sleep(>0)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

__all__ = ["FakeClock"]

_SETTLE_MAX_ROUNDS = 10_000


@dataclass(order=True)
class _Timer:
    when: float
    seq: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)


class FakeClock:
    """Virtual monotonic time; advance it with :meth:`run_until` / :meth:`advance`."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._timers: list[_Timer] = []
        self._seq = itertools.count()

    # ---- the Clock protocol

    def now(self) -> float:
        return self._now

    async def sleep_until(self, t: float) -> None:
        """Return once virtual time reaches ``t`` (always yields to the loop once)."""
        if t <= self._now:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        timer = self._call_at(t, wake)
        try:
            await fut
        finally:
            timer.cancelled = True

    async def sleep(self, dt: float) -> None:
        await self.sleep_until(self._now + dt)

    @contextlib.asynccontextmanager
    async def timeout_at(self, t: float) -> AsyncIterator[None]:
        """Like ``asyncio.timeout_at`` but on virtual time: raises TimeoutError when the
        block is still running once virtual time reaches ``t``."""
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("timeout_at must be used inside a task")
        fired = False

        def expire() -> None:
            nonlocal fired
            fired = True
            task.cancel()

        timer = self._call_at(t, expire)
        if t <= self._now:
            timer.cancelled = True
            expire()
        try:
            yield
        except asyncio.CancelledError:
            if fired and task.uncancel() == 0:
                raise TimeoutError from None
            raise
        finally:
            timer.cancelled = True

    # ---- driving time

    @property
    def next_deadline(self) -> float | None:
        """The earliest pending wakeup, or None."""
        self._drop_cancelled()
        return self._timers[0].when if self._timers else None

    @property
    def pending(self) -> int:
        """Number of pending (not cancelled) wakeups."""
        return sum(1 for t in self._timers if not t.cancelled)

    async def settle(self) -> None:
        """Run the event loop until no callback is ready (timers on the fake clock do not
        count). Falls back to a fixed number of yields where the loop hides its queue."""
        loop = asyncio.get_running_loop()
        ready = getattr(loop, "_ready", None)  # asyncio.BaseEventLoop's ready queue
        for _ in range(_SETTLE_MAX_ROUNDS if ready is not None else 100):
            await asyncio.sleep(0)
            if ready is not None and not ready:
                # one more round: callbacks may have been scheduled by the last one
                await asyncio.sleep(0)
                if not ready:
                    return

    async def run_until(self, t: float) -> None:
        """Advance virtual time to ``t``, firing every wakeup due by then in time order
        and letting the loop settle after each one."""
        await self.settle()
        while True:
            self._drop_cancelled()
            if not self._timers or self._timers[0].when > t:
                break
            timer = heapq.heappop(self._timers)
            self._now = max(self._now, timer.when)
            timer.callback()
            # fire everything due at the same instant before settling
            while self._timers and self._timers[0].when <= self._now:
                same = heapq.heappop(self._timers)
                if not same.cancelled:
                    same.callback()
            await self.settle()
        self._now = max(self._now, t)
        await self.settle()

    async def advance(self, dt: float) -> None:
        """``run_until(now + dt)``."""
        await self.run_until(self._now + dt)

    # ---- internals

    def _call_at(self, t: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(t, next(self._seq), callback)
        heapq.heappush(self._timers, timer)
        return timer

    def _drop_cancelled(self) -> None:
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)
