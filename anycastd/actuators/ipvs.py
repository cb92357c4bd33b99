"""IPVS actuator: virtual services and their real servers, kept equal to the desired state.

Rule: the only writer to the IPVS netlink family. ``IpvsNetlink.observe``/``apply`` do the
netlink I/O, synchronously (the controller runs them in a worker thread). No pyroute2
exception leaves this module: errors become :class:`TransientError`/:class:`PermanentError`
at the ``apply``/``observe`` boundary. The values are in :mod:`anycastd.model`; the pure diff
is :func:`anycastd.core.ipvs.diff_ipvs` (its theory of operation is there).

Draining is weight 0: the scheduler sends no new connections to the server while the
existing ones finish; ``IpvsObserved`` carries the active/inactive connection counts the
controller reads to decide when a drained server may be removed.

Ownership (IPVS has no tag or comment field)
--------------------------------------------
anycastd owns a virtual service when (a) the config declares it (every key of ``desired``),
or (b) it is recorded in the ownership file ``<state_dir>/ipvs-owned.json``, which lists
every service anycastd created or adopted. ``apply`` writes the record (atomically, once)
*before* it adds or edits services and clears entries only *after* their delete succeeded,
so a crash can leave at most a recorded-but-absent entry (harmless), never an unrecorded
service of ours. After a restart with a service removed
from the config, the record still names it, so the first pass deletes it (stale owned
entry). A service neither declared nor recorded is foreign: observed and reported
(:func:`anycastd.core.ipvs.foreign`), never edited or deleted. A foreign service whose key the
config later declares is adopted: from then on it is ours (the operator asked for it in the config).
Real servers of an owned service are all managed: the config is the whole truth for it.

pyroute2 0.9.7 pitfalls handled here (see PLATFORM.md): "update" maps to DELETE, so edits use
"set"; ``from_message`` keeps class defaults, so observation reads raw ``IPVS_*_ATTR_*``
attributes; fwmark services need an explicit ``af`` and ``netmask``; the IPv6 "netmask" is a
prefix length in host byte order (sent as the ip4addr "128.0.0.0").
"""

from __future__ import annotations

import errno
import json
import os
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Literal, Protocol

from anycastd.actuators.netlink import map_netlink_errors
from anycastd.errors import ActuatorError, PermanentError
from anycastd.model import (
    AddRealServer,
    AddService,
    DeleteRealServer,
    DeleteService,
    EditRealServer,
    EditService,
    Forwarding,
    IpvsAction,
    IpvsObserved,
    ObservedRealServer,
    ObservedService,
    RealServer,
    ServiceProtocol,
    ServiceSpec,
    VirtualService,
)

__all__ = [
    "ACTUATOR",
    "SCHEDULERS",
    "IpvsActuator",
    "IpvsNetlink",
    "OwnershipFile",
]

ACTUATOR = "ipvs"

SCHEDULERS = frozenset({"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh"})

# Kernel values (include/uapi/linux/ip_vs.h).
_FWD_TO_KERNEL: dict[str, int] = {"nat": 0, "tunnel": 2, "dr": 3}
_FWD_FROM_KERNEL: dict[int, Forwarding] = {0: "nat", 2: "tunnel", 3: "dr"}
_PROTO_TO_KERNEL: dict[str, int] = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
_SVC_F_PERSISTENT = 0x0001
_FWD_MASK = 0x0007


# --- ownership record ----------------------------------------------------------------------


class OwnershipFile:
    """The set of virtual services anycastd created, in ``<state_dir>/ipvs-owned.json``.

    Written atomically (temporary file, fsync, rename). A missing file is an empty set; an
    unreadable one raises PermanentError (guessing ownership could delete foreign state).
    """

    NAME = "ipvs-owned.json"

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / self.NAME

    def load(self) -> frozenset[VirtualService]:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return frozenset()
        except OSError as exc:
            raise PermanentError(ACTUATOR, f"cannot read {self.path}: {exc}") from exc
        try:
            data = json.loads(raw)
            return frozenset(VirtualService.from_json(item) for item in data["services"])
        except (ValueError, KeyError, TypeError) as exc:
            raise PermanentError(ACTUATOR, f"{self.path} is corrupt: {exc}") from exc

    def save(self, services: Iterable[VirtualService]) -> None:
        data = {"version": 1, "services": [vs.to_json() for vs in sorted(set(services))]}
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            raise PermanentError(ACTUATOR, f"cannot write {self.path}: {exc}") from exc


# --- the Protocol the controller uses -------------------------------------------------------


class IpvsActuator(Protocol):
    """What the controller needs from IPVS; :class:`IpvsNetlink` and
    ``anycastd.actuators.memory.MemoryIpvs`` implement it."""

    def observe(self) -> IpvsObserved:
        """The whole table. Raises TransientError/PermanentError."""
        ...

    def owned(self) -> frozenset[VirtualService]:
        """The recorded ownership (pass to ``diff_ipvs`` together with the desired keys)."""
        ...

    def apply(self, actions: Sequence[IpvsAction]) -> None:
        """Perform ``actions`` in order; idempotent (adding what exists, deleting what is
        gone succeed). Stops at the first failure and raises it mapped; the next pass
        observes and re-plans."""
        ...


