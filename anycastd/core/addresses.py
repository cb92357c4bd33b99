"""The diff of the anycast addresses anycastd wants against what the interface holds.

Rule: pure (never awaits, no I/O, no clock). Ownership is the ``owned`` mark that
:mod:`anycastd.actuators.loopback` reads from the kernel (IFA_PROTO); foreign addresses are
reported by :func:`conflicts`, never touched.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from anycastd.model import (
    AddAddress,
    Address,
    AddressAction,
    HostAddress,
    IPAddress,
    LoopbackObserved,
    RemoveAddress,
)

__all__ = ["conflicts", "diff_addresses"]


def _sort_key(key: tuple[IPAddress, int]) -> tuple[int, int, int]:
    return (key[0].version, int(key[0]), key[1])


def diff_addresses(
    desired: Iterable[HostAddress], observed: LoopbackObserved
) -> list[AddressAction]:
    """The fewest writes that make our addresses on the interface equal ``desired``.

    ``desired`` holds one prefix length per IP (host routes: /32, /128). Pure. Removes come
    first (an owned address whose prefix length changed is removed, then
    added again: IPv6 refuses the same address twice), then adds, each group sorted.
    A desired address whose IP is held by a foreign address plans nothing (see
    ``conflicts``); foreign addresses are never removed. A converged state plans ``[]``.
    """
    want = {_key(d): d for d in desired}
    owned = {a.key: a for a in observed.addresses if a.owned}
    foreign_ips = {a.ip for a in observed.addresses if not a.owned}
    removes: list[AddressAction] = [
        RemoveAddress(owned[k].interface) for k in sorted(owned.keys() - want.keys(), key=_sort_key)
    ]
    adds: list[AddressAction] = [
        AddAddress(want[k])
        for k in sorted(want.keys() - owned.keys(), key=_sort_key)
        if k[0] not in foreign_ips
    ]
    return removes + adds


def conflicts(desired: Iterable[HostAddress], observed: LoopbackObserved) -> frozenset[Address]:
    """Foreign addresses that hold the IP of a desired address (reported, never touched)."""
    want_ips = {_key(d)[0] for d in desired}
    return frozenset(a for a in observed.addresses if not a.owned and a.ip in want_ips)


def _key(address: HostAddress) -> tuple[IPAddress, int]:
    # ``ip_interface("192.0.2.1")`` is /32 already; reject anything that is not an interface.
    if not isinstance(address, ipaddress.IPv4Interface | ipaddress.IPv6Interface):
        raise TypeError(f"expected an ip_interface, got {address!r}")
    return (address.ip, address.network.prefixlen)
