"""The controller shell on virtual time: fakes for every actuator, a states dict we change.

The controller runs its blocking actuators through ``asyncio.to_thread``; a thread's
completion reaches the loop outside ``FakeClock.settle``. So time is moved with
:func:`Harness.run_until`: one fake-clock deadline at a time, each followed by a (real-time)
wait until the controller sits in its sleep again. Virtual times asserted here are exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from anycastd.config import Config, loads
from anycastd.core.desired import RealServerKey
from anycastd.core.health import ServiceState
from anycastd.engine.controller import Controller
from anycastd.engine.world import bgp_settings
from anycastd.errors import ActuatorError, PermanentError, TransientError
from anycastd.model import (
    GRACEFUL_SHUTDOWN,
    AddAddress,
    Address,
    AddressAction,
    EditRealServer,
    IpvsAction,
    LoopbackObserved,
    RealServer,
    Route,
    VirtualService,
)
from anycastd.testing.clock import FakeClock
from anycastd.testing.exabgp import FakeSpeaker
from anycastd.testing.ipvs import FakeIpvs
from anycastd.testing.loopback import FakeLoopback
from tests.unit.configs import CONTROLLER_HEAD

UP, DOWN = ServiceState.UP, ServiceState.DOWN
#: a planned take-down: it demotes and drains (a failure, DOWN, withdraws at once)
MAINTENANCE = ServiceState.MAINTENANCE

#: ``web``: an IPVS service; ``dns``: a plain one. Both drain for 10 s by default.
WEB = """
[services.web]
prefixes = ["192.0.2.10/32"]
drain_time = "10s"
shutdown = "{shutdown}"
[[services.web.checks]]
type = "file"
path = "/nonexistent/web"
[services.web.ipvs]
port = 80
min_healthy = {min_healthy}
[[services.web.ipvs.real_servers]]
address = "10.1.0.1"
[[services.web.ipvs.real_servers]]
address = "10.1.0.2"
"""

DNS = """
[services.dns]
prefixes = ["192.0.2.53/32"]
drain_time = "10s"
shutdown = "{shutdown}"
[[services.dns.checks]]
type = "file"
path = "/nonexistent/dns"
"""

WEB_PREFIX, DNS_PREFIX = "192.0.2.10/32", "192.0.2.53/32"
WEB_VS = VirtualService("tcp", "192.0.2.10", 80)
RS1: RealServerKey = ("web", "10.1.0.1", 80)
RS2: RealServerKey = ("web", "10.1.0.2", 80)


def config(*, web: bool = True, dns: bool = False, shutdown: str = "drain-then-withdraw",
           min_healthy: int = 1) -> Config:
    text = CONTROLLER_HEAD
    if web:
        text += WEB.format(shutdown=shutdown, min_healthy=min_healthy)
    if dns:
        text += DNS.format(shutdown=shutdown)
    return loads(text)


# ---- fakes that also write one shared journal (virtual time, actuator, what) -------------


Journal = list[tuple[float, str, str]]


class JournalLoopback(FakeLoopback):
    def __init__(self, clock: FakeClock, journal: Journal) -> None:
        super().__init__("lo")
        self._clock, self._journal = clock, journal

    def apply(self, actions: Sequence[AddressAction]) -> None:
        try:
            super().apply(actions)
        finally:
            for a in actions:
                verb = "add" if isinstance(a, AddAddress) else "remove"
                self._journal.append((self._clock.now(), "lo", f"{verb} {a.address}"))

    def holds(self, prefix: str) -> bool:
        ip = ipaddress.ip_interface(prefix).ip
        return any(a.ip == ip for a in self.addresses)


class JournalIpvs(FakeIpvs):
    def __init__(self, clock: FakeClock, journal: Journal) -> None:
        super().__init__()
        self._clock, self._journal = clock, journal

    def apply(self, actions: Sequence[IpvsAction]) -> None:
        start = len(self.history)
        try:
            super().apply(actions)
        finally:
            for op, target in self.history[start:]:
                self._journal.append((self._clock.now(), "ipvs", f"{op} {target}"))

    def weights(self, vs: VirtualService) -> dict[str, int]:
        return {
            f"{ors.server.address}:{ors.server.port}": ors.server.weight
            for ors in self.observe().services[vs].real_servers
        }


class JournalSpeaker(FakeSpeaker):
    def __init__(self, clock: FakeClock, journal: Journal, cfg: Config) -> None:
        assert cfg.bgp is not None
        super().__init__(bgp_settings(cfg.bgp))
        self._clock, self._journal = clock, journal

    async def set_routes(self, routes: Iterable[Route]) -> None:
        routes = tuple(routes)
        await super().set_routes(routes)
        shown = ", ".join(
            " ".join((r.prefix, *r.attributes.communities))
            for r in sorted(routes, key=lambda r: r.prefix)
        )
        self._journal.append((self._clock.now(), "bgp", f"routes [{shown}]"))


class SleepTrackingClock(FakeClock):
    """A FakeClock that knows when someone waits on it (the controller's sleep)."""

    def __init__(self) -> None:
        super().__init__()
        self.sleepers = 0

    async def sleep_until(self, t: float) -> None:
        self.sleepers += 1
        try:
            await super().sleep_until(t)
        finally:
            self.sleepers -= 1

    @contextlib.asynccontextmanager
    async def timeout_at(self, t: float) -> AsyncIterator[None]:
        self.sleepers += 1
        try:
            async with super().timeout_at(t):
                yield
        finally:
            self.sleepers -= 1


class NoJitter(random.Random):
    """Backoff jitter pinned to its upper bound, so retry times are exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


@dataclass
class Harness:
    cfg: Config
    clock: SleepTrackingClock = field(default_factory=SleepTrackingClock)
    journal: Journal = field(default_factory=list)
    states: dict[str, ServiceState] = field(default_factory=dict)
    rs_up: dict[RealServerKey, bool] = field(default_factory=lambda: {RS1: True, RS2: True})
    ready: Callable[[], bool] = lambda: True
    startup_hold: float = 0.0
    task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.lo = JournalLoopback(self.clock, self.journal)
        self.ipvs = JournalIpvs(self.clock, self.journal)
        self.speaker = JournalSpeaker(self.clock, self.journal, self.cfg)
        assert self.cfg.bgp is not None
        self.ctl = Controller(
            self.cfg,
            loopback=self.lo,
            ipvs=self.ipvs,
            speaker=self.speaker,
            bgp_settings=bgp_settings(self.cfg.bgp),
            states=lambda: dict(self.states),
            real_servers_up=lambda: dict(self.rs_up),
            clock=self.clock,
            rng=NoJitter(),
        )

    # -- driving

    async def start(self) -> None:
        self.task = asyncio.create_task(
            self.ctl.run(ready=self.ready, startup_hold=self.startup_hold)
        )
        await self.idle()

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def idle(self, waiter: asyncio.Task[Any] | None = None) -> None:
        """Real-time wait until the controller sleeps on the fake clock (or ``waiter`` is
        done): its worker-thread calls have come back and nothing is ready to run."""
        for _ in range(4000):
            await self.clock.settle()
            if self.clock.sleepers > 0 or (waiter is not None and waiter.done()):
                return
            await asyncio.sleep(0.0005)
        raise AssertionError("the controller never went back to sleep")

    async def run_until(self, t: float, waiter: asyncio.Task[Any] | None = None) -> None:
        """Virtual time to ``t``, one wakeup at a time, each pass finished before the next."""
        while True:
            await self.idle(waiter)
            due = self.clock.next_deadline
            if due is None or due > t:
                break
            await self.clock.run_until(due)
        await self.clock.run_until(t)
        await self.idle(waiter)

    def poke(self) -> None:
        self.ctl.poke()

    # -- reading the world

    def announced(self) -> dict[str, tuple[str, ...]]:
        """prefix -> communities, as the (fake) peers see it."""
        return {p: a.communities for p, a in self.speaker.announced.items()}

    def since(self, t: float) -> list[tuple[float, str, str]]:
        return [j for j in self.journal if j[0] >= t]

    def writes(self) -> tuple[int, int, int]:
        return self.lo.writes, self.ipvs.writes, self.speaker.calls


async def converged(h: Harness) -> None:
    """Bring ``h`` up with every service UP, controller running, at virtual t=0."""
    for name in h.cfg.services:
        h.states[name] = UP
    await h.start()
    assert set(h.announced()) == {str(p) for s in h.cfg.services.values() for p in s.prefixes}


# ---- bring-up and take-down -------------------------------------------------------------------


async def test_bring_up_adds_the_address_then_ipvs_then_announces() -> None:
    h = Harness(config())
    h.states["web"] = UP
    await h.ctl.reconcile()

    kinds = [kind for _, kind, _ in h.journal]
    assert kinds == ["lo", "ipvs", "ipvs", "ipvs", "bgp"]
    assert h.journal[0] == (0.0, "lo", "add 192.0.2.10/32")
    assert h.journal[-1] == (0.0, "bgp", "routes [192.0.2.10/32]")
    assert h.ipvs.weights(WEB_VS) == {"10.1.0.1:80": 1, "10.1.0.2:80": 1}
    assert h.announced() == {WEB_PREFIX: ()}


async def test_planned_take_down_demotes_waits_drain_time_then_withdraws_then_cleans_up() -> None:
    h = Harness(config(web=False, dns=True))
    await converged(h)

    h.states["dns"] = MAINTENANCE
    h.poke()
    await h.run_until(0.0)
    assert h.announced() == {DNS_PREFIX: (GRACEFUL_SHUTDOWN,)}  # demoted, still announced
    assert h.lo.holds(DNS_PREFIX)

    await h.run_until(9.999)
    assert h.announced() == {DNS_PREFIX: (GRACEFUL_SHUTDOWN,)}
    assert h.lo.holds(DNS_PREFIX)

    await h.run_until(10.0)
    assert h.announced() == {}
    assert not h.lo.holds(DNS_PREFIX)
    assert [(t, what) for t, _, what in h.since(0.0) if _ != "ipvs"][-3:] == [
        (0.0, f"routes [{DNS_PREFIX} {GRACEFUL_SHUTDOWN}]"),
        (10.0, "routes []"),
        (10.0, f"remove {DNS_PREFIX}"),
    ]
    await h.stop()


async def test_planned_ipvs_take_down_withdraws_before_weights_drop_and_address_goes() -> None:
    h = Harness(config())
    await converged(h)
    h.ipvs.set_connections(WEB_VS, "10.1.0.1", 80, active=5)  # a drain that is not quiet

    h.states["web"] = MAINTENANCE
    h.poke()
    await h.run_until(9.999)
    assert h.announced() == {WEB_PREFIX: (GRACEFUL_SHUTDOWN,)}
    assert h.ipvs.weights(WEB_VS) == {"10.1.0.1:80": 1, "10.1.0.2:80": 1}  # still serving

    await h.run_until(10.0)
    after = [(kind, what) for t, kind, what in h.since(0.0) if t == 10.0]
    assert after[0] == ("bgp", "routes []")
    assert after[-1] == ("lo", f"remove {WEB_PREFIX}")
    assert {k for k, _ in after[1:-1]} == {"ipvs"}
    assert h.ipvs.weights(WEB_VS) == {"10.1.0.1:80": 0, "10.1.0.2:80": 0}  # idle, kept
    await h.stop()


async def test_a_service_that_recovers_during_its_drain_is_promoted_without_a_withdraw() -> None:
    h = Harness(config(web=False, dns=True))
    await converged(h)
    mark = len(h.journal)
    h.states["dns"] = MAINTENANCE
    h.poke()
    await h.run_until(4.0)
    assert h.announced() == {DNS_PREFIX: (GRACEFUL_SHUTDOWN,)}

    h.states["dns"] = UP
    h.poke()
    await h.run_until(20.0)
    assert h.announced() == {DNS_PREFIX: ()}
    assert [(t, what) for t, kind, what in h.journal[mark:] if kind == "bgp"] == [
        (0.0, f"routes [{DNS_PREFIX} {GRACEFUL_SHUTDOWN}]"),
        (4.0, f"routes [{DNS_PREFIX}]"),  # straight back: never "routes []"
    ]
    assert h.lo.holds(DNS_PREFIX)
    await h.stop()


async def test_withdraw_settle_delays_the_clean_up_after_a_withdraw_not_the_withdraw() -> None:
    h = Harness(config(web=False, dns=True, shutdown="withdraw"))
    await converged(h)
    h.ctl.withdraw_settle = 0.05
    await h.stop()

    assert await shutdown(h, 0.05) is True
    assert [(t, kind, what) for t, kind, what in h.since(0.0)][-2:] == [
        (0.0, "bgp", "routes []"),
        (0.05, "lo", f"remove {DNS_PREFIX}"),
    ]


# ---- failures ------------------------------------------------------------------------------


async def test_transient_error_is_retried_with_backoff_and_nothing_is_marked_done() -> None:
    h = Harness(config(web=False, dns=True))
    h.states["dns"] = UP
    h.lo.fail_next(TransientError("loopback", "EBUSY"), count=2)
    await h.start()

    assert h.lo.writes == 1
    assert not h.lo.holds(DNS_PREFIX)
    assert h.announced() == {}
    assert h.speaker.calls == 0
    await h.run_until(0.499)
    assert h.lo.writes == 1
    await h.run_until(0.5)  # first retry: 0.5 s
    assert h.lo.writes == 2
    assert h.announced() == {}
    await h.run_until(1.499)
    assert h.lo.writes == 2
    await h.run_until(1.5)  # second retry: 1 s later; the fake stopped failing
    assert h.lo.holds(DNS_PREFIX)
    assert h.announced() == {DNS_PREFIX: ()}
    assert [t for t, kind, _ in h.journal if kind == "lo"] == [0.0, 0.5, 1.5]
    await h.stop()


@pytest.mark.parametrize(("error", "level"), [
    (TransientError("loopback", "EBUSY"), logging.WARNING),  # retried with backoff
    (PermanentError("loopback", "EPERM"), logging.ERROR),  # left as drift
])
async def test_a_failed_change_is_logged_at_the_level_of_its_kind(
    error: ActuatorError, level: int, caplog: pytest.LogCaptureFixture
) -> None:
    """``journalctl -p err`` shows what needs a person, not each retried hiccup (every
    managed ExaBGP restart has one: the pass that finds the relay away)."""
    caplog.set_level(logging.INFO)
    h = Harness(config(web=False, dns=True))
    h.states["dns"] = UP
    h.lo.fail_next(error)
    await h.start()
    (failed,) = [r for r in caplog.records if r.getMessage() == "actuator_error"]
    assert failed.levelno == level
    await h.stop()


async def test_permanent_error_waits_the_reconcile_interval() -> None:
    h = Harness(config(web=False, dns=True))
    h.states["dns"] = UP
    h.lo.fail_next(PermanentError("loopback", "EPERM"))
    await h.start()
    assert h.lo.writes == 1
    assert h.announced() == {}

    await h.run_until(29.999)
    assert h.lo.writes == 1
    assert h.announced() == {}
    await h.run_until(30.0)
    assert h.lo.writes == 2
    assert h.announced() == {DNS_PREFIX: ()}
    await h.stop()


async def test_speaker_failure_leaves_the_route_unannounced_until_a_retry_succeeds() -> None:
    h = Harness(config(web=False, dns=True))
    h.states["dns"] = UP
    h.speaker.disconnect()
    await h.start()
    assert h.lo.holds(DNS_PREFIX)
    assert h.announced() == {}

    h.speaker.reconnect()
    await h.run_until(0.5)  # transient: backoff 0.5 s
    assert h.announced() == {DNS_PREFIX: ()}
    await h.stop()


# ---- steady state and drift ------------------------------------------------------------------


async def test_converged_passes_make_no_writes_and_no_set_routes_call() -> None:
    h = Harness(config(dns=True))
    await converged(h)
    before, passes = h.writes(), h.ctl.passes

    h.poke()
    await h.run_until(95.0)  # a poke plus the timer passes at 30, 60 and 90
    assert h.ctl.passes >= passes + 4
    assert h.writes() == before
    assert h.ctl.last_plan is not None
    assert h.ctl.last_plan.steps == ()
    await h.stop()


async def test_address_removed_behind_our_back_is_restored_by_the_next_timer_pass() -> None:
    h = Harness(config(web=False, dns=True))
    await converged(h)
    h.lo.addresses.discard(Address(ipaddress.ip_address("192.0.2.53"), 32, owned=True))

    await h.run_until(29.999)
    assert not h.lo.holds(DNS_PREFIX)
    await h.run_until(30.0)
    assert h.lo.holds(DNS_PREFIX)
    assert h.announced() == {DNS_PREFIX: ()}
    # never announced without its address: the route goes first, comes back last
    assert [(kind, what) for _, kind, what in h.since(30.0)] == [
        ("bgp", "routes []"),
        ("lo", f"add {DNS_PREFIX}"),
        ("bgp", f"routes [{DNS_PREFIX}]"),
    ]
    await h.stop()


# ---- start-up hold ------------------------------------------------------------------------


async def test_no_pass_before_ready() -> None:
    ready = False
    h = Harness(config(web=False, dns=True), ready=lambda: ready, startup_hold=5.0)
    h.states["dns"] = UP
    await h.start()

    await h.run_until(2.0)
    assert h.ctl.passes == 0
    assert h.journal == []
    ready = True
    await h.run_until(2.1 + 1e-9)  # readiness is looked at every 0.1 s
    assert h.ctl.passes >= 1
    assert h.announced() == {DNS_PREFIX: ()}
    await h.stop()


async def test_startup_hold_expiry_starts_the_controller_anyway() -> None:
    h = Harness(config(web=False, dns=True), ready=lambda: False, startup_hold=5.0)
    h.states["dns"] = UP
    await h.start()

    await h.run_until(4.95)
    assert h.ctl.passes == 0
    assert h.journal == []
    await h.run_until(5.0)
    assert h.ctl.passes >= 1
    assert h.announced() == {DNS_PREFIX: ()}
    await h.stop()


# ---- shutdown ------------------------------------------------------------------------------


async def shutdown(h: Harness, until: float) -> bool:
    task = asyncio.create_task(h.ctl.shutdown(60.0))
    await h.run_until(until, waiter=task)
    assert task.done(), f"shutdown still running at t={h.clock.now()}"
    return task.result()


async def test_shutdown_withdraw_withdraws_at_once_and_removes_everything() -> None:
    h = Harness(config(shutdown="withdraw"))
    await converged(h)
    await h.stop()

    assert await shutdown(h, 0.0) is True
    assert h.announced() == {}
    assert not h.lo.holds(WEB_PREFIX)
    assert h.ipvs.table == {}
    assert all(GRACEFUL_SHUTDOWN not in what for _, _, what in h.journal)  # no demote


async def test_shutdown_drain_then_withdraw_demotes_for_drain_time_first() -> None:
    h = Harness(config(web=False, dns=True))
    await converged(h)
    await h.stop()
    task = asyncio.create_task(h.ctl.shutdown(60.0))

    await h.run_until(9.999, waiter=task)
    assert not task.done()
    assert h.announced() == {DNS_PREFIX: (GRACEFUL_SHUTDOWN,)}
    await h.run_until(10.0, waiter=task)
    assert task.done()
    assert task.result() is True
    assert h.announced() == {}
    assert not h.lo.holds(DNS_PREFIX)


async def test_shutdown_keep_leaves_the_world_as_it_is() -> None:
    h = Harness(config(shutdown="keep"))
    await converged(h)
    await h.stop()
    before = h.writes()

    assert await shutdown(h, 0.0) is True
    assert h.writes() == before
    assert h.announced() == {WEB_PREFIX: ()}
    assert h.lo.holds(WEB_PREFIX)
    assert h.ipvs.weights(WEB_VS) == {"10.1.0.1:80": 1, "10.1.0.2:80": 1}


# ---- backends ------------------------------------------------------------------------------


async def test_service_with_fewer_healthy_real_servers_than_min_healthy_is_not_announced() -> None:
    h = Harness(config(min_healthy=2))
    h.states["web"] = UP
    h.rs_up[RS2] = False
    await h.ctl.reconcile()
    assert h.announced() == {}
    assert h.speaker.calls == 0
    assert not h.lo.holds(WEB_PREFIX)

    h.rs_up[RS2] = True  # the second real server comes back: now it may be announced
    await h.ctl.reconcile()
    assert h.announced() == {WEB_PREFIX: ()}


async def test_ipvs_weight_changed_behind_our_back_is_restored_by_the_next_timer_pass() -> None:
    h = Harness(config())
    await converged(h)
    zero = RealServer("10.1.0.2", 80, 0)
    h.ipvs.apply([EditRealServer(WEB_VS, zero)])  # someone's ipvsadm -e

    await h.run_until(29.999)
    assert h.ipvs.weights(WEB_VS) == {"10.1.0.1:80": 1, "10.1.0.2:80": 0}
    await h.run_until(30.0)
    assert h.ipvs.weights(WEB_VS) == {"10.1.0.1:80": 1, "10.1.0.2:80": 1}
    assert h.announced() == {WEB_PREFIX: ()}  # min_healthy 1 held throughout: no withdraw
    assert all(kind != "bgp" for t, kind, _ in h.journal if t > 0.0)
    await h.stop()


# ---- ownership and adoption -----------------------------------------------------------------


async def test_a_foreign_address_is_used_but_never_removed() -> None:
    h = Harness(config(web=False, dns=True, shutdown="withdraw"))
    h.lo.add_foreign(DNS_PREFIX)  # an operator's `ip addr add`
    await converged(h)
    await h.stop()

    assert await shutdown(h, 0.0) is True
    assert h.announced() == {}
    assert Address(ipaddress.ip_address("192.0.2.53"), 32, owned=False) in h.lo.addresses


async def test_a_restarted_controller_adopts_the_world_without_a_single_write() -> None:
    first = Harness(config(dns=True))
    await converged(first)
    await first.stop()
    before = first.writes()

    # a new controller (fresh state) over the same kernel and speaker
    assert first.cfg.bgp is not None
    again = Controller(
        first.cfg, loopback=first.lo, ipvs=first.ipvs, speaker=first.speaker,
        bgp_settings=bgp_settings(first.cfg.bgp), states=lambda: dict(first.states),
        real_servers_up=lambda: dict(first.rs_up), clock=first.clock,
    )
    result = await again.reconcile()
    assert result.steps == ()
    assert first.writes() == before
    assert first.announced() == {WEB_PREFIX: (), DNS_PREFIX: ()}


# Regression (core/plan.py _take_down): an IPVS prefix with no active connections is withdrawn in
# the same instant it is demoted; the peers never get to act on 65535:0.
async def test_ipvs_drain_without_connections_still_holds_the_demote_for_a_while() -> None:
    h = Harness(config())
    await converged(h)
    h.states["web"] = MAINTENANCE
    h.poke()
    await h.run_until(0.0)
    assert h.announced() == {WEB_PREFIX: (GRACEFUL_SHUTDOWN,)}  # once withdrawn at t=0
    await h.run_until(10.0)
    assert h.announced() == {}
    await h.stop()


class SlowLoopback(JournalLoopback):
    """``apply`` blocks (in its worker thread) until released; counts overlapping calls."""

    def __init__(self, clock: FakeClock, journal: Journal) -> None:
        super().__init__(clock, journal)
        self.release, self.entered = threading.Event(), threading.Event()
        self.inside = self.overlap = 0
        self._mu = threading.Lock()

    def _enter(self) -> None:
        with self._mu:
            self.inside += 1
            self.overlap = max(self.overlap, self.inside)

    def _leave(self) -> None:
        with self._mu:
            self.inside -= 1

    def observe(self) -> LoopbackObserved:
        self._enter()
        try:
            return super().observe()
        finally:
            self._leave()

    def apply(self, actions: Sequence[AddressAction]) -> None:
        self._enter()
        try:
            self.entered.set()
            self.release.wait(5)
            super().apply(actions)
        finally:
            self._leave()


# Regression (engine/controller.py): cancelling run() (the daemon does, right before shutdown())
# abandons a worker thread mid-apply; shutdown() then observes and writes concurrently and can
# report complete before that apply lands.
async def test_shutdown_after_a_cancelled_pass_waits_for_its_actuator_call() -> None:
    h = Harness(config(web=False, dns=True))
    h.lo = SlowLoopback(h.clock, h.journal)
    h.ctl.loopback = h.lo
    h.states["dns"] = UP
    task = asyncio.create_task(h.ctl.run(ready=lambda: True, startup_hold=0.0))
    while not h.lo.entered.is_set():  # the bring-up's address add is in its thread
        await asyncio.sleep(0.001)
    task.cancel()  # what Daemon._main_loop does, then it awaits controller.shutdown()
    stop = asyncio.create_task(h.ctl.shutdown(60.0))
    await asyncio.sleep(0.05)
    h.lo.release.set()
    await h.run_until(11.0, waiter=stop)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    while h.lo.inside:  # the abandoned thread could still run
        await asyncio.sleep(0.001)
    assert stop.result() is True
    assert not h.lo.holds(DNS_PREFIX)  # once: the abandoned add landed after "complete"
    assert h.lo.overlap == 1  # once: 2 (observe ran while the old apply was in its thread)


# Regression (engine/controller.py reconcile): an ActuatorError from *observing* (netlink refused,
# interface gone, IPVS dump failed) escapes reconcile() and kills run(); in the daemon that
# ends the TaskGroup with a traceback and no shutdown policy. Expected: a failed pass, retried.
async def test_an_observe_failure_is_a_failed_pass_retried_later_not_a_crash() -> None:
    h = Harness(config(web=False, dns=True))
    await converged(h)
    h.lo.interface_present = False  # `ip link del`: observe answers ENODEV (permanent)
    h.lo.addresses.clear()
    h.poke()
    await h.run_until(0.0, waiter=h.task)
    assert h.task is not None
    assert not h.task.done()  # once: done, with PermanentError

    h.lo.interface_present = True  # the interface is back, empty
    await h.run_until(29.999)
    assert not h.lo.holds(DNS_PREFIX)
    await h.run_until(30.0)  # permanent: retried after reconcile_interval
    assert h.lo.holds(DNS_PREFIX)
    assert h.announced() == {DNS_PREFIX: ()}
    await h.stop()


def test_backoff_stays_at_its_cap_however_long_failures_last() -> None:
    # Regression: 2**failures overflowed a float after 1024 failures (~8 h of retries).
    from anycastd.engine.controller import _Backoff

    backoff = _Backoff()
    delays = [backoff.next(random.Random(1)) for _ in range(3000)]
    assert max(delays) <= backoff.cap
    assert delays[-1] >= 0.8 * backoff.cap
