"""FakeLoopback: an in-memory interface with the semantics of ``NetlinkLoopback``.

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
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from anycastd.actuators.errors import ActuatorError, PermanentError
from anycastd.actuators.loopback import ACTUATOR, LoopbackActuator, NetlinkLoopback
from anycastd.model import AddAddress, Address, AddressAction, HostAddress, LoopbackObserved

__all__ = ["FakeLoopback"]

_LOOPBACK_V6 = Address(ipaddress.ip_address("::1"), 128, owned=False)
_DEFAULT = (Address(ipaddress.ip_address("127.0.0.1"), 8, owned=False), _LOOPBACK_V6)


class FakeLoopback:
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
                failures.append(type(error)(ACTUATOR, f"{action}: {error.message}"))
                continue
            if isinstance(action, AddAddress):
                self._add(action.address)
            else:
                self._remove(action.address)
        if failures:
            permanent = [f for f in failures if not f.transient]
            first = (permanent or failures)[0]
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise type(first)(ACTUATOR, f"{first.message}{more}")

    # -- kernel semantics

    def _check_interface(self) -> None:
        if not self.interface_present:
            raise PermanentError(
                ACTUATOR, f"interface {self.interface!r}: ENODEV (No such device)"
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


if TYPE_CHECKING:
    # mypy proves both sides implement the Protocol the controller depends on.
    def _conforms(real: NetlinkLoopback, fake: FakeLoopback) -> list[LoopbackActuator]:
        return [real, fake]
