"""observe.metrics, the families an operator alerts on: each fed like the engine feeds it,
then read back from the exposition like Prometheus reads it; and the daemon end to end on
fakes (tests/unit/metrics_daemon.py) exporting what it really announces."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from anycastd.core.health import (
    CheckParams,
    DampingParams,
    Policy,
    ServiceHealth,
    ServiceParams,
)
from anycastd.engine.scheduler import CheckRun
from anycastd.observe.metrics import (
    AddressSample,
    HealthSource,
    Metrics,
    PassSamples,
    RealServerSample,
    RouteSample,
)
from tests.unit.metrics_daemon import DNS, WEB, realistic_run

Labels = frozenset[tuple[str, str]]


def parse(text: str) -> dict[tuple[str, Labels], float]:
    out: dict[tuple[str, Labels], float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return parse(m.render().decode()).get((name, frozenset(labels.items())))


def names_with(m: Metrics, **labels: str) -> set[str]:
    want = set(labels.items())
    return {n for n, lab in parse(m.render().decode()) if want <= lab}


def run(service: str, check: str, status: str = "ok") -> CheckRun:
    return CheckRun(service, check, status == "ok", status, "", 0.003, 1.0, 1.001, 1.004)


class Wall:
    """A settable unix clock."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def damped(name: str = "web") -> ServiceHealth:
    params = ServiceParams(
        name, (CheckParams("http", rise=1, fall=1),), policy=Policy.parse("all"),
        damping=DampingParams(penalty=1000, half_life=60, suppress=2000, reuse=750),
    )  # fmt: skip
    return ServiceHealth.initial(params, now=100.0)


# ---------------------------------------------------------------- process, registry


def test_the_daemons_registry_has_process_and_python_collectors() -> None:
    text = Metrics(CollectorRegistry(), process=True).render().decode()
    for name in ("process_start_time_seconds", "process_resident_memory_bytes",
                 "process_open_fds", "python_info", "python_gc_collections_total"):
        assert f"\n{name}" in text, name


# ---------------------------------------------------------------- real servers


def test_real_server_runs_have_their_own_families_and_label() -> None:
    m = Metrics()
    m.observe_real_server_run(run("web/10.1.0.10:80", "tcp", "fail"))
    assert value(m, "anycastd_real_server_check_results_total", service="web",
                 real_server="10.1.0.10:80", check="tcp", result="fail") == 1  # fmt: skip
    # never overloading "service" with the real server, never counted as a service check
    assert names_with(m, service="web/10.1.0.10:80") == set()
    assert not any(n.startswith("anycastd_check_results") for n in names_with(m, service="web"))
    # the scheduler lateness counts every run, services' and real servers' alike
    assert value(m, "anycastd_check_lateness_seconds_count") == 1


def test_forgetting_a_real_server_keeps_its_siblings() -> None:
    m = Metrics()
    m.observe_real_server_run(run("web/10.1.0.10:80", "tcp"))
    m.observe_real_server_run(run("web/10.1.0.11:80", "tcp"))
    m.forget_service("web/10.1.0.10:80")
    assert names_with(m, real_server="10.1.0.10:80") == set()
    assert names_with(m, real_server="10.1.0.11:80")


# ---------------------------------------------------------------- health at scrape time


def test_flags_damping_and_transition_times_are_read_when_scraped() -> None:
    now = [100.0]
    web = damped()
    web = web.feed("http", True, "", 110.0).health
    web = web.feed("http", False, "refused", 120.0).health  # a flap: penalty 1000
    web = web.set_draining(True, 125.0, "operator drain").health
    services = {"web": web}
    m = Metrics(wall=Wall(1_000_000.0))
    m.watch_health(HealthSource(lambda: services, dict, lambda: now[0]))  # offset 999,900
    now[0] = 120.0
    assert value(m, "anycastd_damping_penalty", service="web") == 1000.0
    assert value(m, "anycastd_damping_suppressed", service="web") == 0
    assert value(m, "anycastd_service_draining", service="web") == 1
    assert value(m, "anycastd_service_maintenance", service="web") == 0
    assert value(m, "anycastd_check_last_transition_timestamp_seconds", service="web",
                 check="http") == 1_000_020.0  # fmt: skip
    assert value(m, "anycastd_service_last_transition_timestamp_seconds",
                 service="web") == 999_900.0 + web.since  # fmt: skip
    now[0] = 180.0  # one half-life later, without any event: the penalty has decayed
    assert value(m, "anycastd_damping_penalty", service="web") == 500.0


