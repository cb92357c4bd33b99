"""The in-memory twins of the address and IPVS actuators: the dry run's world, and the
fakes of the tests (``anycastd.testing`` re-exports them as ``FakeLoopback``/``FakeIpvs``).

Rule: no I/O at all; each twin keeps the semantics of its real actuator, taking the shared
pieces (names, schedulers, the batch error rule) from the real module itself.

``MemoryLoopback``: an in-memory interface with the semantics of ``NetlinkLoopback``.

It behaves like the kernel as the real actuator sees it (checked by the shared parity tests
in tests/unit/test_loopback_fake.py and tests/integration/test_loopback.py):

* one write counted per action sent, successful or not;
* adding an address that exists is fine (the kernel's EEXIST, taken as done) and does not
  change who owns it: a foreign address is never claimed;
* IPv6 holds an address once (any prefix length: EEXIST), IPv4 once per prefix length;
* removing an address that is gone is fine; removing does not look at the mark (neither
  does the kernel: ownership is ``diff_addresses``'s job);
* every action of a batch is attempted, then the first failure is raised (a permanent one
  if any), like the real batch;
* a missing interface answers PermanentError (the kernel's ENODEV) on observe and apply;
* ``link_up = False`` (``ip link set IF down``) deletes every IPv6 address, ours included, and
  keeps the IPv4 ones; ``link_up = True`` brings back only ``::1`` on ``lo``; adds work
  while down (the kernel's default ``keep_addr_on_down=0``, measured: see the loopback
  module's "Link down").

Test hooks: ``add_foreign``/``remove_foreign`` (what an operator does with ``ip addr``),
``fail_next`` (error injection on the next N writes), ``interface_present``, ``link_up``,
``writes`` and
``history`` (what was sent, in order). Pass ``addresses=`` (e.g. an earlier instance's
``observe().addresses``) to model a restart that finds marked addresses in the kernel.

``MemoryIpvs``: an in-memory IPVS table with the semantics of ``IpvsNetlink``.

It behaves like the kernel as the real actuator sees it: the same idempotency (adding what
exists becomes a "set", deleting what is gone succeeds), one write counted per netlink request
the real actuator would send, the same ownership recording, an unknown scheduler answered
with PermanentError (the kernel's ENOENT), and real servers deleted with their service.

Test hooks: ``add_foreign`` (a service someone else made, e.g. with ipvsadm),
``set_connections`` (connection counts for drain decisions), ``fail_next`` (error injection),
``writes`` and ``history`` (what was sent, in order).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from anycastd.actuators import frr
from anycastd.actuators.ipvs import ACTUATOR as IPVS
from anycastd.actuators.ipvs import SCHEDULERS, IpvsActuator, IpvsNetlink
from anycastd.actuators.loopback import ACTUATOR as LOOPBACK
from anycastd.actuators.loopback import (
    LoopbackActuator,
    NetlinkLoopback,
    raise_batch_failures,
)
from anycastd.errors import ActuatorError, PermanentError
from anycastd.model import (
    AddAddress,
    AddRealServer,
    Address,
    AddressAction,
    AddService,
    DeleteRealServer,
    DeleteService,
    EditRealServer,
    EditService,
    HostAddress,
    IpvsAction,
    IpvsObserved,
    LoopbackObserved,
    ObservedRealServer,
    ObservedService,
    OspfRoute,
    RealServer,
    ServiceSpec,
    VirtualService,
)

__all__ = ["MemoryIpvs", "MemoryLoopback", "MemoryOspf"]

_LOOPBACK_V6 = Address(ipaddress.ip_address("::1"), 128, owned=False)
_DEFAULT = (Address(ipaddress.ip_address("127.0.0.1"), 8, owned=False), _LOOPBACK_V6)


class MemoryLoopback:
    """Implements ``anycastd.actuators.loopback.LoopbackActuator`` in memory."""

    def __init__(self, interface: str = "lo", addresses: Iterable[Address] = _DEFAULT) -> None:
        self.interface = interface
        self.addresses: set[Address] = set(addresses)
        self.interface_present = True
        self._link_up = True
        self._failures: list[ActuatorError] = []
        self._writes = 0
        #: ("add" | "remove", "192.0.2.1/32") per write, in order
        self.history: list[tuple[str, str]] = []

    @property
    def writes(self) -> int:
        return self._writes

    # -- test hooks

    def add_foreign(self, address: HostAddress | str) -> None:
        """An address added by someone else (no mark)."""
        iface = ipaddress.ip_interface(address)
        self.addresses.add(Address(iface.ip, iface.network.prefixlen, owned=False))

    def remove_foreign(self, address: HostAddress | str) -> None:
        iface = ipaddress.ip_interface(address)
        self.addresses.discard(Address(iface.ip, iface.network.prefixlen, owned=False))

    @property
    def link_up(self) -> bool:
        """IFF_UP of the interface; reported as ``observe().up``."""
        return self._link_up

    @link_up.setter
    def link_up(self, up: bool) -> None:
        # What the kernel does to the addresses on the transition, not on every assignment.
        if self._link_up and not up:
            self.addresses = {a for a in self.addresses if a.ip.version == 4}
        elif up and not self._link_up and self.interface == "lo":
            self.addresses.add(_LOOPBACK_V6)
        self._link_up = up

    def fail_next(self, error: ActuatorError, count: int = 1) -> None:
        """The next ``count`` writes fail with ``error`` (and change nothing)."""
        self._failures.extend([error] * count)

    # -- the Protocol

    def observe(self) -> LoopbackObserved:
        self._check_interface()
        return LoopbackObserved(self.interface, frozenset(self.addresses), up=self._link_up)

    def apply(self, actions: Sequence[AddressAction]) -> None:
        if not actions:
            return
        self._check_interface()
        failures: list[ActuatorError] = []
        for action in actions:
            self._writes += 1
            verb = "add" if isinstance(action, AddAddress) else "remove"
            self.history.append((verb, str(action.address)))
            if self._failures:
                error = self._failures.pop(0)
                failures.append(type(error)(LOOPBACK, f"{action}: {error.message}"))
                continue
            if isinstance(action, AddAddress):
                self._add(action.address)
            else:
                self._remove(action.address)
        raise_batch_failures(failures)

    # -- kernel semantics

    def _check_interface(self) -> None:
        if not self.interface_present:
            raise PermanentError(
                LOOPBACK, f"interface {self.interface!r}: ENODEV (No such device)"
            )

    def _add(self, address: HostAddress) -> None:
        prefixlen = address.network.prefixlen
        for held in self.addresses:
            if held.ip == address.ip and (address.version == 6 or held.prefixlen == prefixlen):
                return  # EEXIST: done, whoever holds it
        self.addresses.add(Address(address.ip, prefixlen, owned=True))

    def _remove(self, address: HostAddress) -> None:
        prefixlen = address.network.prefixlen
        for held in list(self.addresses):
            if held.ip == address.ip and held.prefixlen == prefixlen:
                self.addresses.discard(held)


# --------------------------------------------------------------------------------------------
# IPVS


@dataclass
class _Service:
    scheduler: str
    persistence: int
    dests: dict[tuple[str, int], ObservedRealServer] = field(default_factory=dict)
    #: bumped only when the service is (re)created: tests assert edits happen in place
    generation: int = 0


class MemoryIpvs:
    """Implements ``anycastd.actuators.ipvs.IpvsActuator`` in memory."""

    def __init__(self, owned: Iterable[VirtualService] = ()) -> None:
        self.table: dict[VirtualService, _Service] = {}
        self._owned: set[VirtualService] = set(owned)
        self._failures: list[tuple[ActuatorError, type[IpvsAction] | None]] = []
        self._generation = 0
        self.writes = 0
        #: ("service add" | "service set" | "service del" | "dest add" | ..., target) per write
        self.history: list[tuple[str, str]] = []

    # -- test hooks
    def add_foreign(self, spec: ServiceSpec) -> None:
        """A service created by someone else (not recorded as owned; no write counted)."""
        self._create(spec)
        for rs in spec.real_servers:
            self.table[spec.service].dests[rs.key] = ObservedRealServer(rs)

    def set_connections(
        self, service: VirtualService, address: str, port: int, active: int, inactive: int = 0
    ) -> None:
        key = RealServer(address, port).key
        svc = self.table[service]
        svc.dests[key] = replace(
            svc.dests[key], active_connections=active, inactive_connections=inactive
        )

    def fail_next(self, error: ActuatorError, on: type[IpvsAction] | None = None) -> None:
        """The next write (of an ``on`` action, if given) raises ``error`` instead."""
        self._failures.append((error, on))

    def generation(self, service: VirtualService) -> int:
        """Changes only when the service is created anew (never on an in-place edit)."""
        return self.table[service].generation

    # -- IpvsActuator
    def owned(self) -> frozenset[VirtualService]:
        return frozenset(self._owned)

    def observe(self) -> IpvsObserved:
        return IpvsObserved(
            {
                vs: ObservedService(
                    vs, svc.scheduler, svc.persistence, tuple(svc.dests[k] for k in svc.dests)
                )
                for vs, svc in self.table.items()
            }
        )

    def apply(self, actions: Sequence[IpvsAction]) -> None:
        for action in actions:
            self._apply_one(action)

    # -- internals
    def _write(self, op: str, target: str, action: IpvsAction) -> None:
        self.writes += 1
        self.history.append((op, target))
        for i, (error, on) in enumerate(self._failures):
            if on is None or isinstance(action, on):
                del self._failures[i]
                raise error

    def _create(self, spec: ServiceSpec) -> None:
        self._generation += 1
        self.table[spec.service] = _Service(
            spec.scheduler, spec.persistence, generation=self._generation
        )

    def _check_scheduler(self, spec: ServiceSpec) -> None:
        if spec.scheduler not in SCHEDULERS:
            raise PermanentError(
                IPVS, f"set {spec.service}: ENOENT (scheduler {spec.scheduler!r})"
            )

    def _apply_one(self, action: IpvsAction) -> None:
        match action:
            case AddService(spec):
                vs = spec.service
                self._owned.add(vs)  # recorded before the write, like the real one
                if vs in self.table:
                    self._write("service add", str(vs), action)  # EEXIST, then "set"
                    self._write("service set", str(vs), action)
                    self._check_scheduler(spec)
                    svc = self.table[vs]
                    svc.scheduler, svc.persistence = spec.scheduler, spec.persistence
                else:
                    self._write("service add", str(vs), action)
                    self._check_scheduler(spec)
                    self._create(spec)
            case EditService(spec):
                vs = spec.service
                self._owned.add(vs)  # a declared service is ours (adoption), like the real one
                self._write("service set", str(vs), action)
                if vs not in self.table:  # ESRCH: it vanished; add it again
                    self._apply_one(AddService(spec))
                    return
                self._check_scheduler(spec)
                svc = self.table[vs]
                svc.scheduler, svc.persistence = spec.scheduler, spec.persistence
            case DeleteService(vs):
                self._write("service del", str(vs), action)
                self.table.pop(vs, None)
                self._owned.discard(vs)
            case AddRealServer(vs, rs) | EditRealServer(vs, rs):
                first = "dest add" if isinstance(action, AddRealServer) else "dest set"
                target = f"{rs.address}:{rs.port}@{vs}"
                self._write(first, target, action)
                dsvc = self.table.get(vs)
                if dsvc is None:
                    raise PermanentError(IPVS, f"{first} {target}: ESRCH (no such service)")
                exists = rs.key in dsvc.dests
                if exists != (first == "dest set"):
                    self._write("dest set" if exists else "dest add", target, action)
                old = dsvc.dests.get(rs.key)
                dsvc.dests[rs.key] = (
                    replace(old, server=rs) if old is not None else ObservedRealServer(rs)
                )
            case DeleteRealServer(vs, rs):
                self._write("dest del", f"{rs.address}:{rs.port}@{vs}", action)
                if vs in self.table:
                    self.table[vs].dests.pop(rs.key, None)


if TYPE_CHECKING:
    # mypy proves both sides implement the Protocols the controller depends on.
    def _conforms(real: NetlinkLoopback, fake: MemoryLoopback) -> list[LoopbackActuator]:
        return [real, fake]

    def _conforms_ipvs(fake: MemoryIpvs, real: IpvsNetlink) -> list[IpvsActuator]:
        return [fake, real]


class MemoryOspf:
    """Implements ``anycastd.actuators.frr.OspfActuator`` in memory: the routing daemon's
    configuration as the real module parses it (``frr.Parsed``), changed with the real
    module's ``render``/``commands`` and read back with its ``published`` (so the twin
    shares the read-back and ownership rules).

    ``config`` starts as an empty ``router ospf`` (pass ``config=frr.parse(settings, text)``
    to model an operator's configuration, or a restart that finds anycastd's part there).
    Test hooks: ``fail_next``, ``writes`` (configuration sessions), ``history`` (each
    session's commands, in order); assign ``config`` to model a hand edit."""

    def __init__(self, settings: frr.OspfSettings | None = None,
                 config: frr.Parsed | None = None) -> None:
        self.settings = settings or frr.OspfSettings()
        self.config = config if config is not None else frr.Parsed(has_router=True)
        self.writes = 0
        self.history: list[list[str]] = []
        self._failures: list[ActuatorError] = []

    def fail_next(self, error: ActuatorError, count: int = 1) -> None:
        """The next ``count`` writes fail with ``error`` (and change nothing)."""
        self._failures.extend([error] * count)

    def observe(self) -> frozenset[OspfRoute]:
        return frr.published(self.settings, self.config)

    def apply(self, routes: frozenset[OspfRoute]) -> None:
        s = self.settings
        before = self.config
        if s.mode == "apply":
            if not before.has_router:
                raise PermanentError(frr.ACTUATOR, f"no '{s.router_line}' in the running "
                                     "configuration")
            foreign = frr.foreign_redistribute(s, before)
            if foreign is not None:
                raise PermanentError(frr.ACTUATOR, f"'{s.router_line}' already has '{foreign}'")
        target = frr.parse(s, frr.render(s, routes))
        cmds = frr.commands(s, before, target)
        if not cmds:
            return
        self.writes += 1
        if self._failures:
            raise self._failures.pop(0)
        self.history.append(cmds)
        self.config = target

    def settle(self, prefixes: frozenset[str]) -> bool:
        del prefixes  # the twin's "LSAs" change with its configuration, at once
        return True
