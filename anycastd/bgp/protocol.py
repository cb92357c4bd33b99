"""What the controller and the daemon need of a BGP speaker: the one Speaker Protocol.

Rule: the daemon and the controller hold a :class:`Speaker` and never ask which class it is
(real: ``bgp.speaker.ExabgpSpeaker``; no ``[bgp]`` or a dry run: :class:`NullSpeaker`; tests:
``testing.exabgp.FakeSpeaker``). A new speaker implements this and needs no daemon change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from anycastd.model import BgpSettings, ResolvedAttributes, RibKey, Route


@dataclass(frozen=True)
class PeerState:
    """A BGP session as ExaBGP last reported it (``neighbor-changes``)."""

    address: str
    name: str
    up: bool = False
    state: str = "unknown"
    reason: str = ""


PeerCallback = Callable[[PeerState], None]
#: Called after every read-back the speaker did on its own (``sent`` may have changed).
ResyncCallback = Callable[[], None]
#: Called with an unexpected exception of a background loop (the loop carries on).
FatalCallback = Callable[[BaseException], None]


class Speaker(Protocol):
    """What the controller needs from a BGP speaker (real: ExabgpSpeaker; fake: FakeSpeaker)."""

    #: Set by the daemon before ``run()``: the speaker never announces on its own; after a
    #: read-back it wakes the controller (``on_resync``); a bug in one of its own loops is
    #: reported (``on_fatal``) and fails closed like one of the daemon's.
    on_resync: ResyncCallback | None
    on_fatal: FatalCallback | None
    #: Seconds between a withdraw's acknowledgement and the peers surely having it: the
    #: controller's pass waits this long before it takes the address away (0: no lag).
    withdraw_settle: float

    async def run(self) -> None:
        """Serve until cancelled; the daemon runs it as a task for its lifetime.
        ActuatorError if it cannot start (the daemon exits with a clear message)."""

    async def set_routes(self, routes: Iterable[Route]) -> None:
        """Make ``routes`` the announced set; send only the difference.

        Raises TransientError when ExaBGP is not reachable (the routes are kept and sent on
        connect) and PermanentError when ExaBGP rejected a command."""

    async def end_of_pass(self) -> None:
        """A controller pass has ended: it converged, or its last step ran. The routes are
        complete; a speaker that owes its peers an End-of-RIB (graceful restart) sends it
        now. Never raises: what could not be sent is owed to the next pass."""

    async def resync(self) -> None:
        """Read the announced routes back and withdraw those not desired; never announce.
        Then report (``on_resync``): the controller's pass decides what to announce."""

    async def update_settings(self, settings: BgpSettings) -> None:
        """Apply a reloaded ``[bgp]`` section; unchanged sessions stay up.
        PermanentError (old settings kept) if the new ones are rejected."""

    @property
    def peers(self) -> Mapping[str, PeerState]:
        """Per-peer session state, keyed by peer address."""

    @property
    def connected(self) -> bool:
        """True while the relay is connected (commands can be sent)."""

    @property
    def sent(self) -> Mapping[RibKey, ResolvedAttributes]:
        """The RIB-out: what the peers are offered, as far as the speaker knows."""

    @property
    def ever_synced(self) -> bool:
        """``sent`` has been read back from the speaker at least once (else it is empty
        for lack of knowledge, not because nothing is announced)."""

    @property
    def synced(self) -> bool:
        """Connected, and ``sent`` read back since the connect: only then does ``sent`` say
        what the peers are offered (the daemon's first pass waits for it)."""


class NullSpeaker:
    """No ``[bgp]`` section: routes go nowhere; the controller remembers what it 'sent'."""

    on_resync: ResyncCallback | None = None
    on_fatal: FatalCallback | None = None
    withdraw_settle = 0.0

    async def run(self) -> None:
        await asyncio.Event().wait()  # nothing to serve: until cancelled

    async def set_routes(self, routes: Iterable[Route]) -> None:
        del routes

    async def end_of_pass(self) -> None:
        pass  # no peers: no End-of-RIB owed

    async def resync(self) -> None:
        if self.on_resync is not None:
            self.on_resync()

    async def update_settings(self, settings: BgpSettings) -> None:
        del settings

    @property
    def peers(self) -> Mapping[str, PeerState]:
        return {}

    @property
    def connected(self) -> bool:
        return True

    @property
    def sent(self) -> Mapping[RibKey, ResolvedAttributes]:
        return {}

    @property
    def ever_synced(self) -> bool:
        return True

    @property
    def synced(self) -> bool:
        return True


if TYPE_CHECKING:

    def _null_is_a_speaker(speaker: NullSpeaker) -> Speaker:  # mypy checks the Protocol
        return speaker