def test_a_service_without_damping_has_no_damping_series() -> None:
    plain = ServiceHealth.initial(ServiceParams("dns", (CheckParams("udp"),)), now=0.0)
    m = Metrics()
    m.watch_health(HealthSource(lambda: {"dns": plain}, dict, lambda: 0.0))
    assert value(m, "anycastd_service_maintenance", service="dns") == 0
    assert value(m, "anycastd_damping_penalty", service="dns") is None


def test_real_server_health_is_exported_per_real_server() -> None:
    rs = ServiceHealth.initial(
        ServiceParams("web/[2001:db8::10]:80", (CheckParams("tcp", rise=1, fall=1),)), 0.0
    ).feed("tcp", True, "", 1.0).health
    m = Metrics()
    m.watch_health(HealthSource(dict, lambda: {rs.name: rs}, lambda: 2.0))
    assert value(m, "anycastd_real_server_up", service="web",
                 real_server="[2001:db8::10]:80") == 1  # fmt: skip
    assert value(m, "anycastd_real_server_check_up", service="web",
                 real_server="[2001:db8::10]:80", check="tcp") == 1  # fmt: skip


# ---------------------------------------------------------------- BGP sessions


def test_a_session_going_down_is_a_flap_and_moves_the_change_time() -> None:
    wall = Wall(1000.0)
    m = Metrics(wall=wall)
    m.set_peer("r1", up=False)  # first report: not a flap
    assert value(m, "anycastd_bgp_session_flaps_total", peer="r1") == 0
    wall.t = 1010.0
    m.set_peer("r1", up=True)
    wall.t = 1020.0
    m.set_peer("r1", up=True)  # no change: the time stays
    assert value(m, "anycastd_bgp_peer_last_change_timestamp_seconds", peer="r1") == 1010.0
    m.set_peer("r1", up=False)
    m.set_peer("r1", up=True)
    m.set_peer("r1", up=False)
    assert value(m, "anycastd_bgp_session_flaps_total", peer="r1") == 2
    assert value(m, "anycastd_bgp_peer_last_change_timestamp_seconds", peer="r1") == 1020.0
    m.forget_peer("r1")
    assert names_with(m, peer="r1") == set()


def test_sync_peers_adds_new_peers_forgets_removed_ones_and_keeps_known_ones() -> None:
    m = Metrics()
    m.sync_peers({"r1": False, "r2": False})
    m.set_peer("r1", up=True)
    m.set_peer("r1", up=False)  # one flap
    m.sync_peers({"r1": False, "r3": True})  # a reload: r2 removed, r3 added
    assert names_with(m, peer="r2") == set()
    assert value(m, "anycastd_bgp_peer_up", peer="r3") == 1
    assert value(m, "anycastd_bgp_session_flaps_total", peer="r1") == 1


# ---------------------------------------------------------------- passes, reloads, sysctls


def test_reconcile_passes_are_timed_and_only_converged_ones_stamp_success() -> None:
    wall = Wall(500.0)
    m = Metrics(wall=wall)
    m.reconcile_pass(0.003, converged=True)
    wall.t = 600.0
    m.reconcile_pass(2.0, converged=False)  # a failed pass
    assert value(m, "anycastd_reconcile_duration_seconds_count") == 2
    assert value(m, "anycastd_reconcile_duration_seconds_bucket", le="0.005") == 1
    assert value(m, "anycastd_reconcile_last_success_timestamp_seconds") == 500.0


def test_last_successful_reload_is_kept_apart_from_the_last_attempt() -> None:
    m = Metrics()
    m.reload(success=True, ts=100.0)
    m.reload(success=False, ts=200.0)
    assert value(m, "anycastd_config_last_reload_timestamp_seconds") == 200.0
    assert value(m, "anycastd_config_last_reload_success_timestamp_seconds") == 100.0
    assert value(m, "anycastd_config_last_reload_success") == 0


def test_sysctl_drift_is_one_per_drifting_key() -> None:
    m = Metrics()
    m.set_sysctls(["net.ipv4.ip_forward", "net.ipv4.conf.all.arp_ignore"],
                  ["net.ipv4.conf.all.arp_ignore"])  # fmt: skip
    assert value(m, "anycastd_sysctl_drift", key="net.ipv4.ip_forward") == 0
    assert value(m, "anycastd_sysctl_drift", key="net.ipv4.conf.all.arp_ignore") == 1


