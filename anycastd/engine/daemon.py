"""``anycastd run``: the daemon's asyncio shell, its lifecycle from start to exit code.

Rule: every task belongs to the one TaskGroup :meth:`Daemon.run` owns; a bug in any of
them stops fail-closed (exit 70).

Owns the process lifecycle: signals are events (a handler only sets a flag; this module does
the ordered work), every task lives in one TaskGroup owned by :func:`run_daemon`. The health
of each service lives in a :class:`~anycastd.engine.scheduler.Scheduler`, real servers'
health in a second one (``engine.backends``); every health edge pokes the
:class:`~anycastd.engine.controller.Controller`, the only writer to the kernel and to BGP.

Stop (SIGTERM/SIGINT): the controller applies each service's shutdown policy in the safe
order (demote, drain, withdraw, IPVS, addresses), then the speaker stops (a managed ExaBGP
ends with it), then the process exits 0.

Crash: an unexpected exception in any task (scheduler, flag watcher, watchdog, controller,
speaker -- also one the speaker reports from its own loops, a reload) stops FAIL-CLOSED:
every prefix withdrawn at once whatever its shutdown policy, one CRITICAL ``task_crashed``
event with the traceback, exit 70. CancelledError always passes through.

The other rooms: reload (SIGHUP) in ``engine.reload``, operator flags (API, flag files,
flags.json) in ``engine.flags``, the ``/status`` document in ``engine.status``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from anycastd.actuators import sysctl
from anycastd.actuators.linkwatch import LinkWatcher
from anycastd.bgp.protocol import PeerState, Speaker
from anycastd.config import Config
from anycastd.core.health import (
    CheckTransition,
    Event,
    Flapped,
    Reused,
    ServiceHealth,
    ServiceState,
    ServiceTransition,
)
from anycastd.engine.backends import Backends
from anycastd.engine.causes import CauseBook
from anycastd.engine.controller import Controller, settled
from anycastd.engine.flags import OperatorFlags
from anycastd.engine.lastresort import withdraw_ospf
from anycastd.engine.listeners import Listeners
from anycastd.engine.reload import carry_over, check_specs, freeze_heap, reload
from anycastd.engine.scheduler import CheckSpec, Clock, MonotonicClock, Scheduler
from anycastd.engine.status import daemon_status
from anycastd.engine.world import World, WorldFactory, build_world
from anycastd.errors import ActuatorError, StartupError
from anycastd.observe.logs import configure as configure_logging
from anycastd.observe.logs import event
from anycastd.observe.metrics import HealthSource, Metrics
from anycastd.observe.status import PeerTracker
from anycastd.observe.systemd import Notifier, status_line

if TYPE_CHECKING:  # aiohttp loads only when the API is served (engine.listeners)
    from anycastd.observe.api import FlagKind

log = logging.getLogger("anycastd")

#: At stop: how long the cancelled controller pass may take to unwind.
UNWIND_LIMIT = 5.0
#: After an incomplete fail-closed stop: how long the direct withdraw may take.
LAST_RESORT_LIMIT = 10.0

#: After the kernel event socket failed: how long before a new one is opened.
LINK_WATCH_RETRY = 5.0

#: The exit code after a crash (sysexits EX_SOFTWARE): an internal error, reported as one
#: CRITICAL ``task_crashed`` log event with its traceback, after a fail-closed stop.
EXIT_CRASHED = 70


def log_events(events: Sequence[Event]) -> None:
    """One structured line per engine event."""
    for ev in events:
        if isinstance(ev, ServiceTransition):
            # a service going down is what an operator must see: warning, not info
            level = logging.WARNING if ev.new is ServiceState.DOWN else logging.INFO
            event(log, "service_transition", level=level, service=ev.service,
                  old=ev.old.value, new=ev.new.value, reason=ev.reason)
        elif isinstance(ev, CheckTransition):
            event(log, "check_transition", service=ev.service, check=ev.check,
                  old=ev.old.value, new=ev.new.value, reason=ev.reason)
        elif isinstance(ev, Flapped):
            event(log, "flap", level=logging.WARNING, service=ev.service,
                  penalty=round(ev.penalty, 1), suppressed=ev.suppressed_until is not None)
        elif isinstance(ev, Reused):
            event(log, "damping_reuse", service=ev.service)


def startup_hold(config: Config) -> float:
    """How long the controller waits for health to settle before its first pass: the
    longest time any check needs to prove itself (staggered first run + rise results)."""
    hold = 0.0
    for svc in config.services.values():
        checks = list(svc.checks)
        if svc.ipvs is not None:
            checks += [c for rs in svc.ipvs.real_servers for c in rs.checks]
        for c in checks:
            hold = max(hold, c.interval + c.rise * (c.interval + c.timeout + c.jitter))
    return hold + 1.0


def required_sysctls(config: Config) -> dict[str, str]:
    """The sysctls this node's IPVS forwarding methods need (``actuators.sysctl``)."""
    methods: set[str] = set()
    families: set[int] = set()
    for svc in config.services.values():
        if svc.ipvs is None or svc.disabled:
            continue
        methods.update(rs.forwarding for rs in svc.ipvs.real_servers)
        families.update(p.version for p in svc.prefixes)
    return sysctl.required_sysctls(methods, families)


