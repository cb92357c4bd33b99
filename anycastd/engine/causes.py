"""Why an action happened: the cause every action event carries (``cause=``).

Rule: written by the daemon (health transitions, real-server transitions, reloads, the stop),
read by the controller when it logs an action; never decides anything. One service's story
is then one filter away: ``service=web`` shows its transitions and every address, IPVS and
BGP action taken for it, each with the transition (or drift) that led to it.

A cause stays *pending* from the event that recorded it until a controller pass finds
nothing to do and nothing scheduled (no drain running): every action in between, a drain's
withdraw 30 s later included, is that cause's doing. An action with no pending cause repairs
drift (an address deleted by hand, an ExaBGP restarted under us): its cause says so.
"""

from __future__ import annotations

from collections.abc import Iterable

from anycastd.core.desired import Desired
from anycastd.model import (
    AddressAction,
    AddService,
    EditService,
    HostAddress,
    IpvsAction,
    VirtualService,
)


class CauseBook:
    def __init__(self) -> None:
        self._pending: dict[str, str] = {}
        self._node: str | None = None  # a node-wide cause (the stop) overrides the rest

    def note(self, service: str, cause: str) -> None:
        """``service``'s latest cause (a later one replaces an earlier pending one)."""
        self._pending[service] = cause

    def note_all(self, cause: str) -> None:
        """A cause for every service (the shutdown)."""
        self._node = cause

    def settle(self) -> None:
        """A pass converged with nothing scheduled: what comes next is drift."""
        self._pending.clear()

    def cause(self, services: Iterable[str], drift: str) -> str:
        """The pending cause of ``services`` (joined when several share a prefix), else
        ``drift`` (a short text saying what the pass found different)."""
        if self._node is not None:
            return self._node
        found = [self._pending[s] for s in services if s in self._pending]
        return "; ".join(dict.fromkeys(found)) if found else f"drift: {drift}"


class Owners:
    """Which services an action touches, from the pass's desired state: a prefix, an
    address or a virtual service maps to the services that declare it (several may share
    a prefix). Unknown keys (a service removed by a reload, a leftover) map to nothing."""

    def __init__(self, desired: Desired | None) -> None:
        self._prefix: dict[str, tuple[str, ...]] = {}
        self._address: dict[HostAddress, tuple[str, ...]] = {}
        self._virtual: dict[VirtualService, tuple[str, ...]] = {}
        self._policy: dict[object, tuple[str, ...]] = {}  # a policy rule or table route
        self._node: tuple[str, ...] = ()  # the real-server role's services
        if desired is None:
            return
        for pol in desired.policy:
            for item in (*pol.rules, *pol.routes):
                self._policy[item] = (*self._policy.get(item, ()), pol.service)
        for intent in desired.prefixes:
            self._prefix[intent.prefix] = intent.owners
            if intent.address is not None:
                self._address[intent.address] = intent.owners
        self._node = tuple(sorted({o for a in desired.node_addresses
                                   for o in self._address.get(a, ())}))
        for svc in desired.services:
            for spec in (*svc.live, *svc.idle):
                self._virtual[spec.service] = (*self._virtual.get(spec.service, ()), svc.name)

    def prefix(self, prefix: str) -> tuple[str, ...]:
        return self._prefix.get(prefix, ())

    def address(self, action: AddressAction) -> tuple[str, ...]:
        return self._address.get(action.address, ())

    def policy(self, item: object) -> tuple[str, ...]:
        """The services whose [policy_routing] declares this rule or table route."""
        return self._policy.get(item, ())

    def node(self) -> tuple[str, ...]:
        """The services with a [real_server] role (the node's links and sysctls serve
        them all)."""
        return self._node

    def virtual(self, action: IpvsAction) -> tuple[str, ...]:
        vs = action.spec.service if isinstance(action, AddService | EditService) else (
            action.service)
        return self._virtual.get(vs, ())


def service_field(owners: tuple[str, ...]) -> str:
    """The ``service=`` value of an action event: the owners, comma-joined; ``-`` when no
    configured service declares what the action touches (removed by a reload)."""
    return ",".join(owners) if owners else "-"
