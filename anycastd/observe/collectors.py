"""Custom Prometheus collectors behind :class:`anycastd.observe.metrics.Metrics`.

Rule: the event loop only swaps references or bumps integers here; metric families are built
when scraped (from the API's worker thread). Every value read at scrape time is either an
immutable value the loop replaced as a whole (a tuple of samples, a health mapping copied
under the GIL) or a plain number: a scrape can miss the update in flight, never see half of
one.

* :class:`RunStats`: per-check run counters and latency histograms (the hot path), plus the
  scheduler's lateness histogram.
* :class:`Snapshots`: series that are a function of the last controller pass (routes per
  peer, IPVS real servers, addresses): the pass hands over how to compute the complete set,
  so a series that is no longer true simply disappears, and the loop does not pay for it.
* :class:`HealthCollector`: series read from the health values at scrape time (operator
  flags, damping penalty, the time of the last transition, real-server health): a damping
  penalty decays between events, so it is computed when asked for.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from anycastd.core.health import CheckState, ServiceHealth, ServiceState

__all__ = [
    "CHECK_RESULTS",
    "DURATION_BUCKETS",
    "LATENESS_BUCKETS",
    "AddressSample",
    "HealthCollector",
    "HealthSource",
    "PassSamples",
    "RealServerSample",
    "RouteSample",
    "RunStats",
    "Snapshots",
    "split_real_server",
]

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


def split_real_server(name: str) -> tuple[str, str]:
    """``"web/10.1.0.10:80"`` (the real-server scheduler's service name) -> ``("web",
    "10.1.0.10:80")``. Service names cannot contain ``/`` (config.scalars.Name)."""
    service, _, real_server = name.partition("/")
    return service, real_server


class Histogram:
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
        self.duration = Histogram(len(DURATION_BUCKETS))
        self.results = dict.fromkeys(CHECK_RESULTS, 0)


class RunStats(Collector):
    """Per-check run counters and latency histograms of one scheduler.

    prometheus_client's Counter and Histogram take a lock per update and walk their buckets
    in Python: at 10,000 checks a second that was a quarter of a core
    (bench/README_checks.md). Here a run is a few integer increments on the event loop's
    thread, and the metric families are built only when scraped (from the API's worker
    thread: reading while the loop writes can only miss the run in flight).

    ``prefix`` names the families (``anycastd_check`` or ``anycastd_real_server_check``);
    ``labels`` the label names of a key (the key is a tuple of that many strings);
    ``lateness``: also export the scheduler lateness histogram (one collector does)."""

    def __init__(self, prefix: str, labels: tuple[str, ...], *, lateness: bool) -> None:
        self.prefix = prefix
        self.labels = labels
        self.checks: dict[tuple[str, ...], _CheckRuns] = {}
        self.lateness = Histogram(len(LATENESS_BUCKETS)) if lateness else None

    def touch(self, key: tuple[str, ...]) -> None:
        self.checks.setdefault(key, _CheckRuns())

    def forget(self, key: tuple[str, ...]) -> None:
        self.checks.pop(key, None)

    def observe(self, key: tuple[str, ...], status: str, latency: float) -> None:
        runs = self.checks.get(key)
        if runs is None:
            runs = self.checks[key] = _CheckRuns()
        runs.duration.observe(DURATION_BUCKETS, latency)
        results = runs.results
        # bounded label values: an unexpected status is the probe's own error
        results[status if status in results else "error"] += 1

    def late(self, lateness: float) -> None:
        if self.lateness is not None:
            self.lateness.observe(LATENESS_BUCKETS, lateness)

    def collect(self) -> Iterable[Metric]:
        items = list(self.checks.items())
        duration = HistogramMetricFamily(
            f"{self.prefix}_duration_seconds", "Probe run latency in seconds.",
            labels=list(self.labels),
        )  # fmt: skip
        results = CounterMetricFamily(
            f"{self.prefix}_results", "Probe runs by result (ok, fail, timeout, error).",
            labels=[*self.labels, "result"],
        )  # fmt: skip
        for key, runs in items:
            duration.add_metric(
                list(key), runs.duration.buckets(DURATION_BUCKETS), runs.duration.total
            )
            for result, n in list(runs.results.items()):
                results.add_metric([*key, result], n)
        out: list[Metric] = [duration, results]
        if self.lateness is not None:
            lateness = HistogramMetricFamily(
                "anycastd_check_lateness_seconds",
                "How late the scheduler started a probe run after its due time, in seconds.",
            )
            lateness.add_metric([], self.lateness.buckets(LATENESS_BUCKETS), self.lateness.total)
            out.append(lateness)
        return out


# --------------------------------------------------------------------------- per pass


class RouteSample(NamedTuple):
    """One RIB-out entry: ``prefix`` offered to ``peer`` (its name, else its address; ``*``
    for every neighbor of an external ExaBGP) on behalf of ``service`` (empty: no configured
    owner), with the attributes of ``attributes_state`` (``up``, ``draining``,
    ``maintenance``, or ``other`` when they match no state of the config)."""

    prefix: str
    peer: str
    service: str
    attributes_state: str


class RealServerSample(NamedTuple):
    """One real server of an owned IPVS virtual service as the kernel reported it."""

    service: str
    virtual_service: str
    real_server: str
    weight: int
    active_connections: int
    inactive_connections: int


class AddressSample(NamedTuple):
    """A configured host prefix of ``service`` and whether its address is on the interface."""

    service: str
    prefix: str
    present: bool


class PassSamples(NamedTuple):
    """What one reconcile pass observed, as samples."""

    routes: Sequence[RouteSample] = ()
    real_servers: Sequence[RealServerSample] = ()
    addresses: Sequence[AddressSample] = ()


class _View:
    """One pass's samples: computed on the first scrape that asks, then kept. ``exclude``:
    services forgotten (a reload removed them) until the next pass replaces the view."""

    __slots__ = ("compute", "exclude", "samples")

    def __init__(
        self, compute: Callable[[], PassSamples], exclude: frozenset[str] = frozenset()
    ) -> None:
        self.compute = compute
        self.exclude = exclude
        self.samples: PassSamples | None = None

    def get(self) -> PassSamples:
        samples = self.samples
        if samples is None:
            samples = self.samples = self.compute()
        return samples


class Snapshots(Collector):
    """What the last controller pass observed. A pass hands over a function that computes
    its samples (:meth:`set`): the event loop only swaps a reference, and the samples (a
    few hundred ms of Python at 10,000 prefixes) are built by the scrape that needs them,
    at most once per pass, in the API's worker thread."""

    def __init__(self) -> None:
        self._view = _View(PassSamples)

    def set(self, compute: Callable[[], PassSamples]) -> None:
        self._view = _View(compute)

    def forget(self, service: str) -> None:
        view = self._view
        forgotten = _View(view.compute, view.exclude | {service})
        forgotten.samples = view.samples
        self._view = forgotten

    def collect(self) -> Iterable[Metric]:
        view = self._view  # one reference read: a pass replacing it meanwhile is not seen
        samples, skip = view.get(), view.exclude
        routes = GaugeMetricFamily(
            "anycastd_route_announced",
            "1 for every prefix the BGP speaker offers a peer, with the service state whose "
            "attributes it carries (as read back from ExaBGP at the last reconcile pass).",
            labels=["prefix", "peer", "service", "attributes_state"],
        )
        for r in samples.routes:
            if r.service not in skip:
                routes.add_metric(list(r), 1)
        labels = ["service", "virtual_service", "real_server"]
        weight = GaugeMetricFamily(
            "anycastd_ipvs_real_server_weight",
            "The real server's weight in the kernel's IPVS table (0: drained).",
            labels=labels,
        )
        active = GaugeMetricFamily(
            "anycastd_ipvs_real_server_active_connections",
            "Active connections of the real server (IPVS dump at the last reconcile pass).",
            labels=labels,
        )
        inactive = GaugeMetricFamily(
            "anycastd_ipvs_real_server_inactive_connections",
            "Inactive connections of the real server (IPVS dump at the last reconcile pass).",
            labels=labels,
        )
        for s in samples.real_servers:
            if s.service in skip:
                continue
            key = [s.service, s.virtual_service, s.real_server]
            weight.add_metric(key, s.weight)
            active.add_metric(key, s.active_connections)
            inactive.add_metric(key, s.inactive_connections)
        present = GaugeMetricFamily(
            "anycastd_prefix_address_present",
            "1 while the host address of the service's prefix is on the managed interface "
            "(last reconcile pass), else 0; wider prefixes have no address and no series.",
            labels=["service", "prefix"],
        )
        for a in samples.addresses:
            if a.service not in skip:
                present.add_metric([a.service, a.prefix], 1 if a.present else 0)
        return [routes, weight, active, inactive, present]


