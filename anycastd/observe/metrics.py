"""Prometheus metrics of anycastd: one :class:`Metrics` per daemon, on a registry passed in.

Rule: no module-level state. The ``CollectorRegistry`` is built by the caller (the daemon,
or a test) and handed in; nothing here touches prometheus_client's global ``REGISTRY``.
Feeding methods are plain synchronous calls, cheap enough for the event loop; rendering
(:meth:`Metrics.render`) walks every series and may be run in a thread (prometheus_client
values are lock protected).

Metric names and label names are public API (dashboards and alerts depend on them); they
are pinned by ``tests/unit/data/snapshots/metrics.txt``. Conventions: base units
(seconds), ``_total`` counters, histograms for durations, state-set gauges that export
every possible state (1 for the current one, 0 for the others) so ``== 1`` selects and a
missing series means "unknown", never "not in that state".

Every family, its type, labels and meaning: docs/metrics.md (kept true by
``tests/unit/test_metrics_docs.py``). Fed from the engine: the schedulers (``observe_run``,
``observe_events``), the controller (``reconcile_pass``, ``set_announced``,
``set_pass``, actuator counters), the daemon (peers,
reloads, sysctls) and, at scrape time, the health values (``watch_health``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Final, Protocol

from prometheus_client import CONTENT_TYPE_LATEST as _CONTENT_TYPE
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from anycastd import __version__
from anycastd.core.health import (
    CheckState,
    CheckTransition,
    Event,
    Flapped,
    ServiceHealth,
    ServiceState,
    ServiceTransition,
)
from anycastd.errors import ActuatorError
from anycastd.observe.collectors import (
    CHECK_RESULTS,
    DURATION_BUCKETS,
    LATENESS_BUCKETS,
    AddressSample,
    HealthCollector,
    HealthSource,
    PassSamples,
    RealServerSample,
    RouteSample,
    RunStats,
    Snapshots,
    split_real_server,
)

__all__ = [
    "ACTUATORS",
    "CHECK_RESULTS",
    "CONTENT_TYPE",
    "DURATION_BUCKETS",
    "LATENESS_BUCKETS",
    "RECONCILE_BUCKETS",
    "AddressSample",
    "CheckRunLike",
    "HealthSource",
    "Metrics",
    "PassSamples",
    "RealServerSample",
    "RouteSample",
]

#: The Content-Type of :meth:`Metrics.render` (Prometheus text format 0.0.4).
CONTENT_TYPE: Final = _CONTENT_TYPE

#: A reconcile pass: ~1 ms when nothing changes; netlink writes and the withdraw settle
#: (a few hundred ms) when something does; seconds mean a stuck actuator.
RECONCILE_BUCKETS: Final = (0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0)

#: The actuators whose writes and errors are counted (their ``ACTUATOR`` names).
ACTUATORS: Final = ("loopback", "ipvs", "exabgp", "sysctl", "frr", "realserver", "policyroute")

_STATES: Final = tuple(s.value for s in ServiceState)


class CheckRunLike(Protocol):
    """What :meth:`Metrics.observe_run` reads (``anycastd.engine.scheduler.CheckRun`` fits)."""

    @property
    def service(self) -> str: ...

    @property
    def check(self) -> str: ...

    @property
    def status(self) -> str: ...

    @property
    def latency(self) -> float: ...

    @property
    def lateness(self) -> float: ...


class Metrics:
    """The daemon's metrics on ``registry`` (a fresh one per instance when None).

    ``process=True`` also registers the standard ``process_*``, ``python_gc_*`` and
    ``python_info`` collectors on the same registry (the daemon wants them; tests usually
    do not). ``wall``: the unix-time clock of the ``*_timestamp_seconds`` gauges.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        version: str = __version__,
        process: bool = False,
        wall: Callable[[], float] = time.time,
    ) -> None:
        reg = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.registry: Final = reg
        if process:
            ProcessCollector(registry=reg)
            PlatformCollector(registry=reg)
            GCCollector(registry=reg)
        self._wall = wall
        self._build_info = Gauge(
            "anycastd_build_info", "anycastd build information; always 1.", ["version"],
            registry=reg,
        )  # fmt: skip
        self._build_info.labels(version).set(1)
        self._service_state = Gauge(
            "anycastd_service_state",
            "1 for the service's current state, 0 for the other states.",
            ["service", "state"],
            registry=reg,
        )
        self._check_up = Gauge(
            "anycastd_check_up",
            "1 while the check's hysteresis state is up (after rise/fall), else 0.",
            ["service", "check"],
            registry=reg,
        )
        self._announced = Gauge(
            "anycastd_prefix_announced",
            "1 while this node publishes the service's prefix over BGP or OSPF, else 0 "
            "(always 0 for a service without [ospf] when there is no [bgp] section).",
            ["service", "prefix"],
            registry=reg,
        )
        # the per-run metrics: plain numbers on the hot path, families at scrape time
        self._runs = RunStats("anycastd_check", ("service", "check"), lateness=True)
        reg.register(self._runs)
        self._rs_runs = RunStats(
            "anycastd_real_server_check", ("service", "real_server", "check"), lateness=False
        )
        reg.register(self._rs_runs)
        self._snapshots = Snapshots()
        reg.register(self._snapshots)
        self._health = HealthCollector()
        reg.register(self._health)
        self._transitions = Counter(
            "anycastd_transitions",
            "Service state transitions by the state entered.",
            ["service", "to"],
            registry=reg,
        )
        self._flaps = Counter(
            "anycastd_flaps",
            "Flap-damping flaps (policy verdict up->down) of services with damping.",
            ["service"],
            registry=reg,
        )
        self._peer_up = Gauge(
            "anycastd_bgp_peer_up", "1 while the BGP session is established, else 0.",
            ["peer"], registry=reg,
        )  # fmt: skip
        self._peer_flaps = Counter(
            "anycastd_bgp_session_flaps",
            "Established BGP sessions that went down (ExaBGP neighbor-changes).",
            ["peer"],
            registry=reg,
        )
        self._peer_since = Gauge(
            "anycastd_bgp_peer_last_change_timestamp_seconds",
            "Unix time the BGP session last went up or down (as reported to anycastd).",
            ["peer"],
            registry=reg,
        )
        self._peers: dict[str, bool] = {}
        self._actuator_errors = Counter(
            "anycastd_actuator_errors",
            "Failed actuator changes by kind (transient: retried; permanent: left as drift).",
            ["actuator", "kind"],
            registry=reg,
        )
        self._actuator_writes = Counter(
            "anycastd_actuator_writes",
            "Changes an actuator made to its external system (netlink writes, BGP updates).",
            ["actuator"],
            registry=reg,
        )
        for actuator in ACTUATORS:  # born at 0: increase() sees the first error
            self._actuator_writes.labels(actuator)
            for kind in ("transient", "permanent"):
                self._actuator_errors.labels(actuator, kind)
        self._reload_success = Gauge(
            "anycastd_config_last_reload_success",
            "1 if the last configuration load (start or reload) succeeded, else 0.",
            registry=reg,
        )
        self._reload_ts = Gauge(
            "anycastd_config_last_reload_timestamp_seconds",
            "Unix time of the last configuration load attempt (start or reload).",
            registry=reg,
        )
        self._reload_ok_ts = Gauge(
            "anycastd_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load (start or reload).",
            registry=reg,
        )
        self._reconcile = Histogram(
            "anycastd_reconcile_duration_seconds",
            "Duration of a controller reconcile pass (observe, plan, execute), in seconds.",
            buckets=RECONCILE_BUCKETS,
            registry=reg,
        )
        self._reconcile_ok = Gauge(
            "anycastd_reconcile_last_success_timestamp_seconds",
            "Unix time a reconcile pass last ended converged (nothing left to do, no error).",
            registry=reg,
        )
        self._sysctl = Gauge(
            "anycastd_sysctl_drift",
            "1 when a sysctl the IPVS forwarding methods need differs from its required "
            "value (checked at start), else 0.",
            ["key"],
            registry=reg,
        )
        # label sets created per service, so forget_service removes exactly those
        self._checks: dict[str, set[str]] = {}
        self._prefixes: dict[str, set[str]] = {}
        self._bgp = True  # see set_bgp_configured
        self._known: set[str] = set()  # services with state/transition series
        self._flapping: set[str] = set()  # services with a flaps series

    # ---- health

    def observe_run(self, run: CheckRunLike) -> None:
        """One finished probe run (the scheduler's ``on_run``): the hot path."""
        self._runs.observe((run.service, run.check), run.status, run.latency)
        self._runs.late(run.lateness)

    def observe_real_server_run(self, run: CheckRunLike) -> None:
        """One finished real-server probe run; ``run.service`` is the real-server
        scheduler's ``SERVICE/ADDRESS:PORT``, exported as ``service`` and ``real_server``."""
        service, real_server = split_real_server(run.service)
        self._rs_runs.observe((service, real_server, run.check), run.status, run.latency)
        self._runs.late(run.lateness)

    def watch_health(self, source: HealthSource) -> None:
        """Read health at scrape time from ``source`` (the daemon's schedulers)."""
        self._health.offset = self._wall() - source.now()
        self._health.source = source

    def observe_events(self, events: Iterable[Event]) -> None:
        """Engine events (the scheduler's ``on_events``): transitions, check states, flaps."""
        for ev in events:
            if isinstance(ev, ServiceTransition):
                self._touch_service(ev.service)
                self._transitions.labels(ev.service, ev.new.value).inc()
                self._set_state(ev.service, ev.new)
            elif isinstance(ev, Flapped):
                self._flapping.add(ev.service)
                self._flaps.labels(ev.service).inc()
            elif isinstance(ev, CheckTransition):
                self._touch_check(ev.service, ev.check)
                self._check_up.labels(ev.service, ev.check).set(
                    1 if ev.new is CheckState.UP else 0
                )

    def set_service_states(self, states: Mapping[str, ServiceState]) -> None:
        """Set the state gauges of the given services (others are left as they are)."""
        for name, state in states.items():
            self._touch_service(name)
            self._set_state(name, state)

    def sync(self, services: Mapping[str, ServiceHealth]) -> None:
        """Make service and check gauges match ``services``, the COMPLETE current set:
        services not in it are forgotten (call after start and after every reload)."""
        tracked = self._known | self._flapping | set(self._checks) | set(self._prefixes)
        for gone in tracked - set(services):
            self.forget_service(gone)
        for name, h in services.items():
            self._touch_service(name)
            self._set_state(name, h.state)
            keep = {c.name for c in h.checks}
            for old in self._checks.get(name, set()) - keep:
                self._forget_check(name, old)
            for c in h.checks:
                self._touch_check(name, c.name)
                self._check_up.labels(name, c.name).set(1 if c.state is CheckState.UP else 0)

    def set_bgp_configured(self, configured: bool) -> None:
        """Without ``[bgp]`` nothing is announced, whatever a caller passes to
        :meth:`set_announced`: every prefix reads 0 (known: not announced), never 1."""
        self._bgp = configured
        if not configured:
            for service, prefixes in self._prefixes.items():
                for prefix in prefixes:
                    self._announced.labels(service, prefix).set(0)

    def set_announced(
        self, service: str, prefixes: Iterable[str], configured: Iterable[str] | None = None
    ) -> None:
        """``prefixes``: what this node announces for ``service`` now (1). Prefixes seen
        before but not announced now read 0. With ``configured`` (the service's prefixes
        in the config) every configured prefix is exported and any other one is removed."""
        given = set(prefixes)
        announced = given if self._bgp else set()
        known = self._prefixes.setdefault(service, set())
        series = (set(configured) | given) if configured is not None else known | given
        for stale in known - series:
            _remove(self._announced, service, stale)
        for prefix in series:
            self._announced.labels(service, prefix).set(1 if prefix in announced else 0)
        self._prefixes[service] = series

    def forget_service(self, name: str) -> None:
        """Remove every series of a service (it was removed from the config)."""
        if name in self._known:
            for state in _STATES:
                _remove(self._service_state, name, state)
                _remove(self._transitions, name, state)
            self._known.discard(name)
        for check in list(self._checks.get(name, ())):
            self._forget_check(name, check)
        self._checks.pop(name, None)
        for key in [k for k in self._runs.checks if k[0] == name]:
            self._runs.forget(key)  # runs seen without a sync
        service, real_server = split_real_server(name)
        for key in [k for k in self._rs_runs.checks
                    if k[0] == service and (not real_server or k[1] == real_server)]:
            self._rs_runs.forget(key)  # a real server's (SERVICE/ADDRESS:PORT) or all of one
        for prefix in self._prefixes.pop(name, set()):
            _remove(self._announced, name, prefix)
        if name in self._flapping:
            _remove(self._flaps, name)
            self._flapping.discard(name)
        self._snapshots.forget(name)  # until the next pass replaces them

    # ---- BGP, actuators, config

    def set_peer(self, peer: str, up: bool) -> None:
        """A BGP session's state; ``peer`` is the neighbor's label (name, else address).
        An established session that goes down is a flap."""
        was = self._peers.get(peer)
        if was is None:
            self._peer_flaps.labels(peer)  # born at 0: increase() sees the first flap
        if was is None or was != up:
            self._peer_since.labels(peer).set(self._wall())
        if was is True and not up:
            self._peer_flaps.labels(peer).inc()
        self._peers[peer] = up
        self._peer_up.labels(peer).set(1 if up else 0)

    def sync_peers(self, peers: Mapping[str, bool]) -> None:
        """``peers``: label -> established, the COMPLETE configured set (at start and after
        a reload): a new peer gets its series (a session never up still has one), a removed
        one loses them, a known one is left as its events set it."""
        for gone in set(self._peers) - set(peers):
            self.forget_peer(gone)
        for peer, up in peers.items():
            if peer not in self._peers:
                self.set_peer(peer, up)

    def forget_peer(self, peer: str) -> None:
        """Remove a peer's series (the neighbor was removed from the config)."""
        for metric in (self._peer_up, self._peer_flaps, self._peer_since):
            _remove(metric, peer)
        self._peers.pop(peer, None)

    def set_pass(self, samples: Callable[[], PassSamples]) -> None:
        """What the last reconcile pass observed (routes per peer, IPVS real servers,
        addresses), as a function computed when first scraped; replaces the last pass's.
        ``samples`` runs in the scraping thread: it must only read values it captured."""
        self._snapshots.set(samples)

    def reconcile_pass(self, duration: float, converged: bool) -> None:
        """A reconcile pass took ``duration`` seconds; ``converged``: it ended with nothing
        left to do and no error."""
        self._reconcile.observe(max(duration, 0.0))
        if converged:
            self._reconcile_ok.set(self._wall())

    def set_sysctls(self, required: Iterable[str], drifted: Iterable[str]) -> None:
        """The sysctl keys the config needs, and those of them that differ now."""
        bad = set(drifted)
        for key in set(required) | bad:
            self._sysctl.labels(key).set(1 if key in bad else 0)

    def actuator_error(self, actuator: str, transient: bool) -> None:
        self._actuator_errors.labels(actuator, "transient" if transient else "permanent").inc()

    def actuator_failed(self, error: ActuatorError) -> None:
        """Count an :class:`ActuatorError` by its own actuator name and kind."""
        self.actuator_error(error.actuator, error.transient)

    def actuator_writes(self, actuator: str, n: int = 1) -> None:
        if n < 0:
            raise ValueError(f"actuator_writes: n must be >= 0, got {n}")
        self._actuator_writes.labels(actuator).inc(n)

    def reload(self, success: bool, ts: float) -> None:
        """A configuration load attempt (the initial load counts) at unix time ``ts``."""
        self._reload_success.set(1 if success else 0)
        self._reload_ts.set(ts)
        if success:
            self._reload_ok_ts.set(ts)

    # ---- rendering

    def render(self) -> bytes:
        """The Prometheus text exposition of the whole registry, without the ``_created``
        samples of counters and histograms (in the text format each would be one more
        gauge series per label set, which Prometheus does not use)."""
        return generate_latest(_WithoutCreated(self.registry))

    # ---- internals

    def _touch_service(self, name: str) -> None:
        if name in self._known:
            return
        self._known.add(name)
        for state in _STATES:
            self._transitions.labels(name, state)  # born at 0: increase() sees the first

    def _set_state(self, name: str, state: ServiceState) -> None:
        for value in _STATES:
            self._service_state.labels(name, value).set(1 if value == state.value else 0)

    def _touch_check(self, service: str, check: str) -> None:
        checks = self._checks.setdefault(service, set())
        if check in checks:
            return
        checks.add(check)
        self._runs.touch((service, check))

    def _forget_check(self, service: str, check: str) -> None:
        self._runs.forget((service, check))
        _remove(self._check_up, service, check)
        self._checks.get(service, set()).discard(check)


def _remove(metric: Counter | Gauge | Histogram, *labels: str) -> None:
    # prometheus_client < 0.21 raises KeyError for a label set that does not exist
    with contextlib.suppress(KeyError):
        metric.remove(*labels)


class _WithoutCreated(Collector):
    """A view of a registry that drops ``<family>_created`` samples (per instance, unlike
    prometheus_client's process-global ``disable_created_metrics``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        for metric in self._registry.collect():
            created = metric.name + "_created"
            if not any(s.name == created for s in metric.samples):
                yield metric
                continue
            copy = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            copy.samples = [s for s in metric.samples if s.name != created]
            yield copy
