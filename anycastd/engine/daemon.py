"""``anycastd run``: the daemon's asyncio shell.

Owns the process lifecycle: signals are events (a handler only sets a flag; this module does
the ordered work), every task lives in one TaskGroup owned by :func:`run_daemon`, and the
health of each service lives in the :class:`~anycastd.engine.scheduler.Scheduler`.

Reload (SIGHUP): the new config is validated first; an invalid one is logged with every
problem and the old one keeps running. A valid one replaces the scheduler; services whose
config is unchanged keep their health value exactly (counters, damping), changed services
are ``reconfigure``d (checks kept by name keep their counters), new ones start fresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from anycastd.config import Config, ConfigError, ServiceConfig, load_config
from anycastd.core.health import (
    CheckParams,
    CheckState,
    CheckTransition,
    DampingParams,
    Event,
    Flapped,
    Policy,
    Reused,
    ServiceHealth,
    ServiceParams,
    ServiceTransition,
)
from anycastd.engine.probes import build_probe
from anycastd.engine.scheduler import CheckSpec, Clock, MonotonicClock, Scheduler
from anycastd.observe.logs import configure as configure_logging
from anycastd.observe.logs import event
from anycastd.observe.systemd import Notifier

log = logging.getLogger("anycastd")

#: How often maintenance/drain flag files are looked at. A stat() per file: cheap.
FLAG_POLL_INTERVAL = 1.0


def service_params(svc: ServiceConfig) -> ServiceParams:
    damping = None
    if svc.damping is not None:
        d = svc.damping
        damping = DampingParams(
            penalty=d.penalty,
            half_life=d.half_life,
            suppress=d.suppress,
            reuse=d.reuse,
            max_suppress=d.max_suppress,
        )
    return ServiceParams(
        name=svc.name,
        checks=tuple(CheckParams(c.name, rise=c.rise, fall=c.fall) for c in svc.checks),
        policy=Policy.parse(svc.policy),
        start_state=CheckState.UP if svc.start_state == "up" else CheckState.DOWN,
        damping=damping,
        disabled=svc.disabled,
    )


def check_specs(svc: ServiceConfig) -> list[CheckSpec]:
    return [
        CheckSpec(
            service=svc.name,
            check=c.name,
            probe=build_probe(c),
            interval=c.interval,
            fast_interval=c.fast_interval,
            timeout=c.timeout,
            jitter=c.jitter,
        )
        for c in svc.checks
    ]


def carry_over(
    old_config: Config | None,
    old_health: Mapping[str, ServiceHealth],
    new_config: Config,
    now: float,
) -> dict[str, ServiceHealth]:
    """The health each service of ``new_config`` starts with (see the module docstring)."""
    out: dict[str, ServiceHealth] = {}
    for name, svc in new_config.services.items():
        params = service_params(svc)
        previous = old_health.get(name)
        old_svc = old_config.services.get(name) if old_config is not None else None
        if previous is not None and old_svc == svc:
            out[name] = previous
        elif previous is not None:
            out[name] = previous.reconfigure(params, now).health
        else:
            out[name] = ServiceHealth.initial(params, now)
    return out


def log_events(events: Sequence[Event]) -> None:
    """One structured line per engine event."""
    for ev in events:
        if isinstance(ev, ServiceTransition):
            event(log, "service_transition", service=ev.service, old=ev.old.value,
                  new=ev.new.value, reason=ev.reason)
        elif isinstance(ev, CheckTransition):
            event(log, "check_transition", service=ev.service, check=ev.check,
                  old=ev.old.value, new=ev.new.value, reason=ev.reason)
        elif isinstance(ev, Flapped):
            event(log, "flap", level=logging.WARNING, service=ev.service,
                  penalty=round(ev.penalty, 1), suppressed=ev.suppressed_until is not None)
        elif isinstance(ev, Reused):
            event(log, "damping_reuse", service=ev.service)


@dataclass
class _Flags:
    maintenance: bool = False
    draining: bool = False


class Daemon:
    """The running daemon. ``on_events`` observers see every engine event after logging."""

    def __init__(
        self,
        config: Config,
        config_path: Path | None,
        *,
        clock: Clock | None = None,
        notifier: Notifier | None = None,
        observers: Sequence[Callable[[Sequence[Event]], None]] = (),
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.clock: Clock = clock or MonotonicClock()
        self.notifier = notifier or Notifier()
        self._observers = list(observers)
        self._scheduler: Scheduler | None = None
        self._wake = asyncio.Event()  # set by a stop or reload request (signal handlers)
        self._stopping = False
        self._reload_requested = False
        self._flags: dict[str, _Flags] = {}
        self.reload_ok: bool | None = None

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

    def _on_events(self, events: Sequence[Event]) -> None:
        log_events(events)
        for observer in self._observers:
            observer(events)

    def _build(self, health: Mapping[str, ServiceHealth]) -> Scheduler:
        specs = [spec for svc in self.config.services.values() for spec in check_specs(svc)]
        return Scheduler(
            specs,
            health,
            clock=self.clock,
            max_concurrent=self.config.global_.max_concurrent_checks,
            on_events=self._on_events,
        )

    async def run(self, duration: float | None = None) -> int:
        now = self.clock.now()
        health = carry_over(None, {}, self.config, now)
        self._scheduler = self._build(health)
        for name, h in health.items():
            event(log, "service_start", service=name, state=h.state.value, reason=h.reason)
        event(log, "started", node=self.config.global_.node,
              services=len(self.config.services), config=str(self.config_path))
        self.notifier.ready(f"{len(self.config.services)} services")
        async with asyncio.TaskGroup() as tg:
            sched_task = tg.create_task(self._scheduler.run())
            helpers = [tg.create_task(self._watch_flags()), tg.create_task(self._watchdog())]
            if duration is not None:
                helpers.append(tg.create_task(self._stop_after(duration)))
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._stopping:
                    break
                if self._reload_requested:
                    self._reload_requested = False
                    sched_task = await self._do_reload(tg, sched_task)
            self.notifier.stopping()
            event(log, "stopping")
            # Cancelled children end quietly; the TaskGroup waits for their finally blocks.
            for task in (sched_task, *helpers):
                task.cancel()
        event(log, "stopped")
        return 0

    async def _stop_after(self, duration: float) -> None:
        await asyncio.sleep(duration)
        self.request_stop()

    async def _do_reload(
        self, tg: asyncio.TaskGroup, sched_task: asyncio.Task[None]
    ) -> asyncio.Task[None]:
        self.notifier.reloading()
        path = self.config_path
        if path is None:  # a config built in memory (demo, tests) has nothing to re-read
            return sched_task
        try:
            new = load_config(path)
        except ConfigError as exc:
            self.reload_ok = False
            event(log, "reload_rejected", level=logging.ERROR, config=str(path),
                  problems=len(exc.issues), detail=str(exc))
            self.notifier.ready("reload rejected; running the previous config")
            return sched_task
        old_sched = self.scheduler
        sched_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sched_task
        changed = sorted(
            n for n in set(new.services) | set(self.config.services)
            if new.services.get(n) != self.config.services.get(n)
        )
        health = carry_over(self.config, old_sched.services, new, self.clock.now())
        self.config = new
        self._scheduler = self._build(health)
        self.reload_ok = True
        event(log, "reloaded", config=str(path), changed=changed,
              unchanged=len(new.services) - len([n for n in changed if n in new.services]))
        self.notifier.ready(f"{len(new.services)} services")
        return tg.create_task(self._scheduler.run())

    async def _watch_flags(self) -> None:
        """Maintenance and drain files: per service, and the node-wide maintenance file."""
        while True:
            node_file = self.config.global_.maintenance_file
            node_maint = node_file is not None and node_file.exists()
            for name, svc in self.config.services.items():
                want = _Flags(
                    maintenance=node_maint
                    or (svc.maintenance_file is not None and svc.maintenance_file.exists()),
                    draining=svc.drain_file is not None and svc.drain_file.exists(),
                )
                have = self.scheduler.health(name)
                if want.maintenance != have.maintenance:
                    why = "node maintenance file" if node_maint else "maintenance file"
                    self.scheduler.set_maintenance(name, want.maintenance, f"{why} present")
                if want.draining != have.draining:
                    self.scheduler.set_draining(name, want.draining, "drain file present")
            await asyncio.sleep(FLAG_POLL_INTERVAL)

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval()
        if interval is None:
            return
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)


async def run_daemon(config: Config, *, config_path: Path | None, duration: float | None) -> int:
    """Entry point of ``anycastd run``: logging, signals, then the daemon until stopped."""
    configure_logging(config.global_.log_format, config.global_.log_level)
    daemon = Daemon(config, config_path)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.request_stop)
    loop.add_signal_handler(signal.SIGHUP, daemon.request_reload)
    try:
        return await daemon.run(duration)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