# --------------------------------------------------------------------------- health


@dataclass(frozen=True)
class HealthSource:
    """Where :class:`HealthCollector` reads health at scrape time: the services' and the
    real servers' health (copies), and the daemon's monotonic clock."""

    services: Callable[[], Mapping[str, ServiceHealth]]
    real_servers: Callable[[], Mapping[str, ServiceHealth]]
    now: Callable[[], float]


class HealthCollector(Collector):
    """Series computed from the health values when scraped.

    Timestamps: health values carry monotonic times; ``offset`` (unix time minus monotonic
    time, measured once when the source was attached) turns them into unix times, so a value
    does not wobble from one scrape to the next (``changes()`` counts real transitions only).
    """

    def __init__(self) -> None:
        self.source: HealthSource | None = None
        self.offset = 0.0

    def collect(self) -> Iterable[Metric]:
        src = self.source
        if src is None:
            return []
        services = src.services()
        real_servers = src.real_servers()
        now = src.now()
        off = self.offset
        svc_ts = GaugeMetricFamily(
            "anycastd_service_last_transition_timestamp_seconds",
            "Unix time the service entered its current state (or anycastd started).",
            labels=["service"],
        )
        check_ts = GaugeMetricFamily(
            "anycastd_check_last_transition_timestamp_seconds",
            "Unix time the check entered its current up/down state (or anycastd started).",
            labels=["service", "check"],
        )
        maint = GaugeMetricFamily(
            "anycastd_service_maintenance",
            "1 while a maintenance flag is set for the service (API, its maintenance_file "
            "or the node's global.maintenance_file), else 0.",
            labels=["service"],
        )
        drain = GaugeMetricFamily(
            "anycastd_service_draining",
            "1 while a drain flag is set for the service (API or drain_file), else 0.",
            labels=["service"],
        )
        penalty = GaugeMetricFamily(
            "anycastd_damping_penalty",
            "The flap-damping penalty now (decayed); services with [damping] only.",
            labels=["service"],
        )
        suppressed = GaugeMetricFamily(
            "anycastd_damping_suppressed",
            "1 while flap damping holds the service down, else 0; services with [damping].",
            labels=["service"],
        )
        for name, h in sorted(services.items()):
            svc_ts.add_metric([name], h.since + off)
            maint.add_metric([name], 1 if h.maintenance else 0)
            drain.add_metric([name], 1 if h.draining else 0)
            for c in h.checks:
                check_ts.add_metric([name, c.name], c.since + off)
            params = h.params.damping
            if params is not None:
                penalty.add_metric([name], round(h.damping.penalty_at(params, now), 3))
                suppressed.add_metric([name], 1 if h.damping.suppressed(now) else 0)
        rs_up = GaugeMetricFamily(
            "anycastd_real_server_up",
            "1 while the IPVS real server passes its checks (after rise/fall), else 0.",
            labels=["service", "real_server"],
        )
        rs_check = GaugeMetricFamily(
            "anycastd_real_server_check_up",
            "1 while the real server's check is up (after rise/fall), else 0.",
            labels=["service", "real_server", "check"],
        )
        for name, h in sorted(real_servers.items()):
            service, real_server = split_real_server(name)
            rs_up.add_metric([service, real_server], 1 if h.state is ServiceState.UP else 0)
            for c in h.checks:
                rs_check.add_metric(
                    [service, real_server, c.name], 1 if c.state is CheckState.UP else 0
                )
        return [svc_ts, check_ts, maint, drain, penalty, suppressed, rs_up, rs_check]
