"""The reconcile loop: health verdicts -> desired state -> ordered actuator steps.

Rule: the only caller of the actuators' ``apply`` and of ``Speaker.set_routes``. Every pass
observes the world (kernel addresses, IPVS table, the speaker's RIB-out), computes the
desired state from the current health (pure, ``core.desired``), plans (pure, ``core.plan``)
and runs the steps in order, stopping at the first failure. A failure never marks anything
done: the next pass observes again and plans again (the planner's state advances only from
observation). Passes run on every health edge (``poke``), when the planner asks to be woken
(a drain ending), after a failure (transient: exponential backoff; permanent: the reconcile
interval, so an operator's fix is picked up without a tight loop), and on the reconcile
timer (drift repair: a hand-removed address comes back).

Start-up adoption: the first pass waits until every service's health is *settled* (each
check either up, or down with at least one failed result), capped by ``startup_hold``, so a
restart of anycastd with healthy services finds them UP before it plans anything: no
withdraw/announce flap, no address or weight churn.

Blocking actuators (netlink) run in a worker thread, one call at a time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import random
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from anycastd.actuators.frr import OspfActuator
from anycastd.actuators.ipvs import IpvsActuator
from anycastd.actuators.loopback import LoopbackActuator
from anycastd.actuators.policyroute import PolicyRouteActuator
from anycastd.actuators.realserver import RealServerActuator
from anycastd.bgp.protocol import Speaker
from anycastd.config import Config
from anycastd.core.desired import Desired, RealServerKey
from anycastd.core.health import CheckState, ServiceHealth, ServiceState
from anycastd.core.plan import (
    BgpStep,
    ControllerState,
    IpvsStep,
    LoopbackStep,
    NodeStep,
    Observed,
    OspfStep,
    Plan,
    PolicyStep,
    Step,
    plan,
)
from anycastd.core.policyroute import tables
from anycastd.core.rib import routes_from_rib
from anycastd.engine.causes import CauseBook, Owners, service_field
from anycastd.engine.exports import pass_samples
from anycastd.engine.retire import Retiree, Retirements
from anycastd.engine.scheduler import Clock
from anycastd.errors import ActuatorError, PermanentError, StartupError, TransientError
from anycastd.model import (
    AddAddress,
    BgpSettings,
    IpvsObserved,
    LoopbackObserved,
    OspfRoute,
    Route,
    VirtualService,
)
from anycastd.observe.logs import event
from anycastd.observe.metrics import Metrics

log = logging.getLogger("anycastd.controller")
_T = TypeVar("_T")
_EVENTS = {"policyroute": "policy_routing"}  # an actuator's action event, if not its name


class _Applies(Protocol):
    def apply(self, actions: list[Any]) -> None: ...


#: Passes in a row without a wait; a world that never converges is retried with backoff.
MAX_PASSES = 8

#: A pass running longer than this is stuck (a hung netlink call, a wedged speaker): the
#: daemon stops feeding the systemd watchdog, so systemd restarts it.
STALL_LIMIT = 120.0


@dataclass
class _Backoff:
    base: float = 0.5
    cap: float = 30.0
    failures: int = 0

    def next(self, rng: random.Random) -> float:
        # the exponent stops growing long before the cap matters (and before float overflow)
        delay = min(self.cap, self.base * 2 ** min(self.failures, 16))
        self.failures = min(self.failures + 1, 16)
        return float(delay * rng.uniform(0.8, 1.0))


def settled(states: Mapping[str, ServiceHealth]) -> bool:
    """True when every service's health says something (see the module docstring)."""
    for health in states.values():
        if health.state is not ServiceState.DOWN:
            continue
        for check in health.checks:
            if check.state is CheckState.DOWN and check.run_ok is not False:
                return False
    return True


