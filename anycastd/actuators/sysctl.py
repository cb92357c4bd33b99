"""Kernel settings (sysctls) the IPVS forwarding methods need on this node.

Rule: anycastd writes a sysctl only when the config says it owns the node's role
(``manage=True`` in ``reconcile``); otherwise the drift is returned for status and logs and
nothing is written. Only keys that differ are written, so a converged node sees no writes.

What each role needs (``required_sysctls``):

* ``"nat"`` — this node is an IPVS director doing NAT (masquerading): replies from the real
  servers are routed back through it, so it must forward: ``net.ipv4.ip_forward=1`` and, for
  IPv6 services, ``net.ipv6.conf.all.forwarding=1`` (which makes the node a router: it stops
  accepting router advertisements unless ``accept_ra=2`` is set — the operator's call).
* ``"dr"`` / ``"tunnel"`` — this node is a real server for direct routing or tunnelling: the
  VIP sits on ``lo`` (the loopback actuator puts it there) and the node must not answer ARP
  for it on its LAN interfaces, or it steals the VIP from the director:
  ``net.ipv4.conf.all.arp_ignore=1`` (answer only for addresses on the receiving interface)
  and ``net.ipv4.conf.all.arp_announce=2`` (never use the VIP as ARP source). The kernel
  uses max(all, <interface>) for both, so setting ``all`` is enough. IPv6 needs nothing:
  neighbour discovery does not answer for addresses on ``lo``.
  (On a backend, ``[services.NAME.real_server]`` sets these itself, with the tunnel device
  and rp_filter a tunnelling backend needs: :mod:`anycastd.core.realserver`.)

Namespace-aware by construction: the functions take the ``/proc/sys`` root. ``/proc/sys/net``
shows the network namespace of the process that opens it, so a daemon inside a namespace (or
a test run under ``ip netns exec``) reads and writes that namespace's values; unit tests
point ``proc_sys`` at a temporary directory.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from anycastd.actuators.netlink import error_for
from anycastd.errors import ActuatorError

__all__ = [
    "ACTUATOR",
    "METHODS",
    "PROC_SYS",
    "SysctlDrift",
    "apply",
    "check",
    "reconcile",
    "required_sysctls",
]

ACTUATOR = "sysctl"
PROC_SYS = Path("/proc/sys")
METHODS = frozenset({"nat", "dr", "tunnel"})


@dataclass(frozen=True, order=True)
class SysctlDrift:
    """``key`` should be ``expected`` but is ``actual`` (None: the key does not exist)."""

    key: str
    expected: str
    actual: str | None

    def __str__(self) -> str:
        actual = "missing" if self.actual is None else repr(self.actual)
        return f"{self.key}: want {self.expected!r}, have {actual}"


def required_sysctls(methods: Iterable[str], families: Iterable[int]) -> dict[str, str]:
    """The sysctls (dotted key → value) for the forwarding ``methods`` this node serves.

    ``families`` holds 4 and/or 6: the address families of the node's IPVS services.
    Unknown methods raise ValueError (the config model has validated them already).
    """
    methods = set(methods)
    families = set(families)
    unknown = methods - METHODS
    if unknown:
        raise ValueError(f"unknown forwarding method(s): {', '.join(sorted(unknown))}")
    bad_families = families - {4, 6}
    if bad_families:
        raise ValueError(f"unknown address family: {sorted(bad_families)}")
    required: dict[str, str] = {}
    if "nat" in methods:
        if 4 in families:
            required["net.ipv4.ip_forward"] = "1"
        if 6 in families:
            required["net.ipv6.conf.all.forwarding"] = "1"
    if methods & {"dr", "tunnel"} and 4 in families:
        required["net.ipv4.conf.all.arp_ignore"] = "1"
        required["net.ipv4.conf.all.arp_announce"] = "2"
    return required


def _path(proc_sys: Path, key: str) -> Path:
    parts = key.split(".")
    if not key or any(p in ("", ".", "..") or "/" in p for p in parts):
        raise ValueError(f"not a sysctl key: {key!r}")
    return proc_sys.joinpath(*parts)


def _normalise(value: str) -> str:
    # Multi-value sysctls are tab-separated when read; compare word by word.
    return " ".join(value.split())


def _os_error(exc: OSError, context: str) -> ActuatorError:
    return error_for(ACTUATOR, exc.errno if exc.errno is not None else errno.EIO, context)


def read(key: str, proc_sys: Path = PROC_SYS) -> str | None:
    """The current value of ``key``, or None when the key does not exist."""
    try:
        return _normalise(_path(proc_sys, key).read_text())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _os_error(exc, f"read {key}") from exc


def check(required: Mapping[str, str], proc_sys: Path = PROC_SYS) -> list[SysctlDrift]:
    """Every required key whose value differs (sorted by key); ``[]`` when converged."""
    drift = []
    for key in sorted(required):
        expected = _normalise(required[key])
        actual = read(key, proc_sys)
        if actual != expected:
            drift.append(SysctlDrift(key, expected, actual))
    return drift


def apply(required: Mapping[str, str], proc_sys: Path = PROC_SYS) -> list[SysctlDrift]:
    """Write the keys that differ; return what was changed (``[]``: no writes).

    A missing key or a refused write raises PermanentError (e.g. IPv6 disabled, read-only
    /proc/sys in a container); earlier keys stay written, the rest is left as drift.
    """
    changed = []
    for drift in check(required, proc_sys):
        if drift.actual is None:
            raise error_for(ACTUATOR, errno.ENOENT, f"write {drift.key}")
        try:
            _path(proc_sys, drift.key).write_text(drift.expected + "\n")
        except OSError as exc:
            raise _os_error(exc, f"write {drift.key}") from exc
        changed.append(drift)
    return changed


def reconcile(
    required: Mapping[str, str], *, manage: bool, proc_sys: Path = PROC_SYS
) -> list[SysctlDrift]:
    """One pass: the drift found. Fixed first when ``manage`` (anycastd owns the role);
    otherwise only reported. After a managed pass, call ``check`` to confirm."""
    if manage:
        return apply(required, proc_sys)
    return check(required, proc_sys)
