"""Properties of the planner over random configs, health changes, failures and restarts.

Each example builds a config, then runs a random sequence of events; after every event the
executor (``Harness.tick``) plans and runs the steps, with an injected failure when the
sequence says so (a step applied partly, then reported failed). The safety invariant is
checked after every single step. At the end the failures stop; the world must converge to
the desired state, a converged pass must plan nothing, and a restart must not flap.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from anycastd.core.desired import RealServerKey, compute
from anycastd.core.health import ServiceState as S
from anycastd.model import Route
from tests.unit.test_plan import CHECK, Failure, Harness, config

STATES = [S.UP, S.DOWN, S.DRAINING, S.MAINTENANCE, S.DISABLED]
SHARED_PREFIX = "192.0.2.200/32"


@dataclass(frozen=True)
class ServiceShape:
    v6: bool
    shared: bool
    drain_time: int
    shutdown: str
    draining_announces: bool
    real_servers: int  # 0 = no IPVS
    min_healthy: int
    remove: bool
    start: S


@st.composite
def service_shapes(draw: st.DrawFn) -> ServiceShape:
    real_servers = draw(st.integers(0, 3))
    return ServiceShape(
        v6=draw(st.booleans()) and real_servers == 0,
        shared=draw(st.booleans()),
        drain_time=draw(st.sampled_from([0, 2, 5])),
        shutdown=draw(st.sampled_from(["withdraw", "drain-then-withdraw", "keep"])),
        draining_announces=draw(st.booleans()),
        real_servers=real_servers,
        min_healthy=draw(st.integers(0, real_servers)),
        remove=draw(st.booleans()),
        start=draw(st.sampled_from([S.UP, S.UP, *STATES])),  # mostly up: more to take down
    )


def render(shapes: list[ServiceShape]) -> str:
    parts: list[str] = []
    for i, sh in enumerate(shapes):
        prefixes = [f"192.0.2.{10 + i}/32"]
        if sh.v6:
            prefixes.append(f"2001:db8::{10 + i}/128")
        if sh.shared:
            prefixes.append(SHARED_PREFIX)
        quoted = ", ".join(f'"{p}"' for p in prefixes)
        parts.append(
            f"""
[services.s{i}]
prefixes = [{quoted}]
shared_prefixes = {"true" if sh.shared else "false"}
drain_time = "{sh.drain_time}s"
shutdown = "{sh.shutdown}"
{CHECK}
[services.s{i}.bgp.up]
med = {i}
[services.s{i}.bgp.draining]
announce = {"true" if sh.draining_announces else "false"}
med = {100 + i}
"""
        )
        if sh.real_servers:
            parts.append(
                f"""
