"""Policy routing per service (core.policyroute): which rules and routes, the diff, and where
the planner puts them relative to the address and the announcement."""

from __future__ import annotations

import pytest

from anycastd.actuators import frr
from anycastd.actuators.memory import MemoryLoopback, MemoryOspf
from anycastd.actuators.policyroute import MemoryPolicyRoute
from anycastd.config import Config, ConfigError, loads
from anycastd.core.desired import compute
from anycastd.core.health import ServiceState
from anycastd.core.plan import (
    BgpStep,
    ControllerState,
    LoopbackStep,
    Observed,
    OspfStep,
    PolicyStep,
    Step,
    plan,
)
from anycastd.core.policyroute import (
    AddPolicy,
    PolicyObserved,
    PolicyRule,
    RemovePolicy,
    TableRoute,
    diff,
    from_config,
)
from anycastd.model import Route
from tests.unit.configs import BGP_HEAD

CHECK = 'checks = [{type = "tcp", host = "127.0.0.1", port = 80}]'
POLICY = """
[services.web.policy_routing]
table = 100
fwmark = 16
routes = [{ to = "0.0.0.0/0", via = "10.0.0.254" }, { to = "10.9.0.0/16", dev = "eth1" }]
"""


def web(policy: str = POLICY, head: str = BGP_HEAD, drain: str = '"0s"') -> Config:
    return loads(f"""{head}
[services.web]
prefixes = ["192.0.2.10/32", "192.0.2.11/32"]
drain_time = {drain}
{CHECK}
{policy}""")


RULES = (
    PolicyRule(4, 1000, 100, "", 16),
    PolicyRule(4, 1000, 100, "192.0.2.10/32"),
    PolicyRule(4, 1000, 100, "192.0.2.11/32"),
)
ROUTES = (
    TableRoute(4, 100, "0.0.0.0/0", "10.0.0.254"),
    TableRoute(4, 100, "10.9.0.0/16", "", "eth1"),
)


def test_a_rule_per_prefix_and_per_family_for_the_fwmark_and_the_table_routes() -> None:
    (policy,) = from_config(web())
    assert policy.rules == RULES
    assert policy.routes == ROUTES


def test_routes_go_in_before_rules_and_rules_come_out_before_routes() -> None:
    (policy,) = from_config(web())
    up = diff([policy], {"web"}, PolicyObserved())
    assert up.adds == tuple(AddPolicy(x) for x in (*ROUTES, *RULES))
    assert up.removes == ()
    down = diff([policy], set(), PolicyObserved(frozenset(RULES), frozenset(ROUTES)))
    assert down.adds == ()
    assert down.removes == tuple(RemovePolicy(x) for x in (*RULES, *ROUTES))


def test_a_route_matches_the_device_the_kernel_resolved_unless_the_config_names_one() -> None:
    (policy,) = from_config(web())
    seen = frozenset({
        TableRoute(4, 100, "0.0.0.0/0", "10.0.0.254", "eth0"),  # the kernel adds the device
        TableRoute(4, 100, "10.9.0.0/16", "", "eth2"),  # not the configured eth1
    })
    got = diff([policy], {"web"}, PolicyObserved(frozenset(RULES), seen))
    assert got.adds == (AddPolicy(ROUTES[1]),)
    assert got.removes == (RemovePolicy(TableRoute(4, 100, "10.9.0.0/16", "", "eth2")),)


# --- in the plan ----------------------------------------------------------------------------