# --- the real one ---------------------------------------------------------------------------


def _service_nla(vs: VirtualService, spec: ServiceSpec | None = None) -> dict[str, Any]:
    af = socket.AF_INET6 if vs.family == 6 else socket.AF_INET
    # Persistence netmask: /32 for IPv4; for IPv6 the kernel reads a prefix length in host
    # byte order from this ip4addr-typed attribute, so 128 is spelled "128.0.0.0".
    kw: dict[str, Any] = {
        "af": af,
        "netmask": "128.0.0.0" if vs.family == 6 else "255.255.255.255",
    }
    if vs.protocol == "fwmark":
        kw["fwmark"] = vs.fwmark
    else:
        kw.update(protocol=_PROTO_TO_KERNEL[vs.protocol], addr=vs.address, port=vs.port)
    if spec is not None:
        kw["sched_name"] = spec.scheduler
        kw["timeout"] = spec.persistence
        kw["flags"] = {
            "flags": _SVC_F_PERSISTENT if spec.persistence else 0,
            "mask": _SVC_F_PERSISTENT,
        }
    return kw


def _dest_nla(rs: RealServer) -> dict[str, Any]:
    return {
        "addr": rs.address,
        "port": rs.port,
        "weight": rs.weight,
        "fwd_method": _FWD_TO_KERNEL[rs.forwarding],
    }


def _attr(msg: Any, name: str, default: Any = None) -> Any:
    value = msg.get_attr(name)
    return default if value is None else value


def _parse_service(svc: Any) -> tuple[VirtualService, str, int]:
    af = int(_attr(svc, "IPVS_SVC_ATTR_AF", socket.AF_INET))
    family: Literal[4, 6] = 6 if af == socket.AF_INET6 else 4
    fwmark = int(_attr(svc, "IPVS_SVC_ATTR_FWMARK", 0))
    if fwmark:
        vs = VirtualService.mark(fwmark, family)
    else:
        proto = int(_attr(svc, "IPVS_SVC_ATTR_PROTOCOL", 0))
        name: ServiceProtocol
        if proto == socket.IPPROTO_TCP:
            name = "tcp"
        elif proto == socket.IPPROTO_UDP:
            name = "udp"
        else:
            raise ValueError(f"unsupported IPVS protocol {proto}")
        vs = VirtualService(
            name, str(_attr(svc, "IPVS_SVC_ATTR_ADDR")), int(_attr(svc, "IPVS_SVC_ATTR_PORT"))
        )
    sched = str(_attr(svc, "IPVS_SVC_ATTR_SCHED_NAME", ""))
    flags_nla = svc.get_attr("IPVS_SVC_ATTR_FLAGS")
    flags = int(flags_nla["flags"]) if flags_nla is not None else 0
    timeout = int(_attr(svc, "IPVS_SVC_ATTR_TIMEOUT", 0))
    persistence = timeout if flags & _SVC_F_PERSISTENT else 0
    return vs, sched, persistence


def _parse_dest(dest: Any) -> ObservedRealServer:
    fwd = int(_attr(dest, "IPVS_DEST_ATTR_FWD_METHOD", 0)) & _FWD_MASK
    # "local" (1, only ipvsadm makes it) reads as nat: anycastd never configures it.
    server = RealServer(
        address=str(_attr(dest, "IPVS_DEST_ATTR_ADDR")),
        port=int(_attr(dest, "IPVS_DEST_ATTR_PORT", 0)),
        weight=min(int(_attr(dest, "IPVS_DEST_ATTR_WEIGHT", 0)), 65535),
        forwarding=_FWD_FROM_KERNEL.get(fwd, "nat"),
    )
    return ObservedRealServer(
        server,
        active_connections=int(_attr(dest, "IPVS_DEST_ATTR_ACTIVE_CONNS", 0)),
        inactive_connections=int(_attr(dest, "IPVS_DEST_ATTR_INACT_CONNS", 0)),
    )


