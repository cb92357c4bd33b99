"""observe.metrics: names are public API (snapshot), values follow what was fed in.

Update the snapshot after an intended change with ``ANYCASTD_UPDATE_SNAPSHOTS=1 pytest``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import prometheus_client
import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from anycastd.core.health import (
    CheckParams,
    CheckState,
    CheckTransition,
    DampingParams,
    Event,
    Flapped,
    Policy,
    ServiceHealth,
    ServiceParams,
    ServiceState,
    ServiceTransition,
)
from anycastd.engine.scheduler import CheckRun
from anycastd.errors import PermanentError, TransientError
from anycastd.observe.metrics import (
    CHECK_RESULTS,
    CONTENT_TYPE,
    AddressSample,
    HealthSource,
    Metrics,
    PassSamples,
    RealServerSample,
    RouteSample,
)
from tests.unit.snapshots import check_snapshot

Labels = frozenset[tuple[str, str]]


#: what a changed snapshot means, and how to regenerate it
METRICS_CHANGED = (
    "metric names/labels are public API. If intended, regenerate with "
    "ANYCASTD_UPDATE_SNAPSHOTS=1 and say so in the changelog."
)


def samples(m: Metrics) -> dict[tuple[str, Labels], float]:
    """Every sample of the exposition, parsed back like Prometheus would."""
    out: dict[tuple[str, Labels], float] = {}
    for fam in text_string_to_metric_families(m.render().decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return samples(m).get((name, frozenset(labels.items())))


def series_of(m: Metrics, **labels: str) -> list[tuple[str, Labels]]:
    want = set(labels.items())
    return [k for k in samples(m) if want <= k[1]]


def run(
    *,
    service: str = "dns",
    check: str = "udp",
    status: str = "ok",
    latency: float = 0.004,
    scheduled: float = 10.0,
    started: float = 10.002,
) -> CheckRun:
    return CheckRun(
        service, check, status == "ok", status, "", latency, scheduled, started, started + latency
    )


def health(name: str = "dns", checks: Iterable[str] = ("udp", "tcp")) -> ServiceHealth:
    params = ServiceParams(
        name,
        tuple(CheckParams(c, rise=1, fall=1) for c in checks),
        policy=Policy.parse("all"),
        damping=DampingParams(),
    )
    return ServiceHealth.initial(params, now=0.0)


def fed_everything(*, watch: bool = True) -> Metrics:
    """One of each kind of input, so every family has at least one series. ``watch=False``:
    no health source (its series follow the schedulers, not ``forget_service``)."""
    m = Metrics(CollectorRegistry(), version="1.2.3")
    m.sync({"dns": health()})
    m.observe_run(run())
    m.observe_events(
        [
            CheckTransition("dns", "udp", CheckState.DOWN, CheckState.UP, "ok", 1.0),
            ServiceTransition("dns", ServiceState.DOWN, ServiceState.UP, "all up", 1.0),
            Flapped("dns", 1000.0, None, 2.0),
        ]
    )
    m.set_announced("dns", ["192.0.2.53/32"])
    m.set_peer("r1", up=True)
    m.actuator_error("exabgp", transient=True)
    m.actuator_writes("loopback", 2)
    m.reload(success=True, ts=1_700_000_000.0)
    # the operations families (tests/unit/test_metrics_ops.py)
    damped = ServiceParams(
        "web", (CheckParams("http", rise=1, fall=1),), policy=Policy.parse("all"),
        damping=DampingParams(),
    )  # fmt: skip
    rs = ServiceParams("web/10.1.0.10:80", (CheckParams("tcp", rise=1, fall=1),))
    if watch:
        m.watch_health(HealthSource(
            lambda: {"dns": health(), "web": ServiceHealth.initial(damped, now=0.0)},
            lambda: {"web/10.1.0.10:80": ServiceHealth.initial(rs, now=0.0)},
            lambda: 5.0,
        ))  # fmt: skip
    m.observe_real_server_run(run(service="web/10.1.0.10:80", check="tcp"))
    m.set_pass(lambda: PassSamples(
        [RouteSample("192.0.2.53/32", "r1", "dns", "up")],
        [RealServerSample("web", "tcp:192.0.2.80:80", "10.1.0.10:80", 1, 3, 7)],
        [AddressSample("dns", "192.0.2.53/32", True)],
    ))  # fmt: skip
    m.reconcile_pass(0.002, converged=True)
    m.set_sysctls(["net.ipv4.ip_forward"], [])
    return m


# ---------------------------------------------------------------- public surface


def test_metric_names_and_labels_match_snapshot() -> None:
    m = fed_everything()
    lines = set()
    for fam in text_string_to_metric_families(m.render().decode()):
        labels = sorted({k for s in fam.samples for k in s.labels} - {"le"})
        exposed = fam.name + "_total" if fam.type == "counter" else fam.name
        lines.add(f"{exposed} {fam.type} {','.join(labels) or '-'}")
    check_snapshot("metrics.txt", "\n".join(sorted(lines)) + "\n", why=METRICS_CHANGED)


def test_every_family_is_anycastd_namespaced_and_in_base_units() -> None:
    m = fed_everything()
    for fam in text_string_to_metric_families(m.render().decode()):
        assert fam.name.startswith("anycastd_")
        if fam.type == "histogram":
            assert fam.name.endswith("_seconds")
        assert "_ms" not in fam.name


def test_uses_only_the_registry_passed_in() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg)
    m.set_peer("r1", up=True)
    assert m.registry is reg
    assert reg.get_sample_value("anycastd_bgp_peer_up", {"peer": "r1"}) == 1.0
    assert REGISTRY.get_sample_value("anycastd_bgp_peer_up", {"peer": "r1"}) is None


def test_two_instances_do_not_collide() -> None:
    # a second daemon (or test) in the same process must not hit "Duplicated timeseries"
    a, b = Metrics(), Metrics()
    a.set_peer("r1", up=True)
    assert value(b, "anycastd_bgp_peer_up", peer="r1") is None


def test_process_collectors_are_optional() -> None:
    with_process = Metrics(process=True).render().decode()
    assert "process_" in with_process or "python_info" in with_process
    assert "python_info" not in Metrics().render().decode()


def test_build_info_carries_the_version() -> None:
    m = Metrics(version="9.9.9")
    assert value(m, "anycastd_build_info", version="9.9.9") == 1.0


def test_content_type_is_prometheus_text() -> None:
    assert CONTENT_TYPE == prometheus_client.CONTENT_TYPE_LATEST
    assert CONTENT_TYPE.startswith("text/plain; version=")


def test_created_samples_are_not_exported() -> None:
    text = fed_everything().render().decode()
    assert "anycastd_check_results_total{" in text
    assert "_created" not in text


# ---------------------------------------------------------------- service state


def test_service_state_exports_all_five_states_one_hot() -> None:
    m = Metrics()
    m.set_service_states({"dns": ServiceState.DRAINING})
    got = {s.value: value(m, "anycastd_service_state", service="dns", state=s.value)
           for s in ServiceState}  # fmt: skip
    assert got == {"up": 0, "down": 0, "draining": 1, "maintenance": 0, "disabled": 0}


def test_service_transition_moves_state_and_counts_by_target() -> None:
    m = Metrics()
    m.set_service_states({"dns": ServiceState.DOWN})
    events: list[Event] = [
        ServiceTransition("dns", ServiceState.DOWN, ServiceState.UP, "ok", 1.0),
        ServiceTransition("dns", ServiceState.UP, ServiceState.DOWN, "fail", 2.0),
        ServiceTransition("dns", ServiceState.DOWN, ServiceState.UP, "ok", 3.0),
    ]
    m.observe_events(events)
    assert value(m, "anycastd_service_state", service="dns", state="up") == 1
    assert value(m, "anycastd_service_state", service="dns", state="down") == 0
    assert value(m, "anycastd_transitions_total", service="dns", to="up") == 2
    assert value(m, "anycastd_transitions_total", service="dns", to="down") == 1
    # born at zero so increase() sees the first transition into a state
    assert value(m, "anycastd_transitions_total", service="dns", to="maintenance") == 0


def test_check_transition_sets_check_up_and_flaps_are_counted() -> None:
    m = Metrics()
    m.observe_events(
        [
            CheckTransition("dns", "udp", CheckState.DOWN, CheckState.UP, "ok", 1.0),
            CheckTransition("dns", "tcp", CheckState.UP, CheckState.DOWN, "refused", 1.0),
            Flapped("dns", 1000.0, None, 1.0),
            Flapped("dns", 2000.0, 60.0, 2.0),
        ]
    )
    assert value(m, "anycastd_check_up", service="dns", check="udp") == 1
    assert value(m, "anycastd_check_up", service="dns", check="tcp") == 0
    assert value(m, "anycastd_flaps_total", service="dns") == 2


def test_sync_sets_states_and_checks_from_health_values() -> None:
    m = Metrics()
    h = health(checks=("udp", "tcp"))
    h = h.feed("udp", True, "", 1.0).health  # rise=1: udp up, tcp still down
    m.sync({"dns": h})
    assert value(m, "anycastd_service_state", service="dns", state="down") == 1
    assert value(m, "anycastd_check_up", service="dns", check="udp") == 1
    assert value(m, "anycastd_check_up", service="dns", check="tcp") == 0


# ---------------------------------------------------------------- check runs


def test_observe_run_counts_results_and_records_duration() -> None:
    m = Metrics()
    m.observe_run(run(status="ok", latency=0.004))
    m.observe_run(run(status="ok", latency=0.004))
    m.observe_run(run(status="timeout", latency=1.0))
    lab = {"service": "dns", "check": "udp"}
    assert value(m, "anycastd_check_results_total", **lab, result="ok") == 2
    assert value(m, "anycastd_check_results_total", **lab, result="timeout") == 1
    assert value(m, "anycastd_check_results_total", **lab, result="fail") == 0
    assert value(m, "anycastd_check_duration_seconds_count", **lab) == 3
    assert value(m, "anycastd_check_duration_seconds_sum", **lab) == pytest.approx(1.008)
    assert value(m, "anycastd_check_duration_seconds_bucket", **lab, le="0.005") == 2
    assert value(m, "anycastd_check_duration_seconds_bucket", **lab, le="0.001") == 0


def test_all_result_values_exist_after_the_first_run() -> None:
    m = Metrics()
    m.observe_run(run(status="ok"))
    for result in CHECK_RESULTS:
        assert value(m, "anycastd_check_results_total", service="dns", check="udp",
                     result=result) is not None  # fmt: skip


def test_unknown_status_is_counted_as_error_to_bound_cardinality() -> None:
    m = Metrics()
    m.observe_run(run(status="weird"))
    assert value(m, "anycastd_check_results_total", service="dns", check="udp",
                 result="error") == 1  # fmt: skip
    assert series_of(m, result="weird") == []


def test_duration_buckets_span_1ms_to_10s() -> None:
    m = Metrics()
    m.observe_run(run())
    les = {dict(k[1])["le"] for k in series_of(m) if k[0].endswith("duration_seconds_bucket")}
    assert {"0.001", "10.0", "+Inf"} <= les


def test_lateness_histogram_has_no_labels() -> None:
    m = Metrics()
    m.observe_run(run(scheduled=10.0, started=10.002))
    m.observe_run(run(scheduled=20.0, started=20.3))
    assert value(m, "anycastd_check_lateness_seconds_count") == 2
    assert value(m, "anycastd_check_lateness_seconds_sum") == pytest.approx(0.302)
    assert value(m, "anycastd_check_lateness_seconds_bucket", le="0.0025") == 1


# ---------------------------------------------------------------- prefixes, peers, actuators


def test_set_announced_marks_withdrawn_prefixes_zero() -> None:
    m = Metrics()
    m.set_announced("dns", ["192.0.2.53/32", "2001:db8::53/128"])
    m.set_announced("dns", ["2001:db8::53/128"])
    assert value(m, "anycastd_prefix_announced", service="dns", prefix="192.0.2.53/32") == 0
    assert value(m, "anycastd_prefix_announced", service="dns", prefix="2001:db8::53/128") == 1


def test_set_announced_with_configured_exports_exactly_the_configured_prefixes() -> None:
    m = Metrics()
    m.set_announced("dns", ["192.0.2.1/32"])
    m.set_announced("dns", [], configured=["192.0.2.53/32"])
    assert value(m, "anycastd_prefix_announced", service="dns", prefix="192.0.2.53/32") == 0
    assert value(m, "anycastd_prefix_announced", service="dns", prefix="192.0.2.1/32") is None


def test_peer_up_and_forget_peer() -> None:
    m = Metrics()
    m.set_peer("r1", up=True)
    m.set_peer("r2", up=True)
    m.set_peer("r2", up=False)
    assert value(m, "anycastd_bgp_peer_up", peer="r1") == 1
    assert value(m, "anycastd_bgp_peer_up", peer="r2") == 0
    m.forget_peer("r2")
    m.forget_peer("never-seen")
    assert value(m, "anycastd_bgp_peer_up", peer="r2") is None


def test_actuator_errors_by_kind_and_writes() -> None:
    m = Metrics()
    m.actuator_error("ipvs", transient=True)
    m.actuator_failed(PermanentError("exabgp", "rejected"))
    m.actuator_failed(TransientError("exabgp", "not connected"))
    m.actuator_writes("loopback", 3)
    m.actuator_writes("loopback")
    assert value(m, "anycastd_actuator_errors_total", actuator="ipvs", kind="transient") == 1
    assert value(m, "anycastd_actuator_errors_total", actuator="exabgp", kind="permanent") == 1
    assert value(m, "anycastd_actuator_errors_total", actuator="exabgp", kind="transient") == 1
    assert value(m, "anycastd_actuator_writes_total", actuator="loopback") == 4
    with pytest.raises(ValueError, match="n must be >= 0"):
        m.actuator_writes("loopback", -1)


def test_reload_records_success_and_time_of_last_attempt() -> None:
    m = Metrics()
    m.reload(success=True, ts=100.0)
    m.reload(success=False, ts=200.0)
    assert value(m, "anycastd_config_last_reload_success") == 0
    assert value(m, "anycastd_config_last_reload_timestamp_seconds") == 200.0


# ---------------------------------------------------------------- removal


def test_forget_service_removes_every_series_of_that_service_only() -> None:
    m = fed_everything(watch=False)
    m.sync({"dns": health(), "web": health("web", ["http"])})
    m.observe_run(run(service="web", check="http"))
    m.set_announced("web", ["192.0.2.80/32"])
    assert series_of(m, service="dns")
    m.forget_service("dns")
    assert series_of(m, service="dns") == []
    assert value(m, "anycastd_service_state", service="web", state="down") == 1
    assert value(m, "anycastd_check_results_total", service="web", check="http",
                 result="ok") == 1  # fmt: skip
    # the service can come back (a later reload) and starts from zero
    m.observe_run(run())
    assert value(m, "anycastd_check_results_total", service="dns", check="udp",
                 result="ok") == 1  # fmt: skip


def test_forget_unknown_service_is_a_no_op() -> None:
    m = fed_everything(watch=False)
    before = samples(m)
    m.forget_service("nope")
    after = samples(m)
    assert before.keys() == after.keys()


def test_sync_forgets_services_and_checks_no_longer_configured() -> None:
    m = Metrics()
    m.sync({"dns": health(checks=("udp", "tcp")), "web": health("web", ["http"])})
    m.observe_run(run(check="tcp"))
    m.set_announced("web", ["192.0.2.80/32"])
    m.sync({"dns": health(checks=("udp",))})  # reload: web removed, dns lost "tcp"
    assert series_of(m, service="web") == []
    assert series_of(m, check="tcp") == []
    assert value(m, "anycastd_check_up", service="dns", check="udp") == 0


@dataclass(frozen=True)
class _Run:
    """A CheckRun-shaped value from elsewhere (benchmarks, fakes): the Protocol suffices."""

    service: str = "dns"
    check: str = "udp"
    status: str = "fail"
    latency: float = 0.5
    lateness: float = -0.001  # a clock that ran backwards must not break the histogram


def test_observe_run_accepts_any_checkrun_shaped_value() -> None:
    m = Metrics()
    m.observe_run(_Run())
    assert value(m, "anycastd_check_results_total", service="dns", check="udp",
                 result="fail") == 1  # fmt: skip
    assert value(m, "anycastd_check_lateness_seconds_bucket", le="0.0005") == 1


def test_forget_service_drops_run_series_seen_without_a_sync() -> None:
    # Real-server checks only ever arrive through observe_run (no sync of their "service").
    m = Metrics(CollectorRegistry())
    m.observe_run(run(service="web/10.1.0.10:80", check="tcp-0"))
    assert 'service="web/10.1.0.10:80"' in m.render().decode()
    m.forget_service("web/10.1.0.10:80")
    assert "web/10.1.0.10:80" not in m.render().decode()


def test_without_bgp_no_prefix_reads_announced() -> None:
    # no [bgp] section: whatever the controller remembers having "sent", nothing is announced
    m = Metrics()
    m.set_bgp_configured(False)
    m.set_announced("dns", ["192.0.2.53/32"], configured=["192.0.2.53/32"])
    assert value(m, "anycastd_prefix_announced", service="dns", prefix="192.0.2.53/32") == 0
