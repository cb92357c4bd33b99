"""IpvsNetlink's error boundary and idempotency, with a stand-in for the pyroute2 socket.

Nothing here needs a kernel: the stand-in answers like the kernel does (errno values from
net/netfilter/ipvs/ip_vs_ctl.c); the kernel suite checks the same against the real thing.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import NetlinkError

from anycastd.actuators.ipvs import IpvsNetlink, OwnershipFile
from anycastd.errors import PermanentError, TransientError
from anycastd.model import (
    AddRealServer,
    AddService,
    DeleteRealServer,
    DeleteService,
    EditService,
    RealServer,
    ServiceSpec,
    VirtualService,
)

VIP = VirtualService.tcp("192.0.2.80", 80)
RS = RealServer("10.1.0.1", 8080, 5, "dr")
SPEC = ServiceSpec(VIP, "wlc", 0, (RS,))


class StandInIPVS:
    """Records (kind, command) per request; ``errors[(kind, command)]`` is raised once."""

    def __init__(self, errors: dict[tuple[str, str], int] | None = None) -> None:
        self.errors = dict(errors or {})
        self.calls: list[tuple[str, str]] = []

    def _do(self, kind: str, command: str) -> list[Any]:
        self.calls.append((kind, command))
        code = self.errors.pop((kind, command), None)
        if code is not None:
            raise NetlinkError(code)
        return []

    def service(self, command: str, service: Any = None) -> list[Any]:
        return self._do("service", command)

    def dest(self, command: str, service: Any, dest: Any = None) -> list[Any]:
        return self._do("dest", command)

    def close(self) -> None:
        pass


def actuator(stand_in: StandInIPVS, state_dir: Path | None = None) -> IpvsNetlink:
    return IpvsNetlink(state_dir, connect=lambda: stand_in)


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (errno.EBUSY, TransientError),
        (errno.ENOBUFS, TransientError),
        (errno.EINVAL, PermanentError),
    ],
)
def test_netlink_errors_are_mapped_at_the_boundary(code: int, kind: type[Exception]) -> None:
    act = actuator(StandInIPVS({("service", "add"): code}))
    with pytest.raises(kind) as info:
        act.apply([AddService(SPEC)])
    assert isinstance(info.value.__cause__, NetlinkError)
    assert errno.errorcode[code] in str(info.value)
    assert str(VIP) in str(info.value)


def test_unknown_scheduler_enoent_is_permanent() -> None:
    act = actuator(StandInIPVS({("service", "add"): errno.ENOENT}))
    with pytest.raises(PermanentError, match="ENOENT"):
        act.apply([AddService(ServiceSpec(VIP, "nosuch"))])


def test_adding_what_exists_becomes_a_set() -> None:
    ipvs = StandInIPVS({("service", "add"): errno.EEXIST, ("dest", "add"): errno.EEXIST})
    act = actuator(ipvs)
    act.apply([AddService(SPEC), AddRealServer(VIP, RS)])
    assert ipvs.calls == [
        ("service", "add"),
        ("service", "set"),
        ("dest", "add"),
        ("dest", "set"),
    ]
    assert act.writes == 4


def test_deleting_what_is_gone_succeeds() -> None:
    ipvs = StandInIPVS({("service", "del"): errno.ESRCH, ("dest", "del"): errno.ENOENT})
    actuator(ipvs).apply([DeleteRealServer(VIP, RS), DeleteService(VIP)])
    assert ipvs.calls == [("dest", "del"), ("service", "del")]


def test_editing_a_vanished_service_adds_it_again() -> None:
    ipvs = StandInIPVS({("service", "set"): errno.ESRCH})
    actuator(ipvs).apply([EditService(SPEC)])
    assert ipvs.calls == [("service", "set"), ("service", "add")]


def test_update_is_never_sent() -> None:
    """pyroute2 maps "update" to DELETE: edits must go out as "set"."""
    ipvs = StandInIPVS()
    act = actuator(ipvs)
    act.apply([EditService(SPEC), AddRealServer(VIP, RS)])
    assert all(cmd != "update" for _, cmd in ipvs.calls)


def test_a_failed_add_stays_recorded_as_owned(tmp_path: Path) -> None:
    """Record first: a service that might exist is never unrecorded (crash safety)."""
    act = actuator(StandInIPVS({("service", "add"): errno.EBUSY}), tmp_path)
    with pytest.raises(TransientError):
        act.apply([AddService(SPEC)])
    assert OwnershipFile(tmp_path).load() == {VIP}


def test_a_failed_delete_keeps_ownership_and_a_done_one_drops_it(tmp_path: Path) -> None:
    other = VirtualService.udp("192.0.2.53", 53)
    OwnershipFile(tmp_path).save({VIP, other})
    act = actuator(StandInIPVS({("service", "del"): errno.EBUSY}), tmp_path)
    with pytest.raises(TransientError):
        act.apply([DeleteService(other), DeleteService(VIP)])
    assert OwnershipFile(tmp_path).load() == {VIP, other}
    act.apply([DeleteService(other)])
    assert OwnershipFile(tmp_path).load() == {VIP}


def test_a_socket_that_cannot_open_is_mapped() -> None:
    def refuse() -> Any:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    act = IpvsNetlink(connect=refuse)
    with pytest.raises(PermanentError, match="EPERM"):
        act.observe()
