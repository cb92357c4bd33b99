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

Families (labels)::

    anycastd_build_info{version}                         gauge, always 1
    anycastd_service_state{service,state}                gauge 0/1, all 5 states
    anycastd_check_up{service,check}                     gauge 0/1, check hysteresis state
    anycastd_prefix_announced{service,prefix}            gauge 0/1 (0 for all without [bgp])
    anycastd_check_duration_seconds{service,check}       histogram, probe latency
    anycastd_check_results_total{service,check,result}   counter, result ok|fail|timeout|error
    anycastd_check_lateness_seconds                      histogram, scheduler start lateness
    anycastd_transitions_total{service,to}               counter, service state transitions
    anycastd_flaps_total{service}                        counter, damping flaps (up->down)
    anycastd_bgp_peer_up{peer}                           gauge 0/1
    anycastd_actuator_errors_total{actuator,kind}        counter, kind transient|permanent
    anycastd_actuator_writes_total{actuator}             counter, changes made
    anycastd_config_last_reload_success                  gauge 0/1
    anycastd_config_last_reload_timestamp_seconds        gauge, unix time of the last attempt
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Iterable, Mapping
from typing import Final, Protocol

from prometheus_client import CONTENT_TYPE_LATEST as _CONTENT_TYPE
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

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

__all__ = [
    "CHECK_RESULTS",
    "CONTENT_TYPE",
    "DURATION_BUCKETS",
    "LATENESS_BUCKETS",
    "CheckRunLike",
    "Metrics",
]

#: The Content-Type of :meth:`Metrics.render` (Prometheus text format 0.0.4).
CONTENT_TYPE: Final = _CONTENT_TYPE

#: Probe latency: 1ms .. 10s (a check timeout is below its interval, typically 1-5 s).
#: Few buckets on purpose: this histogram has a series per check, and at 10,000 checks every
#: bucket costs 10,000 series in each scrape (bench/README_checks.md).
DURATION_BUCKETS: Final = (0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10.0)
#: Scheduler lateness is normally sub-millisecond; the tail shows an overloaded loop.
LATENESS_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
#: Every result label value, created at 0 on a check's first run so increase() sees the
#: first failure (a counter born at 1 hides it).
CHECK_RESULTS: Final = ("ok", "fail", "timeout", "error")

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

    ``process=True`` also registers the standard ``process_*`` and ``python_info``
    collectors on the same registry (the daemon wants them; tests usually do not).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        version: str = __version__,
        process: bool = False,
    ) -> None:
        reg = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.registry: Final = reg
        if process:
            ProcessCollector(registry=reg)
            PlatformCollector(registry=reg)
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
            "1 while this node announces the service's prefix over BGP, else 0 (always 0 "
            "without a [bgp] section: nothing is announced).",
            ["service", "prefix"],
            registry=reg,
        )
        # the per-run metrics: plain numbers on the hot path, families at scrape time
        self._runs = _RunStats()
        reg.register(self._runs)
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
        # label sets created per service, so forget_service removes exactly those
        self._checks: dict[str, set[str]] = {}
        self._prefixes: dict[str, set[str]] = {}
        self._bgp = True  # see set_bgp_configured
        self._known: set[str] = set()  # services with state/transition series
        self._flapping: set[str] = set()  # services with a flaps series

    # ---- health

    def observe_run(self, run: CheckRunLike) -> None:
        """One finished probe run (the scheduler's ``on_run``): the hot path."""
        self._runs.observe(run.service, run.check, run.status, run.latency, run.lateness)

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
        for service, check in [k for k in self._runs.checks if k[0] == name]:
            self._runs.forget(service, check)  # runs seen without a sync (real servers)
        for prefix in self._prefixes.pop(name, set()):
            _remove(self._announced, name, prefix)
        if name in self._flapping:
            _remove(self._flaps, name)
            self._flapping.discard(name)

    # ---- BGP, actuators, config

    def set_peer(self, peer: str, up: bool) -> None:
        """A BGP session's state; ``peer`` is the neighbor's label (name, else address)."""
        self._peer_up.labels(peer).set(1 if up else 0)

    def forget_peer(self, peer: str) -> None:
        """Remove a peer's series (the neighbor was removed from the config)."""
        _remove(self._peer_up, peer)

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
        self._runs.touch(service, check)

    def _forget_check(self, service: str, check: str) -> None:
        self._runs.forget(service, check)
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


class _Histogram:
    """Bucket counts (not cumulative; the last one is +Inf) and the sum."""

    __slots__ = ("counts", "total")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * (buckets + 1)
        self.total = 0.0

    def observe(self, bounds: tuple[float, ...], value: float) -> None:
        value = max(value, 0.0)
        self.counts[bisect.bisect_left(bounds, value)] += 1  # le: value <= bound
        self.total += value

    def buckets(self, bounds: tuple[float, ...]) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*map(floatToGoString, bounds), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


class _CheckRuns:
    __slots__ = ("duration", "results")

    def __init__(self) -> None:
        self.duration = _Histogram(len(DURATION_BUCKETS))
        self.results = dict.fromkeys(CHECK_RESULTS, 0)


class _RunStats(Collector):
    """Per-check run counters and latency histograms, plus the scheduler's lateness.

    prometheus_client's Counter and Histogram take a lock per update and walk their buckets
    in Python: at 10,000 checks a second that was a quarter of a core
    (bench/README_checks.md). Here a run is a few integer increments on the event loop's
    thread, and the metric families are built only when scraped (from the API's worker
    thread: reading while the loop writes can only miss the run in flight)."""

    def __init__(self) -> None:
        self.checks: dict[tuple[str, str], _CheckRuns] = {}
        self.lateness = _Histogram(len(LATENESS_BUCKETS))

    def touch(self, service: str, check: str) -> None:
        self.checks.setdefault((service, check), _CheckRuns())

    def forget(self, service: str, check: str) -> None:
        self.checks.pop((service, check), None)

    def observe(
        self, service: str, check: str, status: str, latency: float, lateness: float
    ) -> None:
        runs = self.checks.get((service, check))
        if runs is None:
            runs = self.checks[(service, check)] = _CheckRuns()
        runs.duration.observe(DURATION_BUCKETS, latency)
        results = runs.results
        # bounded label values: an unexpected status is the probe's own error
        key = status if status in results else "error"
        results[key] += 1
        self.lateness.observe(LATENESS_BUCKETS, lateness)

    def collect(self) -> Iterable[Metric]:
        items = list(self.checks.items())
        duration = HistogramMetricFamily(
            "anycastd_check_duration_seconds", "Probe run latency in seconds.",
            labels=["service", "check"],
        )  # fmt: skip
        results = CounterMetricFamily(
            "anycastd_check_results", "Probe runs by result (ok, fail, timeout, error).",
            labels=["service", "check", "result"],
        )  # fmt: skip
        for (service, check), runs in items:
            duration.add_metric(
                [service, check], runs.duration.buckets(DURATION_BUCKETS),
                runs.duration.total,
            )  # fmt: skip
            for result, n in list(runs.results.items()):
                results.add_metric([service, check, result], n)
        lateness = HistogramMetricFamily(
            "anycastd_check_lateness_seconds",
            "How late the scheduler started a probe run after its due time, in seconds.",
        )
        lateness.add_metric([], self.lateness.buckets(LATENESS_BUCKETS), self.lateness.total)
        return [duration, results, lateness]
