"""The diff of the desired IPVS table against the kernel's: the fewest netlink writes.

Rule: pure (never awaits, no I/O, no clock). The values are in :mod:`anycastd.model`; the
writes are performed by :mod:`anycastd.actuators.ipvs`, which also keeps the ownership record.

Theory of operation
-------------------
A virtual service is identified by its key, :class:`~anycastd.model.VirtualService`
(protocol + address + port, or fwmark + family). ``diff_ipvs(desired, observed, owned)``
diffs the whole table and returns the fewest netlink writes that make the kernel equal to
``desired``:

* a missing service: ``AddService`` then one ``AddRealServer`` per real server;
* scheduler or persistence changed: one ``EditService`` (netlink "set", in place: the
  service and its connections survive);
* a real server's weight or forwarding method changed: one ``EditRealServer`` ("set");
* a real server no longer desired: ``DeleteRealServer``;
* an owned service no longer desired: one ``DeleteService`` (the kernel drops its real
  servers with it; no per-server deletes);
* a converged table plans nothing, so a steady state makes no netlink writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from anycastd.model import (
    AddRealServer,
    AddService,
    DeleteRealServer,
    DeleteService,
    EditRealServer,
    EditService,
    IpvsAction,
    IpvsObserved,
    ObservedService,
    ServiceSpec,
    VirtualService,
)

__all__ = ["diff_ipvs", "foreign"]


def _service_differs(want: ServiceSpec, have: ObservedService) -> bool:
    return want.scheduler != have.scheduler or want.persistence != have.persistence


def diff_ipvs(
    desired: Mapping[VirtualService, ServiceSpec],
    observed: IpvsObserved,
    owned: Iterable[VirtualService] = (),
) -> list[IpvsAction]:
    """The fewest actions that make ``observed`` equal to ``desired``. Pure.

    ``owned`` is the recorded ownership (``anycastd.actuators.ipvs.OwnershipFile``); every key
    of ``desired`` is owned too. Services neither desired nor owned are never touched. Order:
    additions and edits per service (service before its real servers), deletions of real
    servers, then deletions of stale owned services; within each, services in key order.
    """
    actions: list[IpvsAction] = []
    removals: list[IpvsAction] = []
    for key in sorted(desired):
        want = desired[key]
        if want.service != key:
            raise ValueError(f"desired[{key}] holds the spec of {want.service}")
        have = observed.services.get(key)
        if have is None:
            actions.append(AddService(want))
            actions.extend(AddRealServer(key, rs) for rs in want.real_servers)
            continue
        if _service_differs(want, have):
            actions.append(EditService(want))
        current = {ors.server.key: ors.server for ors in have.real_servers}
        wanted = {rs.key for rs in want.real_servers}
        for rs in want.real_servers:
            cur = current.get(rs.key)
            if cur is None:
                actions.append(AddRealServer(key, rs))
            elif cur != rs:
                actions.append(EditRealServer(key, rs))
        removals.extend(
            DeleteRealServer(key, current[k]) for k in sorted(current) if k not in wanted
        )
    owned_set = set(owned)
    stale = sorted(k for k in observed.services if k in owned_set and k not in desired)
    return actions + removals + [DeleteService(k) for k in stale]


def foreign(observed: IpvsObserved, owned: Iterable[VirtualService]) -> list[VirtualService]:
    """Services in the kernel that anycastd does not own (reported, never touched).

    Pass the recorded ownership together with the declared keys (``owned | desired.keys()``).
    """
    owned_set = set(owned)
    return sorted(k for k in observed.services if k not in owned_set)