def shutdown_limit(config: Config, retiring: Iterable[float] = ()) -> float:
    """The longest a stop may take: the longest drain (``retiring``: those of services a
    reload removed, which a stop continues), plus time for the writes."""
    drains = [s.drain_time for s in config.services.values() if s.shutdown != "withdraw"]
    drains.extend(retiring)
    return max(drains, default=0.0) + 15.0


class Daemon:
    """The running daemon. ``observers`` see every engine event after logging."""

    def __init__(
        self,
        config: Config,
        config_path: Path | None,
        *,
        clock: Clock | None = None,
        notifier: Notifier | None = None,
        observers: Sequence[Callable[[Sequence[Event]], None]] = (),
        metrics: Metrics | None = None,
        world_factory: WorldFactory = build_world,
        flag_exists: Callable[[Path], bool] = Path.exists,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.clock: Clock = clock or MonotonicClock()
        self.notifier = notifier or Notifier()
        self.metrics = metrics if metrics is not None else Metrics()
        self._observers = [*observers, self.metrics.observe_events]
        self._world_factory = world_factory
        self._scheduler: Scheduler | None = None
        # config, rs_scheduler and backends are replaced by a reload (``engine.reload``)
        self.rs_scheduler: Scheduler | None = None
        self.backends = Backends(config)
        self._sched_task: asyncio.Task[None] | None = None
        self.listeners = Listeners(config.api, config.global_.runtime_dir)
        self.world: World | None = None
        self.controller: Controller | None = None
        self.peers = PeerTracker()
        self._wake = asyncio.Event()  # set by a stop or reload request (signal handlers)
        self._stopping = False
        self._reload_requested = False
        self.reload_ok: bool | None = None
        self.shutdown_complete: bool | None = None
        self.sysctl_drift: list[sysctl.SysctlDrift] = []
        self.flags = OperatorFlags(config, lambda: self.scheduler, exists=flag_exists)
        #: the first bug that ended a task (see :meth:`crashed`); the exit code is then 70
        self.crash: BaseException | None = None
        #: why the controller acts: every action event carries its service's cause
        self.causes = CauseBook()
        #: READY=1 was sent (after the first reconcile pass); STATUS= follows changes then
        self.ready_sent = False

    @property
    def scheduler(self) -> Scheduler:
        if self._scheduler is None:
            raise RuntimeError("the daemon is not running")
        return self._scheduler

    def request_stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def request_reload(self) -> None:
        self._reload_requested = True
        self._wake.set()

    # ---- events

    def _on_events(self, events: Sequence[Event]) -> None:
        log_events(events)
        for ev in events:
            if isinstance(ev, ServiceTransition):
                self.causes.note(ev.service, f"{ev.old.value}->{ev.new.value}: {ev.reason}")
        for observer in self._observers:
            observer(events)
        self._publish_status()
        # A check edge pokes too: under a maintenance or drain flag a failing check changes
        # no service state, but it ends a planned drain (the service may not be drained
        # into any more) and the pass's re-read of health before announcing relies on it.
        if self.controller is not None and any(
            isinstance(ev, ServiceTransition | CheckTransition) for ev in events
        ):
            self.controller.poke()

    def _on_rs_events(self, events: Sequence[Event]) -> None:
        for ev in events:
            if isinstance(ev, ServiceTransition):
                level = logging.WARNING if ev.new is ServiceState.DOWN else logging.INFO
                service, _, server = ev.service.partition("/")
                event(log, "real_server_transition", level=level, real_server=ev.service,
                      service=service, old=ev.old.value, new=ev.new.value, reason=ev.reason)
                self.causes.note(service, f"real server {server} {ev.old.value}->"
                                 f"{ev.new.value}: {ev.reason}")
                if self.controller is not None:
                    self.controller.poke()
            elif isinstance(ev, CheckTransition):
                event(log, "check_transition", real_server=ev.service, check=ev.check,
                      old=ev.old.value, new=ev.new.value, reason=ev.reason)

    def _on_peer(self, peer: PeerState) -> None:
        self.metrics.set_peer(peer.name or peer.address, peer.up)
        self.peers.update(peer, self.clock.now())
        self._publish_status()
        if self.controller is not None:
            self.controller.poke()

    def _on_speaker_resync(self) -> None:
        if self.controller is not None:
            self.controller.poke()

    def _on_speaker_fatal(self, exc: BaseException) -> None:
        self.crashed("speaker", exc)

    def _failing(self) -> frozenset[str]:
        """Services whose own checks fail, whatever their state (maintenance, drain)."""
        return frozenset(n for n, h in self.scheduler.services.items() if not h.policy_up)

    def specs(self) -> list[CheckSpec]:
        return [spec for svc in self.config.services.values() for spec in check_specs(svc)]

    def _states(self) -> dict[str, ServiceState]:
        return {name: h.state for name, h in self.scheduler.services.items()}

    def rs_health(self) -> Mapping[str, ServiceHealth]:
        return self.rs_scheduler.services if self.rs_scheduler is not None else {}

    def _ready(self) -> bool:
        # With BGP, the first pass also waits (within the startup hold) for the relay to
        # connect, so it sees what ExaBGP already announces instead of an empty RIB-out.
        world = self.world
        speaker_ready = world is None or world.speaker.synced
        return (speaker_ready and self.flags.known and settled(self.scheduler.services)
                and settled(self.rs_health()))

    # ---- systemd (sd_notify, observe/systemd.py)

    def summary(self) -> str:
        """The STATUS= line: service states and established BGP sessions."""
        states = [h.state.value for h in self.scheduler.services.values()]
        bgp = self.config.bgp
        if bgp is None:
            line = status_line(states)
        else:
            peers = self.peers.section(self.clock.now())["peers"]
            up = sum(1 for p in peers.values() if p["up"])
            line = status_line(states, peers_up=up, peers_total=len(bgp.neighbors))
        if self.reload_ok is False:
            line += "; last reload rejected, running the previous config"
        return line

    def _publish_status(self) -> None:
        if self.ready_sent and not self._stopping and self._scheduler is not None:
            self.notifier.status(self.summary())

    async def _notify_ready(self, controller: Controller) -> None:
        """READY=1 only once the first reconcile pass has run: until then systemd (and
        units ordered after us) see "activating". The start-up hold may outlast
        TimeoutStartSec, so the start timeout is extended to cover it."""
        hold = startup_hold(self.config)
        self.notifier.extend_timeout(
            hold + 30.0, status=f"starting: waiting up to {hold:.0f}s for health to settle")
        await controller.first_pass.wait()
        self.ready_sent = True
        self.notifier.ready(self.summary())

    # ---- status API callbacks

    def status(self) -> dict[str, object]:
        return daemon_status(
            self.config, services=self.scheduler.services, real_servers=self.rs_health(),
            controller=self.controller, world=self.world, peers=self.peers,
            sysctl_drift=self.sysctl_drift, now=self.clock.now(),
        )

    def alive(self) -> bool:
        return self._sched_task is not None and not self._sched_task.done()

    def set_flag(self, service: str, kind: FlagKind, on: bool) -> bool:
        return self.flags.set_flag(service, kind, on)

    # ---- lifecycle

    async def run(self, duration: float | None = None) -> int:
        now = self.clock.now()
        health = carry_over(None, {}, self.config, now)
        max_concurrent = self.config.global_.max_concurrent_checks
        self._scheduler = Scheduler(
            self.specs(), health, clock=self.clock, max_concurrent=max_concurrent,
            on_events=self._on_events, on_run=self.metrics.observe_run,
        )
        self.rs_scheduler = Scheduler(
            self.backends.specs, self.backends.initial({}, now), clock=self.clock,
            max_concurrent=max_concurrent, on_events=self._on_rs_events,
            # real-server runs: labels service and real_server, families of their own
            on_run=self.metrics.observe_real_server_run,
        )
        self.metrics.watch_health(HealthSource(
            lambda: self.scheduler.services, self.rs_health, self.clock.now))
        self.metrics.sync(health)
        self.metrics.reload(True, time.time())
        # [bgp] cannot be added or removed by a reload (it needs a restart)
        self.metrics.set_bgp_configured(self.config.bgp is not None)
        for name, h in health.items():
            event(log, "service_start", service=name, state=h.state.value, reason=h.reason)
        self.world = world = self._world_factory(self.config, self._on_peer)
        # the speaker never announces on its own: after a read-back of ExaBGP's RIB it
        # wakes the controller; a bug in one of its loops fails closed like ours
        world.speaker.on_resync = self._on_speaker_resync
        world.speaker.on_fatal = self._on_speaker_fatal
        self.metrics.sync_peers({p.name or p.address: p.up for p in world.speaker.peers.values()})
        try:  # a taken port or control socket: exit 69 before a sysctl is written
            self.listeners.bind()
        except StartupError:
            world.close()
            raise
        if not world.dry_run:
            self._sysctls()
        self.flags.load(dry_run=world.dry_run)
        self.controller = Controller(
            self.config,
            loopback=world.loopback,
            ipvs=world.ipvs,
            speaker=world.speaker,
            bgp_settings=world.bgp_settings,
            states=self._states,
            real_servers_up=lambda: self.backends.up(self.rs_health()),
            failing=self._failing,
            clock=self.clock,
            metrics=None if world.dry_run else self.metrics,
            withdraw_settle=world.speaker.withdraw_settle,
            causes=self.causes,
            node=world.node,
            policy=world.policy,
            ospf=world.ospf,
        )
        freeze_heap()
        try:
            await self.controller.check_ipvs()
            return await self._main_loop(duration, world, self.controller)
        except* StartupError as group:
            raise group.exceptions[0] from None
        finally:
            await self.listeners.close()
            world.close()
            if self.controller is not None:
                self.controller.close()

    def _sysctls(self) -> None:
        """Set (``global.manage_sysctls``) or report what the forwarding methods need."""
        required = required_sysctls(self.config)
        manage = self.config.global_.manage_sysctls
        try:
            found = sysctl.reconcile(required, manage=manage)
            self.sysctl_drift = sysctl.check(required) if manage else found
            self.metrics.set_sysctls(required, [d.key for d in self.sysctl_drift])
        except ActuatorError as exc:
            event(log, "sysctl_error", level=logging.ERROR, error=exc.message)
            return
        for d in found if manage else ():
            event(log, "sysctl_set", key=d.key, value=d.expected, was=d.actual)
        for d in self.sysctl_drift:
            event(log, "sysctl_drift", level=logging.WARNING, key=d.key, want=d.expected,
                  have=d.actual, detail="set global.manage_sysctls = true to let anycastd "
                  "set it, or set it yourself")

    async def _run_speaker(self, speaker: Speaker) -> None:
        try:
            await speaker.run()
        except ActuatorError as exc:
            raise StartupError(f"BGP speaker: {exc.message}") from None

    def crashed(self, task: str, exc: BaseException) -> None:
        """A bug ended one of the daemon's tasks (or the speaker reported one in its own
        loops, ``on_fatal``): log it with its traceback, once, and stop FAIL-CLOSED --
        every prefix withdrawn at once, ``keep`` policies ignored -- then exit 70. A node
        whose daemon no longer works must not keep attracting traffic."""
        if self.crash is None:
            self.crash = exc
        event(log, "task_crashed", level=logging.CRITICAL, task=task,
              error=f"{type(exc).__name__}: {exc}",
              traceback="".join(traceback.format_exception(exc)),
              detail="withdrawing every prefix (fail closed) and exiting 70")
        self.request_stop()

    async def _guarded(self, name: str, work: Awaitable[None]) -> None:
        """``work``, with an unexpected exception turned into a fail-closed stop instead
        of an ExceptionGroup that would end the TaskGroup without any shutdown policy.
        Cancellation and start-up errors (exit 69, a clear message) pass through."""
        try:
            await work
        except (asyncio.CancelledError, StartupError):
            raise
        except Exception as exc:  # a bug anywhere must fail closed
            self.crashed(name, exc)

    async def _main_loop(
        self, duration: float | None, world: World, controller: Controller
    ) -> int:
        async with asyncio.TaskGroup() as tg:
            guarded = self._guarded
            self._sched_task = tg.create_task(guarded("scheduler", self.scheduler.run()))
            helpers = [
                tg.create_task(guarded("real_server_scheduler", self.rs_scheduler.run()))
                if self.rs_scheduler else None,
                tg.create_task(guarded("flag_watcher", self.flags.watch())),
                tg.create_task(guarded("watchdog", self._watchdog())),
            ]
            if world.link_events is not None:
                helpers.append(tg.create_task(
                    guarded("link_watcher", self._watch_link(world.link_events, controller))))
            speaker_task = tg.create_task(guarded("speaker", self._run_speaker(world.speaker)))
            ctl_task = tg.create_task(guarded("controller", controller.run(
                ready=self._ready, startup_hold=startup_hold(self.config))))
            if duration is not None:
                helpers.append(tg.create_task(guarded("timer", self._stop_after(duration))))
            helpers.append(tg.create_task(guarded("notify_ready", self._notify_ready(controller))))
            metrics = self.metrics if self.config.metrics.enabled else None
            helpers.append(tg.create_task(guarded("api", self.listeners.serve(
                controller.first_pass, status=self.status, alive=self.alive,
                set_flag=self.set_flag, metrics=metrics))))
            event(log, "started", node=self.config.global_.node,
                  services=len(self.config.services), config=str(self.config_path))
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    break
                if self._reload_requested:
                    self._reload_requested = False
                    ready = self.ready_sent  # a reload before READY stays "activating"
                    if ready:
                        self.notifier.reloading()
                    await self._guarded("reload", reload(self))
                    if ready:
                        self.notifier.ready(self.summary())
            limit = shutdown_limit(self.config, controller.retiring.drain_times())
            # the shutdown drain may outlast TimeoutStopSec: tell systemd how long it may take
            self.notifier.stopping(f"stopping: shutdown policy, at most {limit:g}s")
            self.notifier.extend_timeout(limit + UNWIND_LIMIT + LAST_RESORT_LIMIT + 5.0)
            event(log, "stopping", limit=limit, fail_closed=self.crash is not None)
            self.causes.note_all("fail closed after a crash" if self.crash is not None
                                 else "shutdown: each service's shutdown policy")
            ctl_task.cancel()
            # let the cancelled pass unwind (its speaker command closes its connection)
            # before the shutdown passes observe and write; bounded: a pass stuck in a
            # netlink call must not hold the stop (the shutdown passes have their own bound)
            await asyncio.wait([ctl_task], timeout=UNWIND_LIMIT)
            try:
                self.shutdown_complete = await controller.shutdown(
                    limit, fail_closed=lambda: self.crash is not None)
            except Exception as exc:  # the speaker's stop below still ends the sessions
                self.crashed("shutdown", exc)
                self.shutdown_complete = False
            if not self.shutdown_complete:
                event(log, "shutdown_incomplete", level=logging.ERROR,
                      detail="the shutdown policy did not finish in time; exiting anyway")
                if self.crash is not None:
                    await self._last_resort_withdraw(world)
            # Cancelled children end quietly; the TaskGroup waits for their finally blocks.
            # The speaker goes last: a managed ExaBGP ends with it and its sessions close.
            for task in (self._sched_task, *helpers, speaker_task):
                if task is not None:
                    task.cancel()
        event(log, "stopped", shutdown_complete=self.shutdown_complete,
              crashed=self.crash is not None)
        return EXIT_CRASHED if self.crash is not None else 0

    async def _last_resort_withdraw(self, world: World) -> None:
        """Fail closed when the planned fail-closed shutdown itself failed (the bug that
        crashed a task may sit in the planner): withdraw every route straight through the
        speaker. Addresses and IPVS stay; with no route they attract nothing. OSPF routes go
        straight through the OSPF actuator, at the same time and within the same bound."""
        ospf = (asyncio.create_task(withdraw_ospf(world.ospf, LAST_RESORT_LIMIT))
                if world.ospf is not None else None)
        try:
            async with asyncio.timeout(LAST_RESORT_LIMIT):
                await world.speaker.set_routes(())
        except (ActuatorError, TimeoutError) as exc:
            event(log, "last_resort_withdraw_failed", level=logging.CRITICAL, error=str(exc),
                  detail="routes may stay announced until the BGP session closes")
        else:
            event(log, "last_resort_withdraw", level=logging.WARNING,
                  detail="every route withdrawn directly after an incomplete fail-closed stop")
        if ospf is not None:
            await ospf

    async def _watch_link(self, opener: Callable[[], LinkWatcher], controller: Controller) -> None:
        """Reconcile at once on every address or link event of the managed interface (an
        address deleted by hand, the link going down): the prefix is withdrawn within
        milliseconds instead of at the next timer pass. Our own writes come back as events
        too; they cost one extra pass that plans nothing (pokes coalesce). If the netlink
        socket fails, the timer is the backstop until a new watcher is open."""
        while True:
            try:
                watcher = opener()
                controller.poke()  # what changed while no watcher was open is not lost
                await watcher.run(lambda _reason: controller.poke())
            except ActuatorError as exc:
                event(log, "link_watch_failed", level=logging.ERROR, error=exc.message,
                      detail=f"reconcile_interval is the backstop; retrying in "
                      f"{LINK_WATCH_RETRY:g}s")
            await asyncio.sleep(LINK_WATCH_RETRY)

    async def _stop_after(self, duration: float) -> None:
        await asyncio.sleep(duration)
        self.request_stop()

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval()
        if interval is None:
            return
        while True:
            # A controller stuck in one pass (a hung netlink call, a wedged speaker) stops
            # the pings: systemd then restarts anycastd instead of trusting a live loop.
            if self.controller is None or not self.controller.stalled():
                self.notifier.watchdog()
            else:
                event(log, "watchdog_withheld", level=logging.ERROR,
                      detail="a reconcile pass is stuck; letting systemd restart anycastd")
            await asyncio.sleep(interval)


async def run_daemon(
    config: Config,
    *,
    config_path: Path | None,
    duration: float | None,
    world_factory: WorldFactory = build_world,
) -> int:
    """Entry point of ``anycastd run``: logging, signals, then the daemon until stopped."""
    configure_logging(config.global_.log_format, config.global_.log_level)
    # the daemon's own registry (never prometheus_client's global one), with the process,
    # GC and platform collectors
    metrics = Metrics(CollectorRegistry(auto_describe=True), process=True)
    daemon = Daemon(config, config_path, world_factory=world_factory, metrics=metrics)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.request_stop)
    loop.add_signal_handler(signal.SIGHUP, daemon.request_reload)
    try:
        return await daemon.run(duration)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