class Controller:
    """Drives loopback, IPVS and BGP from health. Construct, then ``await run()``.

    ``withdraw_settle``: seconds to wait after a withdraw before later steps of the same
    pass (IPVS, address removal); the daemon passes its speaker's ``withdraw_settle``."""

    def __init__(
        self,
        config: Config,
        *,
        loopback: LoopbackActuator,
        ipvs: IpvsActuator | None,
        speaker: Speaker,
        bgp_settings: BgpSettings | None,
        states: Callable[[], Mapping[str, ServiceState]],
        real_servers_up: Callable[[], Mapping[RealServerKey, bool]],
        clock: Clock,
        failing: Callable[[], Collection[str]] = frozenset,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
        drain_connections: int = 0,
        withdraw_settle: float = 0.0,
        causes: CauseBook | None = None,
        node: RealServerActuator | None = None,
        policy: PolicyRouteActuator | None = None,
        ospf: OspfActuator | None = None,
    ) -> None:
        self.config = config
        self.node = node  # the real-server role's links and sysctls (core.realserver)
        self.policy = policy  # policy rules and routes per service (core.policyroute)
        self.loopback = loopback
        self.ipvs = ipvs
        self.speaker = speaker
        self.ospf = ospf
        self.bgp_settings = bgp_settings
        self._states = states
        self._rs_up = real_servers_up
        self._failing = failing  # services whose own checks fail (maintenance or not)
        self.clock = clock
        self.metrics = metrics
        self._rng = rng or random.Random()  # noqa: S311  # backoff jitter only
        self.drain_connections = drain_connections
        self.withdraw_settle = withdraw_settle
        #: why each action happens (``cause=`` on action events; ``engine.causes``)
        self.causes = causes if causes is not None else CauseBook()
        self._owners = Owners(None)
        #: services a reload removed, drained before they go (``engine.retire``)
        self.retiring = Retirements()
        self.state = ControllerState()
        self.last_plan: Plan | None = None
        self.last_observed: Observed | None = None
        self.passes = 0
        #: set once the first pass of :meth:`run` has ended (the daemon's READY=1)
        self.first_pass = asyncio.Event()
        self._wake = asyncio.Event()
        self._pokes = 0  # how many pokes so far: a pass knows whether health moved under it
        self._io = asyncio.Lock()  # one actuator call at a time, even across a cancel
        # netlink calls get a thread of their own: the default pool is shared with probes,
        # and a probe stuck in the kernel (a hung NFS stat) must not starve the controller
        self._executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="anycastd-netlink"
        )
        #: when the pass in progress started (None between passes): the watchdog's input
        self.busy_since: float | None = None
        self._idle = asyncio.Event()  # set while no pass is in progress
        self._idle.set()
        self._backoff = _Backoff()
        self._retry_at: float | None = None
        self._hints: frozenset[Route] = frozenset()
        self._last_routes: frozenset[Route] = frozenset()  # last set handed to the speaker
        # what the speaker holds between the steps of one pass (for the log lines): the
        # observation, then each BgpStep's set (a pass may withdraw, then announce again)
        self._held: frozenset[Route] = frozenset()
        self._converged = False  # the pass in progress ended with nothing left to do
        self._held_ospf: frozenset[OspfRoute] = frozenset()  # the same for OSPF
        self._observe_error: ActuatorError | None = None  # a part of this pass not read

    # ---- inputs

    def poke(self) -> None:
        """A health edge, a reload or an operator flag: plan again soon. Every health edge
        must arrive here: a pass in progress re-reads health before it announces anything."""
        self._pokes += 1
        self._wake.set()

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self.poke()

    def retire(self, old: Config, new: Config, **carried: Any) -> dict[str, Retiree]:
        """A reload from ``old`` to ``new``, before the new health: ``Retirements.reload``."""
        return self.retiring.reload(
            old, new, now=self.clock.now(), states=self._states(),
            real_servers_up=self._rs_up(), failing=self._failing(), **carried)

    # ---- observation

    async def observe(self, desired: Desired) -> Observed:
        lo: LoopbackObserved = await self._in_thread(self.loopback.observe)
        ipvs_obs = IpvsObserved()
        owned: frozenset[VirtualService] = frozenset()
        if self.ipvs is not None:
            ipvs_obs = await self._in_thread(self.ipvs.observe)
            owned = self.ipvs.owned()
        if self.bgp_settings is None:
            announced: frozenset[Route] = frozenset()  # no [bgp]: nothing is announced
        elif not self.speaker.ever_synced:
            # Nothing read back yet: an empty RIB-out here means "unknown", and planning on
            # it could take addresses away under routes an external ExaBGP still announces.
            raise TransientError("exabgp", "the announced routes have not been read back yet")
        else:
            announced = routes_from_rib(self.speaker.sent, self.bgp_settings, self._hints)
        # The reads below may fail on their own (ospfd restarting, a vty socket this user may
        # not open) without freezing the pass: an unknown node or policy table plans every
        # write (core.realserver / core.policyroute treat None as "nothing known"), OSPF is
        # planned from what was last known there. The pass then runs in order, so BGP
        # withdrawals go out first and an address under a route that may still be
        # published stays until the routing daemon confirms. _reconcile retries after it.
        node = None
        if desired.node and self.node is not None:
            node = await self._partial(self.node.observe, None, desired.node)
        policy = None
        if self.policy is not None:
            policy = await self._partial(self.policy.observe, None, tables(desired.policy))
        ospf: frozenset[OspfRoute] = frozenset()
        if self.ospf is not None:
            ospf = await self._partial(self.ospf.observe, self._held_ospf)
        return Observed(loopback=lo, ipvs=ipvs_obs, announced=announced, ipvs_owned=owned,
                        node=node, policy=policy, ospf=ospf)

    async def _partial(self, read: Callable[..., _T], fallback: _T, *args: object) -> _T:
        """``read(*args)`` in the worker thread; on an ActuatorError, ``fallback`` (the pass
        goes on; the first such error is kept in ``_observe_error`` for ``_reconcile``)."""
        try:
            return await self._in_thread(read, *args)
        except ActuatorError as exc:
            if self._observe_error is None:
                self._observe_error = exc
            return fallback

    def desired(self) -> Desired:
        return self.retiring.desired(self.config, self._states(), self._rs_up(), self._failing())

    # ---- one pass

    async def reconcile(self, *, shutdown: bool = False, fail_closed: bool = False) -> Plan:
        """Observe, plan and execute until the world converges or a step fails."""
        self.busy_since = start = self.clock.now()
        self._idle.clear()
        self._converged = False
        try:
            return await self._reconcile(shutdown, fail_closed)
        finally:
            self.busy_since = None
            self._idle.set()
            if self.metrics is not None:
                self.metrics.reconcile_pass(self.clock.now() - start, self._converged)

    async def between_passes(self) -> None:
        """Return at a moment no pass is in progress: the caller's code up to its next
        await runs before any pass starts (a pass may begin while a waiter wakes up, so
        the condition is checked again)."""
        while self.busy_since is not None:
            await self._idle.wait()

    async def check_ipvs(self) -> None:
        """Fail start-up clearly when a service declares [ipvs] and the kernel has none."""
        if self.ipvs is None:
            return
        try:
            await self._in_thread(self.ipvs.observe)
        except ActuatorError as exc:
            raise StartupError(
                f"a service declares [ipvs] but IPVS is not usable here: {exc.message}"
            ) from None

    def stalled(self) -> bool:
        """A pass has been running for longer than :data:`STALL_LIMIT`."""
        return self.busy_since is not None and self.clock.now() - self.busy_since > STALL_LIMIT

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _reconcile(self, shutdown: bool, fail_closed: bool) -> Plan:
        result = Plan(self.state, (), None, False, ())
        for _ in range(MAX_PASSES):
            pokes = self._pokes
            desired = self.desired()
            self._hints = desired.route_hints | self._last_routes
            self._observe_error = None
            try:
                observed = await self.observe(desired)
            except ActuatorError as exc:  # nothing known, nothing done: retry like a write
                self._failed(exc)
                return result
            partial = self._observe_error  # a part not read: act on the rest, then retry
            result = plan(
                self.state, desired, observed, self.clock.now(),
                shutdown=shutdown, fail_closed=fail_closed,
                drain_connections=self.drain_connections,
            )
            self.state = result.state
            self.last_plan, self.last_observed = result, observed
            self.passes += 1
            self._export(desired, observed)
            self.retiring.settle(observed, result.state)
            if not result.steps:
                # End-of-RIB owed to new sessions (never raises): the BGP side is complete
                # even when a routing daemon or policy table could not be read
                await self.speaker.end_of_pass()
                if partial is not None:
                    self._failed(partial)
                    return result
                self._converged = True
                self._backoff.failures = 0
                self._retry_at = None
                if result.next_wakeup is None:  # converged, no drain running
                    self.causes.settle()
                return result
            self._held = observed.announced
            self._owners = Owners(desired)
            self._held_ospf = observed.ospf
            try:
                for i, step in enumerate(result.steps):
                    if pokes != self._pokes and not self._still_wanted(step):
                        break  # health moved under this pass: plan again from scratch
                    withdrew = await self._execute(step, result.steps[i + 1:])
                    if withdrew and self.withdraw_settle > 0 and any(
                        not isinstance(later, BgpStep) for later in result.steps[i + 1:]
                    ):
                        # ExaBGP acks a withdraw once queued, not once on the wire: give the
                        # UPDATE time to leave before IPVS or the address go (see __init__)
                        await self.clock.sleep_until(self.clock.now() + self.withdraw_settle)
                else:  # the pass's last step ran: its routes are complete (End-of-RIB)
                    await self.speaker.end_of_pass()
            except ActuatorError as exc:
                self._failed(exc)
                return result
            if partial is not None:
                self._failed(partial)
                return result
        # Still not converged: something keeps undoing our work. Try again later.
        self._retry_at = self.clock.now() + self._backoff.next(self._rng)
        event(log, "reconcile_not_converged", level=logging.WARNING, passes=MAX_PASSES)
        return result

    def _still_wanted(self, step: Step) -> bool:
        """Would the health of this instant still announce what ``step`` newly announces?

        A pass plans on the health it read at its start; the steps before an announce take
        time (netlink, the withdraw settle), and a service may fail meanwhile. So before an
        announce, health is read again: a route the step adds or changes must be one the
        current state announces, or the demote of a prefix already held. Withdrawals and
        kernel steps are always let through (they only make the node safer or serve)."""
        if isinstance(step, OspfStep):
            return self._ospf_still_wanted(step)
        if not isinstance(step, BgpStep):
            return True
        new = step.routes - self._held
        if not new:
            return True
        now = self.desired()
        wanted = now.routes  # a property over every prefix: built once, not per route
        held = {r.prefix for r in self._held}
        for route in new:
            if route in wanted:
                continue
            intent = now.prefix(route.prefix)
            if intent is not None and route.prefix in held and route == intent.demote:
                continue
            event(log, "announce_deferred", prefix=route.prefix,
                  detail="health changed during the pass; planning again")
            return False
        return True

    def _why(self, owners: tuple[str, ...], drift: str) -> dict[str, Any]:
        """The ``service`` and ``cause`` fields of an action event (``engine.causes``)."""
        return {"service": service_field(owners), "cause": self.causes.cause(owners, drift)}

    def _ospf_still_wanted(self, step: OspfStep) -> bool:
        """``_still_wanted`` for OSPF: a new route or metric must be what the current health
        publishes, or the draining metric of a prefix already published."""
        new = step.routes - self._held_ospf
        if not new:
            return True
        now = self.desired()
        wanted = now.ospf_routes
        held = {r.prefix for r in self._held_ospf}
        for route in new:
            if route in wanted:
                continue
            intent = now.prefix(route.prefix)
            if intent is not None and route.prefix in held and route == intent.ospf_demote:
                continue
            event(log, "announce_deferred", prefix=route.prefix, protocol="ospf",
                  detail="health changed during the pass; planning again")
            return False
        return True

    async def _execute_ospf(self, step: OspfStep, later: Sequence[Step]) -> None:
        if self.ospf is None:  # a reload that adds the first [ospf] service is refused
            raise PermanentError("frr", "no OSPF actuator ([ospf] was not configured at "
                                 "start; restart anycastd)")
        before = {r.prefix: r for r in self._held_ospf}
        await self._in_thread(self.ospf.apply, step.routes)
        who = self._owners
        for route in sorted(step.routes - self._held_ospf):
            update = route.prefix in before
            event(log, "ospf_update" if update else "ospf_publish", prefix=route.prefix,
                  metric=route.metric,
                  **self._why(who.prefix(route.prefix), "metric differs from the state's"
                              if update else "route missing at the routing daemon"))
        removed = frozenset(before.keys() - {r.prefix for r in step.routes})
        for prefix in sorted(removed):
            event(log, "ospf_withdraw", prefix=prefix,
                  **self._why(who.prefix(prefix), "route published but not wanted"))
        self._held_ospf = step.routes
        self._count("frr", 1)
        # like BGP's withdraw settle: the LSA goes before IPVS and the address do (bounded
        # by [ospf] withdraw_wait: with FRR's default LSA timers a route-map change reaches
        # the LSA only after ~5 s, and the address removal flushes it)
        kernel_next = any(isinstance(s, LoopbackStep | IpvsStep) for s in later)
        if removed and kernel_next and not await self._in_thread(self.ospf.settle, removed):
            event(log, "ospf_withdraw_slow", prefixes=sorted(removed),
                  detail="the LSA outlived [ospf] withdraw_wait; removing the address "
                  "flushes it")

    async def _execute(self, step: Step, later: Sequence[Step] = ()) -> bool:
        """Run one step; True when it was a BgpStep that withdrew a prefix."""
        who = self._owners
        if isinstance(step, BgpStep):
            before = self._held
            held = {r.prefix for r in before}
            withdrawn = sorted(held - {r.prefix for r in step.routes})
            await self.speaker.set_routes(step.routes)
            # logged once done: a log line never claims a failure (a pass that finds the
            # relay away logs nothing), and 1,000 lines are not written ahead of the routes
            for route in sorted(step.routes - before, key=_route_key):
                attrs = route.attributes
                update = route.prefix in held
                event(log, "bgp_update" if update else "bgp_announce", prefix=route.prefix,
                      med=attrs.med, local_preference=attrs.local_preference,
                      communities=list(attrs.communities), prepend=attrs.as_path_prepend,
                      **self._why(who.prefix(route.prefix), "attributes differ from the "
                                  "state's" if update else "route missing at the speaker"))
            for prefix in withdrawn:
                event(log, "bgp_withdraw", prefix=prefix,
                      **self._why(who.prefix(prefix), "route announced but not wanted"))
            self._last_routes = self._held = step.routes
            self._count("exabgp", 1)
            return bool(withdrawn)
        if isinstance(step, NodeStep):
            await self._apply(self.node, "realserver", "[real_server]", step.actions,
                              lambda a: (str(a), who.node(), "node not set up for its backends"))
        elif isinstance(step, PolicyStep):
            await self._apply(self.policy, "policyroute", "[policy_routing]", step.actions,
                              lambda a: (str(a), who.policy(a.item),
                                         "policy rule or route differs"))
        elif isinstance(step, LoopbackStep):
            await self._apply(self.loopback, "loopback", "", step.actions, lambda a: (
                str(a), who.address(a),
                "address missing" if isinstance(a, AddAddress) else "address not wanted"))
        elif isinstance(step, IpvsStep):
            await self._apply(self.ipvs, "ipvs", "[ipvs]", step.actions,
                              lambda a: (repr(a), who.virtual(a), "IPVS table differs"))
        elif isinstance(step, OspfStep):
            await self._execute_ospf(step, later)
        return False

    async def _apply(self, actuator: _Applies | None, name: str, section: str,
                     actions: Sequence[Any], why: Callable[[Any], tuple[str, Any, str]]) -> None:
        """One actuator step in the worker thread, then one ``name`` event per action (logged
        once done: ``why(action)`` is its text, owners and drift), counted. ``None``: the
        actuator was not set up at start, and a reload added the first ``section``."""
        if actuator is None:
            raise PermanentError(name, f"no {name} actuator ({section} was not configured at "
                                 "start; restart anycastd)")
        await self._in_thread(actuator.apply, list(actions))
        for action in actions:
            text, owners, drift = why(action)
            event(log, _EVENTS.get(name, name), action=text, **self._why(owners, drift))
        self._count(name, len(actions))

    async def _in_thread(self, fn: Callable[..., _T], *args: object) -> _T:
        """``fn(*args)`` in a worker thread, one at a time. A thread cannot be stopped: when
        the caller is cancelled, the lock is held until the call has really ended, so the
        next pass (e.g. shutdown) never observes or writes while it still runs."""
        async with self._io:
            fut = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
            try:
                return await asyncio.shield(fut)
            except asyncio.CancelledError:
                await asyncio.wait([fut])
                raise

    def _count(self, actuator: str, n: int) -> None:
        if self.metrics is not None:
            self.metrics.actuator_writes(actuator, n)

    def _failed(self, exc: ActuatorError) -> None:
        if self.metrics is not None:
            self.metrics.actuator_failed(exc)
        if exc.transient:
            delay = self._backoff.next(self._rng)
        else:
            delay = self.config.global_.reconcile_interval
        self._retry_at = self.clock.now() + delay
        event(log, "actuator_error", level=logging.WARNING if exc.transient else logging.ERROR,
              actuator=exc.actuator, transient=exc.transient, error=exc.message,
              retry_in=round(delay, 3))

    def _export(self, desired: Desired, observed: Observed) -> None:
        if self.metrics is None:
            return
        announced = {r.prefix for r in observed.announced} | {r.prefix for r in observed.ospf}
        for svc in desired.services:
            self.metrics.set_announced(
                svc.name, [p for p in svc.prefixes if p in announced], configured=svc.prefixes
            )
        # computed when scraped, from values of this pass (the RIB-out copied: it changes)
        rib = dict(self.speaker.sent) if self.bgp_settings is not None else None
        self.metrics.set_pass(functools.partial(
            pass_samples, self.retiring.config(self.config), desired, observed, rib,
            self.bgp_settings))

    # ---- the loop

    def _next_wake(self) -> float:
        now = self.clock.now()
        candidates = [now + self.config.global_.reconcile_interval]
        # after a failure the retry time rules: the last plan's wake-up may be in the past
        # (a drain that ended while observing failed) and would make a tight loop
        if (
            self._retry_at is None
            and self.last_plan is not None
            and self.last_plan.next_wakeup is not None
        ):
            candidates.append(self.last_plan.next_wakeup)
        if self._retry_at is not None:
            candidates.append(self._retry_at)
        return min(candidates)

    async def _sleep(self, until: float) -> None:
        """Until ``until`` (on the injected clock) or a poke, whichever first."""
        with contextlib.suppress(TimeoutError):
            async with self.clock.timeout_at(until):
                await self._wake.wait()
        self._wake.clear()

    async def run(self, *, ready: Callable[[], bool], startup_hold: float) -> None:
        """Reconcile for the daemon's lifetime (cancel to stop; see ``shutdown``)."""
        deadline = self.clock.now() + startup_hold
        while not ready() and self.clock.now() < deadline:
            await self._sleep(min(deadline, self.clock.now() + 0.1))
        if not ready():
            event(log, "startup_hold_expired", level=logging.WARNING, hold=startup_hold)
        event(log, "controller_started")
        while True:
            await self.reconcile()
            self.first_pass.set()
            await self._sleep(self._next_wake())

    async def shutdown(
        self, limit: float, *, fail_closed: bool | Callable[[], bool] = False
    ) -> bool:
        """Apply every service's shutdown policy in order; True when complete within
        ``limit`` seconds (drains included). ``fail_closed`` (after a crash): every prefix
        is withdrawn at once, whatever its policy (no drain, no keep); given as a callable
        it is asked before every pass, so a crash during a drain ends the drain."""
        deadline = self.clock.now() + limit
        try:
            # a backstop on the loop's own time: also ends a pass that hangs in a call
            async with asyncio.timeout(limit + 1.0):
                while self.clock.now() < deadline:
                    closed = fail_closed() if callable(fail_closed) else fail_closed
                    result = await self.reconcile(shutdown=True, fail_closed=closed)
                    if result.shutdown_complete:
                        return True
                    await self._sleep(min(deadline, self._next_wake()))
        except TimeoutError:
            pass
        return False


def _route_key(route: Route) -> str:
    return route.prefix
