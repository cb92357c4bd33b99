"""FakeIpvs: an in-memory IPVS table with the semantics of ``IpvsNetlink``.

It behaves like the kernel as the real actuator sees it: the same idempotency (adding what
exists becomes a "set", deleting what is gone succeeds), one write counted per netlink request
the real actuator would send, the same ownership recording, an unknown scheduler answered
with PermanentError (the kernel's ENOENT), and real servers deleted with their service.

Test hooks: ``add_foreign`` (a service someone else made, e.g. with ipvsadm),
``set_connections`` (connection counts for drain decisions), ``fail_next`` (error injection),
``writes`` and ``history`` (what was sent, in order).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from anycastd.actuators.errors import ActuatorError, PermanentError
from anycastd.actuators.ipvs import ACTUATOR, SCHEDULERS
from anycastd.model import (
    AddRealServer,
    AddService,
    DeleteRealServer,
    DeleteService,
    EditRealServer,
    EditService,
    IpvsAction,
    IpvsObserved,
    ObservedRealServer,
    ObservedService,
    RealServer,
    ServiceSpec,
    VirtualService,
)

__all__ = ["FakeIpvs"]


@dataclass
class _Service:
    scheduler: str
    persistence: int
    dests: dict[tuple[str, int], ObservedRealServer] = field(default_factory=dict)
    #: bumped only when the service is (re)created: tests assert edits happen in place
    generation: int = 0


class FakeIpvs:
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
                ACTUATOR, f"set {spec.service}: ENOENT (scheduler {spec.scheduler!r})"
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
                    raise PermanentError(ACTUATOR, f"{first} {target}: ESRCH (no such service)")
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


if TYPE_CHECKING:  # both implementations satisfy the controller's Protocol
    from anycastd.actuators.ipvs import IpvsActuator, IpvsNetlink

    def _conforms(fake: FakeIpvs, real: IpvsNetlink) -> list[IpvsActuator]:
        return [fake, real]
