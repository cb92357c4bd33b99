"""FakeSpeaker: an in-memory BGP speaker for controller tests.

It records the announced RIB exactly as the real speaker would compute it (same resolve/plan
code), keeps a log of the commands it would have sent, and lets a test inject failures
(``fail_next`` / ``disconnect``) and session changes (``set_peer``). ``sent`` is the RIB-out
the controller observes (the shape of ``ExabgpSpeaker.sent``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from anycastd.actuators.errors import ActuatorError, PermanentError, TransientError
from anycastd.bgp import plan as planner
from anycastd.bgp.model import BgpSettings, Route
from anycastd.bgp.speaker import PeerState, Speaker


class FakeSpeaker:
    """Implements :class:`anycastd.bgp.speaker.Speaker` without ExaBGP."""

    def __init__(
        self,
        settings: BgpSettings | None = None,
        *,
        on_peer_change: Callable[[PeerState], None] | None = None,
    ) -> None:
        self.settings = settings or BgpSettings(router_id="192.0.2.1", local_as=65001)
        self.on_peer_change = on_peer_change
        self.rib: planner.Rib = {}
        self.routes: tuple[Route, ...] = ()
        self.desired: planner.Rib = {}
        self.commands: list[str] = []
        self.calls = 0
        self._connected = True
        self._failures: list[ActuatorError] = []
        self._peers: dict[str, PeerState] = {
            n.address: PeerState(address=n.address, name=n.label, up=True, state="up")
            for n in self.settings.neighbors
        }

    # -- Speaker ---------------------------------------------------------------------------
    async def set_routes(self, routes: Iterable[Route]) -> None:
        self.calls += 1
        self.routes = tuple(routes)
        try:
            self.desired = planner.resolve(self.routes, self.settings)
        except (planner.PlanError, ValueError) as exc:
            raise PermanentError("exabgp", str(exc)) from exc
        await self.resync()

    async def resync(self) -> None:
        if not self._connected:
            raise TransientError("exabgp", "fake speaker disconnected")
        for command in planner.plan(self.desired, self.rib, self.settings.local_as):
            if self._failures:
                raise self._failures.pop(0)
            self.commands.append(command.text)
            planner.apply(self.rib, command)

    async def update_settings(self, settings: BgpSettings) -> None:
        try:
            desired = planner.resolve(self.routes, settings)
        except (planner.PlanError, ValueError) as exc:
            raise PermanentError("exabgp", str(exc)) from exc
        self.settings, self.desired = settings, desired
        known = {n.address: n for n in settings.neighbors}
        self._peers = {
            a: self._peers.get(a) or PeerState(address=a, name=n.label, up=True, state="up")
            for a, n in known.items()
        }
        await self.resync()

    @property
    def peers(self) -> Mapping[str, PeerState]:
        return dict(self._peers)

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def ever_synced(self) -> bool:
        """The fake's RIB is always known (``disconnect`` makes writes fail instead)."""
        return True

    @property
    def sent(self) -> Mapping[planner.RibKey, planner.ResolvedAttributes]:
        """The RIB-out as ExaBGP holds it (a copy), like ``ExabgpSpeaker.sent``: what the
        controller reads back as its observation of the speaker."""
        return dict(self.rib)

    # -- test controls ---------------------------------------------------------------------
    @property
    def announced(self) -> dict[str, planner.ResolvedAttributes]:
        """prefix -> attributes, over all neighbors (the last neighbor's wins)."""
        return {prefix: attrs for (_, prefix), attrs in sorted(self.rib.items())}

    def fail_next(self, error: ActuatorError | None = None) -> None:
        """The next command raises ``error`` (default: a PermanentError)."""
        self._failures.append(error or PermanentError("exabgp", "injected error"))

    def disconnect(self) -> None:
        self._connected = False

    def reconnect(self) -> None:
        self._connected = True

    def restart(self) -> None:
        """ExaBGP restarted: nothing is announced until the next resync."""
        self.rib = {}

    def set_peer(self, address: str, up: bool) -> None:
        old = self._peers.get(address) or PeerState(address=address, name=address)
        peer = PeerState(address=address, name=old.name, up=up, state="up" if up else "down")
        self._peers[address] = peer
        if self.on_peer_change is not None and old.up != up:
            self.on_peer_change(peer)


if TYPE_CHECKING:
    from anycastd.engine.controller import RouteSpeaker

    def _fake_is_a_speaker(fake: FakeSpeaker) -> Speaker:  # mypy checks the Protocol
        return fake

    def _fake_is_a_route_speaker(fake: FakeSpeaker) -> RouteSpeaker:  # the controller's
        return fake