class IpvsNetlink:
    """The real actuator (pyroute2 generic netlink). One socket, opened lazily.

    ``state_dir`` holds the ownership record; ``None`` keeps it in memory only (tests,
    dry runs). ``writes`` counts netlink write requests sent (successful or not).
    ``connect`` builds the pyroute2 ``IPVS`` socket (default: ``pyroute2.IPVS()``); tests of
    the error boundary pass a stand-in. Use one instance from one thread at a time (the
    controller: a single-thread executor).
    """

    def __init__(
        self, state_dir: Path | None = None, *, connect: Callable[[], Any] | None = None
    ) -> None:
        self._file = OwnershipFile(state_dir) if state_dir is not None else None
        self._owned: set[VirtualService] | None = None
        self._connect = connect
        self._sock: Any = None
        self.writes = 0

    # -- lifecycle
    def close(self) -> None:
        if self._sock is not None:
            with suppress(Exception):
                self._sock.close()
            self._sock = None

    def __enter__(self) -> IpvsNetlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ipvs(self) -> Any:
        if self._sock is None:
            with map_netlink_errors(ACTUATOR, "open IPVS netlink socket"):
                if self._connect is not None:
                    self._sock = self._connect()
                else:
                    from pyroute2 import IPVS

                    self._sock = IPVS()
        return self._sock

    @contextmanager
    def _mapped(self, context: str) -> Iterator[None]:
        try:
            with map_netlink_errors(ACTUATOR, context):
                yield
        except ActuatorError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            # A message we could not parse, or a pyroute2 internal failure: not retryable.
            raise PermanentError(ACTUATOR, f"{context}: {exc!r}") from exc

    # -- ownership
    def owned(self) -> frozenset[VirtualService]:
        if self._owned is None:
            self._owned = set(self._file.load()) if self._file is not None else set()
        return frozenset(self._owned)

    def _record(self, services: set[VirtualService]) -> None:
        if self._file is not None:
            self._file.save(services)
        self._owned = services

    # -- observe
    def observe(self) -> IpvsObserved:
        from pyroute2 import IPVSService

        ipvs = self._ipvs()
        services: dict[VirtualService, ObservedService] = {}
        with self._mapped("dump services"):
            for msg in ipvs.service("dump"):
                svc = msg.get_attr("IPVS_CMD_ATTR_SERVICE")
                if svc is None:
                    continue
                try:
                    vs, sched, persistence = _parse_service(svc)
                except ValueError:
                    continue  # e.g. an SCTP service: not ours to model, never touched
                dests = tuple(
                    _parse_dest(d.get_attr("IPVS_CMD_ATTR_DEST"))
                    for d in ipvs.dest("dump", service=IPVSService(**_service_nla(vs)))
                    if d.get_attr("IPVS_CMD_ATTR_DEST") is not None
                )
                services[vs] = ObservedService(vs, sched, persistence, dests)
        return IpvsObserved(services)

    # -- apply
    def apply(self, actions: Sequence[IpvsAction]) -> None:
        # Ownership: record every service about to be created first (one file write), so a
        # crash never leaves an unrecorded service of ours; forget deleted ones only after
        # they are gone (one file write at the end, also when a later action failed).
        owned = set(self.owned())
        adding = {a.spec.service for a in actions if isinstance(a, AddService | EditService)}
        if not adding <= owned:
            self._record(owned | adding)
        deleted: set[VirtualService] = set()
        try:
            self._apply(actions, deleted)
        finally:
            if deleted:
                self._record(set(self.owned()) - deleted)

    def _apply(self, actions: Sequence[IpvsAction], deleted: set[VirtualService]) -> None:
        from pyroute2 import IPVSDest, IPVSService

        ipvs = self._ipvs()

        def write(context: str, call: Any, *args: Any, ok: Iterable[int] = ()) -> bool:
            """One netlink write; False when it failed with an errno in ``ok``."""
            self.writes += 1
            try:
                with self._mapped(context):
                    call(*args)
            except ActuatorError as exc:
                code = getattr(exc.__cause__, "code", None)
                if code is not None and abs(int(code)) in set(ok):
                    return False
                raise
            return True

        for action in actions:
            match action:
                case AddService(spec):
                    vs = spec.service
                    svc = IPVSService(**_service_nla(vs, spec))
                    if not write(f"add {vs}", ipvs.service, "add", svc, ok=[errno.EEXIST]):
                        write(f"set {vs}", ipvs.service, "set", svc)
                case EditService(spec):
                    vs = spec.service
                    svc = IPVSService(**_service_nla(vs, spec))
                    if not write(f"set {vs}", ipvs.service, "set", svc, ok=[errno.ESRCH]):
                        write(f"add {vs}", ipvs.service, "add", svc)  # it vanished: add again
                case DeleteService(vs):
                    write(
                        f"del {vs}",
                        ipvs.service,
                        "del",
                        IPVSService(**_service_nla(vs)),
                        ok=[errno.ESRCH, errno.ENOENT],
                    )
                    deleted.add(vs)
                case AddRealServer(vs, rs):
                    svc = IPVSService(**_service_nla(vs))
                    dest = IPVSDest(**_dest_nla(rs))
                    ctx = f"add {rs.address}:{rs.port} to {vs}"
                    if not write(ctx, ipvs.dest, "add", svc, dest, ok=[errno.EEXIST]):
                        write(ctx, ipvs.dest, "set", svc, dest)
                case EditRealServer(vs, rs):
                    svc = IPVSService(**_service_nla(vs))
                    dest = IPVSDest(**_dest_nla(rs))
                    ctx = f"set {rs.address}:{rs.port} of {vs}"
                    if not write(ctx, ipvs.dest, "set", svc, dest, ok=[errno.ENOENT]):
                        write(ctx, ipvs.dest, "add", svc, dest)
                case DeleteRealServer(vs, rs):
                    write(
                        f"del {rs.address}:{rs.port} of {vs}",
                        ipvs.dest,
                        "del",
                        IPVSService(**_service_nla(vs)),
                        IPVSDest(**_dest_nla(rs)),
                        ok=[errno.ENOENT, errno.ESRCH],
                    )