class World:
    """The kernel and the speaker in memory; ``run`` executes a pass like the controller."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.lo = MemoryLoopback()
        self.policy = MemoryPolicyRoute()
        self.routes: frozenset[Route] = frozenset()
        self.ospf = MemoryOspf(frr.OspfSettings(metrics=(10, 100, 65535)))
        self.state = ControllerState()

    def run(self, state: ServiceState, *, now: float = 0.0,
            shutdown: bool = False) -> list[tuple[str, str]]:
        """One pass; the journal of (step, what) in execution order."""
        desired = compute(self.cfg, {"web": state})
        observed = Observed(loopback=self.lo.observe(), announced=self.routes,
                            policy=self.policy.observe(()), ospf=self.ospf.observe())
        result = plan(self.state, desired, observed, now, shutdown=shutdown)
        self.state = result.state
        journal: list[tuple[str, str]] = []
        for step in result.steps:
            journal += self._execute(step)
        return journal

    def _execute(self, step: Step) -> list[tuple[str, str]]:
        if isinstance(step, PolicyStep):
            self.policy.apply(step.actions)
            return [("policy", str(a)) for a in step.actions]
        if isinstance(step, LoopbackStep):
            self.lo.apply(step.actions)
            return [("address", str(a)) for a in step.actions]
        if isinstance(step, OspfStep):
            before = {r.prefix: r.metric for r in self.ospf.observe()}
            self.ospf.apply(step.routes)
            after = {r.prefix: r.metric for r in step.routes}
            return [("ospf", f"publish {p} {m}") for p, m in sorted(after.items())
                    if before.get(p) != m] + [
                ("ospf", f"withdraw {p}") for p in sorted(before.keys() - after.keys())]
        assert isinstance(step, BgpStep)
        before = {r.prefix for r in self.routes}
        self.routes = step.routes
        after = {r.prefix for r in step.routes}
        return [("bgp", f"announce {p}") for p in sorted(after - before)] + [
            ("bgp", f"withdraw {p}") for p in sorted(before - after)]


def kinds(journal: list[tuple[str, str]]) -> list[str]:
    out: list[str] = []
    for kind, what in journal:
        label = f"{kind} {what.split()[0]}"
        if not out or out[-1] != label:
            out.append(label)
    return out


def test_rules_and_routes_are_in_before_the_announce_and_out_after_the_withdraw() -> None:
    w = World(web())
    assert kinds(w.run(ServiceState.UP)) == [
        "address add", "policy add", "bgp announce"]
    assert w.policy.rules == set(RULES)
    assert w.policy.routes == set(ROUTES)
    assert w.run(ServiceState.UP) == []  # converged: no churn
    assert kinds(w.run(ServiceState.DOWN)) == [
        "bgp withdraw", "address remove", "policy remove"]
    assert w.policy.rules == set()
    assert w.policy.routes == set()


def test_a_draining_service_keeps_its_rules_until_the_withdraw() -> None:
    w = World(web(drain='"10s"'))
    w.run(ServiceState.UP)
    for now in (1.0, 2.0, 11.9):  # planned: demote, the drain starts once it is seen
        journal = w.run(ServiceState.MAINTENANCE, now=now)
        assert all(kind == "bgp" for kind, _ in journal), journal
        assert w.policy.rules == set(RULES)
    assert kinds(w.run(ServiceState.MAINTENANCE, now=12.0)) == [
        "bgp withdraw", "address remove", "policy remove"]


OSPF = """
[services.web.ospf]
metric = { up = 10, draining = 100, maintenance = 65535 }
"""


def test_an_ospf_drain_keeps_the_rules_while_the_draining_metric_is_published() -> None:
    # OSPF only (no [bgp]): the drain publishes the draining metric for drain_time; the
    # service's traffic still arrives, so its source-routing rules must stay until the
    # route is withdrawn (found by review: only BGP drains kept them)
    w = World(web(policy=POLICY + OSPF, head="", drain='"10s"'))
    assert kinds(w.run(ServiceState.UP)) == ["address add", "policy add", "ospf publish"]
    for now in (1.0, 2.0, 11.9):
        w.run(ServiceState.MAINTENANCE, now=now)
        assert w.ospf.observe(), now
        assert w.policy.rules == set(RULES), now
    assert kinds(w.run(ServiceState.MAINTENANCE, now=12.0)) == [
        "ospf withdraw", "address remove", "policy remove"]
    assert w.policy.rules == set()


def test_rules_and_routes_lost_behind_our_back_come_back() -> None:
    w = World(web())
    w.run(ServiceState.UP)
    w.policy.rules.discard(RULES[0])  # `ip rule del ...` by hand
    assert w.run(ServiceState.UP) == [("policy", f"add {RULES[0]}")]


def test_a_service_without_policy_routing_plans_none() -> None:
    w = World(web(policy=""))
    assert kinds(w.run(ServiceState.UP)) == ["address add", "bgp announce"]


# --- config rules --------------------------------------------------------------------------------


def config_issues(policy: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        web(policy)
    return {i.key: i.message for i in info.value.issues}


def test_policy_routing_rules_name_their_keys() -> None:
    found = config_issues("""
[services.web.policy_routing]
table = 254
from_prefixes = false
routes = [{ to = "0.0.0.0/0" }, { to = "::/0", via = "10.0.0.1" }]
""")
    assert set(found) == {
        "services.web.policy_routing.table",
        "services.web.policy_routing.from_prefixes",
        "services.web.policy_routing.routes[0]",
        "services.web.policy_routing.routes[1].via",
        "services.web.policy_routing.routes[1].to",
    }
    assert "main table" in found["services.web.policy_routing.table"]