def test_each_pass_replaces_routes_and_real_servers_as_a_whole() -> None:
    m = Metrics()
    m.set_pass(lambda: PassSamples(
        [RouteSample("192.0.2.1/32", "r1", "a", "up"),
         RouteSample("192.0.2.1/32", "r2", "a", "up")],
        [RealServerSample("a", "tcp:192.0.2.1:80", "10.0.0.1:80", 1, 0, 0)],
    ))  # fmt: skip
    assert names_with(m, peer="r2")
    m.set_pass(lambda: PassSamples([RouteSample("192.0.2.1/32", "r1", "a", "draining")]))
    assert names_with(m, peer="r2") == set()
    assert value(m, "anycastd_route_announced", prefix="192.0.2.1/32", peer="r1",
                 service="a", attributes_state="draining") == 1  # fmt: skip
    assert names_with(m, real_server="10.0.0.1:80") == set()


def test_a_pass_is_computed_only_when_scraped_and_once() -> None:
    calls: list[int] = []

    def compute() -> PassSamples:
        calls.append(1)
        return PassSamples(addresses=[AddressSample("a", "192.0.2.1/32", True)])

    m = Metrics()
    for _ in range(100):  # passes without a scrape cost nothing but a reference
        m.set_pass(compute)
    assert calls == []
    assert value(m, "anycastd_prefix_address_present", service="a", prefix="192.0.2.1/32") == 1
    m.render()
    assert calls == [1]


def test_forget_service_hides_its_pass_samples_until_the_next_pass() -> None:
    m = Metrics()
    m.set_pass(lambda: PassSamples(addresses=[AddressSample("a", "192.0.2.1/32", True),
                                              AddressSample("b", "192.0.2.2/32", False)]))
    m.forget_service("a")
    assert names_with(m, service="a") == set()
    assert value(m, "anycastd_prefix_address_present", service="b", prefix="192.0.2.2/32") == 0


# ---------------------------------------------------------------- the daemon end to end


async def test_the_daemon_exports_what_it_really_announces_and_serves(tmp_path: Path) -> None:
    got = parse((await realistic_run(tmp_path)).text)

    def v(name: str, **labels: str) -> float | None:
        return got.get((name, frozenset(labels.items())))

    # per prefix and peer: announced, with the attributes of the state they belong to
    assert v("anycastd_route_announced", prefix=WEB, peer="127.0.0.2", service="web",
             attributes_state="up") == 1  # fmt: skip
    assert v("anycastd_route_announced", prefix=DNS, peer="127.0.0.2", service="dns",
             attributes_state="draining") == 1  # fmt: skip
    assert v("anycastd_service_draining", service="dns") == 1
    assert v("anycastd_service_state", service="dns", state="draining") == 1
    assert v("anycastd_prefix_address_present", service="web", prefix=WEB) == 1
    # IPVS: the kernel's weights and connection counts per real server
    rs1 = {"service": "web", "virtual_service": "tcp:192.0.2.10:80", "real_server": "10.1.0.1:80"}
    assert v("anycastd_ipvs_real_server_weight", **rs1) == 5
    assert v("anycastd_ipvs_real_server_active_connections", **rs1) == 3
    assert v("anycastd_ipvs_real_server_inactive_connections", **rs1) == 7
    # the checked real server, under its own label
    assert v("anycastd_real_server_up", service="web", real_server="10.1.0.2:80") == 1
    assert (v("anycastd_real_server_check_results_total", service="web",
              real_server="10.1.0.2:80", check="file-0", result="ok") or 0) >= 1  # fmt: skip
    # the session flap, passes, damping of the damped service
    assert v("anycastd_bgp_session_flaps_total", peer="127.0.0.2") == 1
    assert v("anycastd_bgp_peer_up", peer="127.0.0.2") == 1
    assert (v("anycastd_reconcile_duration_seconds_count") or 0) >= 2
    assert (v("anycastd_reconcile_last_success_timestamp_seconds") or 0) > 1.7e9
    assert v("anycastd_damping_suppressed", service="web") == 0
    assert v("anycastd_sysctl_drift", key="net.ipv4.ip_forward") is not None


def test_actuator_counters_are_born_at_zero_so_the_first_error_is_seen() -> None:
    m = Metrics()
    assert value(m, "anycastd_actuator_errors_total", actuator="ipvs", kind="permanent") == 0
    assert value(m, "anycastd_actuator_writes_total", actuator="loopback") == 0