[services.s{i}.ipvs]
port = {80 + i}
min_healthy = {sh.min_healthy}
on_backend_fail = "{"remove" if sh.remove else "weight0"}"
"""
            )
            for j in range(sh.real_servers):
                parts.append(
                    f'[[services.s{i}.ipvs.real_servers]]\naddress = "10.1.{i}.{j + 1}"\n'
                )
    return "".join(parts)


def rs_key(i: int, j: int) -> RealServerKey:
    return (f"s{i}", f"10.1.{i}.{j + 1}", 80 + i)


Event = tuple[str, int, int, int]
events = st.lists(
    st.tuples(
        st.sampled_from(
            ["state", "state", "rs", "rs", "time", "time", "conn", "fail", "restart", "tamper",
             "relay", "checks", "link"]
        ),
        st.integers(0, 4),
        st.integers(0, 4),
        st.integers(0, 15),
    ),
    min_size=1,
    max_size=30,
)


def settle(h: Harness, max_passes: int = 40) -> None:
    """Run passes (no failures), moving the clock to each wakeup, until nothing is left."""
    if not h.world.speaker.connected:
        relay(h, 1)  # the relay comes back in the end
    h.world.lo.link_up = True  # and so does the interface
    for _ in range(max_passes):
        result = h.tick()
        if result.steps:
            continue
        if result.next_wakeup is None:
            return
        h.now = max(h.now, result.next_wakeup)
    raise AssertionError("did not settle")


def run_events(h: Harness, shapes: list[ServiceShape], evs: list[Event]) -> None:
    """Apply each event, then run a pass. Health changes with an odd ``c`` pile up without
    a pass, so one pass sees several changes at once (e.g. one backend down, another up)."""
    n = len(shapes)
    for kind, a, b, c in evs:
        failure: Failure | None = None
        i = a % n
        if kind == "state":
            h.states[f"s{i}"] = STATES[b % len(STATES)]
        elif kind == "rs" and shapes[i].real_servers:
            key = rs_key(i, b % shapes[i].real_servers)
            h.rs_up[key] = not h.rs_up.get(key, False)
        elif kind == "time":
            h.now += c / 2
        elif kind == "conn" and shapes[i].real_servers:
            _, address, port = rs_key(i, b % shapes[i].real_servers)
            for vs, svc in h.world.ipvs.table.items():
                if (address, port) in svc.dests:
                    h.world.ipvs.set_connections(vs, address, port, active=c % 3)
        elif kind == "fail":
            failure = Failure(step=b, cut=c)
        elif kind == "restart":
            h.restart()
        elif kind == "tamper":
            tamper(h, i, b)
            failure = Failure(step=c % 3, cut=c // 4) if c % 4 == 2 else None
        elif kind == "relay":
            relay(h, b)
        elif kind == "checks":  # its own checks fail (or pass again) under any flag
            h.failing ^= {f"s{i}"}
        elif kind == "link":
            h.world.lo.link_up = not h.world.lo.link_up
        if kind in ("state", "rs", "tamper", "relay", "checks", "link") and c % 2:
            continue
        result = h.tick(failure)
        for _, phase in result.phases:
            event(f"phase {phase}")  # --hypothesis-show-statistics: what the runs reached


def relay(h: Harness, b: int) -> None:
    """The relay goes away (commands fail, ExaBGP keeps its routes), comes back (the
    speaker reads back and may only withdraw), or ExaBGP restarts (nothing announced, the
    new relay connects). What the speaker does on its own never makes the world less safe:
    it only withdraws (the scenario where it re-sent a remembered route is issue 8 #1)."""
    before = set(h.violations())
    match b % 3:
        case 0:
            h.world.speaker.disconnect()
        case 1:
            h.world.speaker.reconnect()
        case _:
            h.world.speaker.restart()
    assert set(h.violations()) <= before


def tamper(h: Harness, i: int, b: int) -> None:
    """Someone else breaks the world: removes an anycast address or flushes a virtual
    service. The next pass must make it safe before anything else (checked per step)."""
    if b % 2:
        ip = f"192.0.2.{10 + i}"
        h.world.lo.addresses = {a for a in h.world.lo.addresses if str(a.ip) != ip}
    else:
        for vs in [vs for vs in h.world.ipvs.table if vs.port == 80 + i]:
            del h.world.ipvs.table[vs]


COMMON = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def harness(shapes: list[ServiceShape]) -> Harness:
    h = Harness(config(render(shapes)))
    h.states = {f"s{i}": sh.start for i, sh in enumerate(shapes)}
    h.rs_up = {rs_key(i, j): True for i, sh in enumerate(shapes) for j in range(sh.real_servers)}
    return h


def announced_prefixes(routes: frozenset[Route]) -> set[str]:
    return {r.prefix for r in routes}


@COMMON
@given(shapes=st.lists(service_shapes(), min_size=1, max_size=3), evs=events)
def test_tampering_is_made_safe_before_anything_else(
    shapes: list[ServiceShape], evs: list[Event]
) -> None:
    h = harness(shapes)
    run_events(h, shapes, evs)  # the invariant is asserted after every step inside
    settle(h)
    assert h.violations() == []


@COMMON
@given(shapes=st.lists(service_shapes(), min_size=1, max_size=3), evs=events)
def test_invariant_holds_and_the_world_converges_to_desired(
    shapes: list[ServiceShape], evs: list[Event]
) -> None:
    h = harness(shapes)
    run_events(h, shapes, [e for e in evs if e[0] != "tamper"])  # invariant: every step
    settle(h)
    desired = compute(h.config, h.states, h.rs_up, failing=h.failing)
    assert h.world.announced == desired.routes
    wanted_ips = {
        str(p.address.ip) for p in desired.prefixes if p.route is not None and p.address
    }
    owned_ips = {str(a.ip) for a in h.world.lo.addresses if a.owned}
    assert owned_ips == wanted_ips
    assert h.violations() == []
    # steady state: nothing to do, no writes, no updates; a restart adopts without a flap
    writes, changes = h.world.writes, h.world.bgp_changes
    assert h.tick().steps == ()
    h.restart()
    assert h.tick().steps == ()
    assert (h.world.writes, h.world.bgp_changes) == (writes, changes)


@COMMON
@given(shapes=st.lists(service_shapes(), min_size=1, max_size=3), evs=events, fails=events)
def test_shutdown_completes_with_only_kept_prefixes_left(
    shapes: list[ServiceShape], evs: list[Event], fails: list[Event]
) -> None:
    h = harness(shapes)
    run_events(h, shapes, [e for e in evs if e[0] != "tamper"])
    before = compute(h.config, h.states, h.rs_up)
    h.shutdown = True
    # failures and restarts keep happening during the shutdown; health stops mattering
    run_events(h, shapes, [e for e in fails if e[0] in ("fail", "restart", "time")])
    settle(h)
    result = h.tick()
    assert result.shutdown_complete
    kept = {p.prefix for p in before.prefixes if p.shutdown == "keep"}
    assert announced_prefixes(h.world.announced) <= kept
    for p in before.prefixes:
        if p.shutdown != "keep" and p.address is not None:
            assert str(p.address.ip) not in {str(a.ip) for a in h.world.lo.addresses}
    for s in before.services:
        if s.shutdown != "keep" and not set(s.prefixes) & kept:
            for spec in s.live:
                assert spec.service not in h.world.ipvs.table


@COMMON
@given(shapes=st.lists(service_shapes(), min_size=1, max_size=3), evs=events)
def test_healthy_restart_mid_run_plans_no_bgp_change_when_the_world_is_desired(
    shapes: list[ServiceShape], evs: list[Event]
) -> None:
    h = harness(shapes)
    h.states = {f"s{i}": S.UP for i in range(len(shapes))}
    settle(h)
    run_events(h, shapes, [e for e in evs if e[0] in ("time", "conn")])
    changes = h.world.bgp_changes
    h.restart()
    result = h.tick()
    assert result.steps == ()
    assert h.world.bgp_changes == changes
