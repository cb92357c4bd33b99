"""Policy routing actuator: anycastd's ``ip rule``s and the routes of their tables.

Rule: the only writer of policy rules and of the routes in the services' tables (what
:mod:`anycastd.core.policyroute` plans). Ownership is the protocol mark (``OWNER_PROTO``,
0xac) on every rule and route it adds; ``observe`` returns only marked rules, and marked
routes in the tables it is asked about, so nothing foreign is ever planned for removal.

pyroute2's ``IPRoute`` is opened on first use, in the calling thread (the controller's
netlink thread: pyroute2's synchronous API cannot start inside a running event loop), in
network namespace ``netns`` (None: the current one). ``MemoryPolicyRoute`` is the in-memory
twin.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Collection, Sequence
from typing import Any, Protocol

from pyroute2 import IPRoute

from anycastd.actuators.netlink import error_for, map_netlink_errors
from anycastd.core.policyroute import (
    OWNER_PROTO,
    AddPolicy,
    PolicyAction,
    PolicyObserved,
    PolicyRule,
    TableRoute,
    canonical_dst,
)
from anycastd.errors import ActuatorError

__all__ = ["ACTUATOR", "MemoryPolicyRoute", "NetlinkPolicyRoute", "PolicyRouteActuator"]

ACTUATOR = "policyroute"
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}


class PolicyRouteActuator(Protocol):
    def observe(self, tables: Collection[int]) -> PolicyObserved: ...

    def apply(self, actions: Sequence[PolicyAction]) -> None: ...


class NetlinkPolicyRoute:
    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._ipr: IPRoute | None = None
        self.writes = 0

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def _open(self) -> IPRoute:
        if self._ipr is None:
            with map_netlink_errors(ACTUATOR, "open rtnetlink"):
                self._ipr = IPRoute(netns=self.netns) if self.netns else IPRoute()
        return self._ipr

    def observe(self, tables: Collection[int]) -> PolicyObserved:
        """Our rules; our routes in ``tables`` and in the tables our rules point at."""
        ipr = self._open()
        rules: set[PolicyRule] = set()
        routes: set[TableRoute] = set()
        with map_netlink_errors(ACTUATOR, "dump rules and routes"):
            for family, af in _AF.items():
                for msg in ipr.get_rules(family=af):
                    if msg.get_attr("FRA_PROTOCOL") != OWNER_PROTO:
                        continue
                    src = msg.get_attr("FRA_SRC")
                    rules.add(PolicyRule(
                        family,
                        int(msg.get_attr("FRA_PRIORITY") or 0),
                        int(msg.get_attr("FRA_TABLE") or msg["table"]),
                        canonical_dst(family, src, msg["src_len"]) if src else "",
                        int(msg.get_attr("FRA_FWMARK") or 0),
                    ))
            names: dict[int, str] = {}
            for table in sorted({*tables, *(r.table for r in rules)}):
                for family, af in _AF.items():
                    for msg in ipr.get_routes(family=af, table=table):
                        if msg["proto"] != OWNER_PROTO:
                            continue
                        routes.add(self._route(ipr, family, table, msg, names))
        return PolicyObserved(frozenset(rules), frozenset(routes))

    @staticmethod
    def _route(
        ipr: IPRoute, family: int, table: int, msg: Any, names: dict[int, str]
    ) -> TableRoute:
        oif = msg.get_attr("RTA_OIF")
        if oif is not None and oif not in names:
            links = ipr.get_links(oif)
            names[oif] = links[0].get_attr("IFLA_IFNAME") if links else ""
        return TableRoute(
            family, table, canonical_dst(family, msg.get_attr("RTA_DST"), msg["dst_len"]),
            msg.get_attr("RTA_GATEWAY") or "", names.get(oif, "") if oif is not None else "",
        )

    def apply(self, actions: Sequence[PolicyAction]) -> None:
        """In order; the first failure stops the batch (an add that exists, a remove that is
        gone: done)."""
        ipr = self._open()
        for action in actions:
            add = isinstance(action, AddPolicy)
            self.writes += 1
            try:
                with map_netlink_errors(ACTUATOR, str(action)):
                    if isinstance(action.item, PolicyRule):
                        ipr.rule("add" if add else "del", **_rule_args(action.item))
                    else:
                        ipr.route("add" if add else "del", **_route_args(ipr, action.item))
            except ActuatorError as exc:  # benign errnos pass
                code = _errno_of(exc)
                if (add and code == errno.EEXIST) or (
                    not add and code in (errno.ENOENT, errno.ESRCH)
                ):
                    continue
                raise


def _errno_of(exc: BaseException) -> int | None:
    cause = exc.__cause__
    code = getattr(cause, "code", None)
    return abs(code) if isinstance(code, int) else None


def _rule_args(rule: PolicyRule) -> dict[str, Any]:
    args: dict[str, Any] = {
        "family": _AF[rule.family], "priority": rule.priority, "table": rule.table,
        "protocol": OWNER_PROTO, "action": "FR_ACT_TO_TBL",
    }
    if rule.src:
        address, _, length = rule.src.partition("/")
        args["src"], args["src_len"] = address, int(length)
    if rule.fwmark:
        args["fwmark"] = rule.fwmark
    return args


def _route_args(ipr: IPRoute, route: TableRoute) -> dict[str, Any]:
    args: dict[str, Any] = {
        "family": _AF[route.family], "dst": route.dst, "table": route.table,
        "proto": OWNER_PROTO,
    }
    if route.via:
        args["gateway"] = route.via
    if route.dev:
        index = ipr.link_lookup(ifname=route.dev)
        if not index:
            raise error_for(ACTUATOR, errno.ENODEV, f"{route}: no interface {route.dev}")
        args["oif"] = index[0]
    return args


class MemoryPolicyRoute:
    """The in-memory twin: ``rules``/``routes`` are anycastd's, as the kernel would hold them."""

    def __init__(self) -> None:
        self.rules: set[PolicyRule] = set()
        self.routes: set[TableRoute] = set()
        self.writes = 0

    def observe(self, tables: Collection[int]) -> PolicyObserved:
        wanted = {*tables, *(r.table for r in self.rules)}
        return PolicyObserved(frozenset(self.rules),
                              frozenset(r for r in self.routes if r.table in wanted))

    def apply(self, actions: Sequence[PolicyAction]) -> None:
        for action in actions:
            self.writes += 1
            item = action.item
            target: set[Any] = self.rules if isinstance(item, PolicyRule) else self.routes
            if isinstance(action, AddPolicy):
                target.add(item)
            else:
                target.discard(item)
