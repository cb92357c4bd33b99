"""FakeSpeaker: an in-memory BGP speaker for controller tests, with the real one's rules.

It records the announced RIB exactly as the real speaker would compute it (same resolve/diff_rib
code), keeps a log of the commands it would have sent, and lets a test inject failures
(``fail_next`` / ``disconnect``), relay reconnects and ExaBGP restarts (``reconnect`` /
``restart``) and session changes (``set_peer``). ``sent`` is the RIB-out the controller
observes (the shape of ``ExabgpSpeaker.sent``); ``rib`` is what "ExaBGP" holds.

The rules it shares with ``ExabgpSpeaker`` (issue 8; a parity test runs the same script
against both): ``set_routes`` remembers ``desired`` even when it fails, and only it
announces. On its own -- ``reconnect``, ``restart`` (ExaBGP restarted, its RIB empty; the
relay then reconnects), ``update_settings``, ``resync`` -- the speaker reads the RIB back,
withdraws what ``desired`` does not hold (once ``desired`` is known), never announces, and
then calls ``on_resync``, also when a withdraw failed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from anycastd.bgp.client import CommandError
from anycastd.bgp.commands import apply_command, diff_rib
from anycastd.bgp.protocol import PeerState, Speaker
from anycastd.core.rib import PlanError, resolve
from anycastd.errors import ActuatorError, PermanentError, TransientError
from anycastd.model import (
    ALL_NEIGHBORS,
    BgpSettings,
    Command,
    ResolvedAttributes,
    Rib,
    RibKey,
    Route,
)


class FakeSpeaker:
    """Implements :class:`anycastd.bgp.protocol.Speaker` without ExaBGP."""

    withdraw_settle = 0.0  # its withdraws reach the "peers" (``rib``) at once

    def __init__(
        self,
        settings: BgpSettings | None = None,
        *,
        on_peer_change: Callable[[PeerState], None] | None = None,
        on_resync: Callable[[], None] | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
        synced: bool = True,
    ) -> None:
        """``synced=False``: like a real speaker before its first read-back (``ever_synced``
        False until ``reconnect``)."""
        self.settings = settings or BgpSettings(router_id="192.0.2.1", local_as=65001)
        self.on_peer_change = on_peer_change
        self.on_resync = on_resync
        # the fake's loops have no bugs to report; kept for the constructor's parity
        self.on_fatal = on_fatal
        self.rib: Rib = {}
        self.routes: tuple[Route, ...] = ()
        self.desired: Rib = {}
        self.desired_known = False
        self.commands: list[str] = []
        self.calls = 0
        self.resyncs = 0
        #: how many controller passes have ended (``end_of_pass``)
        self.passes_ended = 0
        self._connected = synced
        self._ever_synced = synced
        self._failures: list[ActuatorError | None] = []  # None: ExaBGP answers "error"
        self._good_before_failure = 0  # commands that still succeed before _failures apply
        self._peers: dict[str, PeerState] = {
            n.address: PeerState(address=n.address, name=n.label, up=True, state="up")
            for n in self.settings.neighbors
        }

    # -- Speaker ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Nothing to serve: waits until cancelled, like the real speaker's task."""
        await asyncio.Event().wait()

    async def set_routes(self, routes: Iterable[Route]) -> None:
        self.calls += 1
        routes = tuple(routes)
        try:
            desired = resolve(routes, self.settings)
        except (PlanError, ValueError) as exc:
            raise PermanentError("exabgp", str(exc)) from exc
        # remembered before anything can fail, like the real speaker
        self.routes, self.desired, self.desired_known = routes, desired, True
        commands = diff_rib(self.desired, self.rib, self.settings.local_as)
        if commands and not self._connected:  # nothing to send needs no connection
            raise TransientError("exabgp", "fake speaker disconnected")
        self._send(commands)

    async def end_of_pass(self) -> None:
        """Counted only: the fake has no sessions to owe an End-of-RIB (the real speaker's
        is tested against a scripted ExaBGP, tests/unit/test_end_of_rib.py)."""
        self.passes_ended += 1

    async def resync(self) -> None:
        """Read back and withdraw what is not desired (never announce); ``on_resync``,
        then any failure is raised (like ``ExabgpSpeaker.resync``)."""
        self._resync_once()

    async def update_settings(self, settings: BgpSettings) -> None:
        try:
            desired = resolve(self.routes, settings)
        except (PlanError, ValueError) as exc:
            raise PermanentError("exabgp", str(exc)) from exc
        self.settings, self.desired = settings, desired
        known = {n.address: n for n in settings.neighbors}
        # a removed neighbor's routes go with its session
        self.rib = {k: v for k, v in self.rib.items()
                    if k[0] in known or k[0] == ALL_NEIGHBORS}
        self._peers = {
            a: self._peers.get(a) or PeerState(address=a, name=n.label, up=True, state="up")
            for a, n in known.items()
        }
        if self._connected:
            self._resync_in_background()

    @property
    def peers(self) -> Mapping[str, PeerState]:
        return dict(self._peers)

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def ever_synced(self) -> bool:
        """The RIB has been read back at least once (always, unless built ``synced=False``
        and not yet reconnected)."""
        return self._ever_synced

    @property
    def synced(self) -> bool:
        """Connected and read back (a reconnect reads back at once)."""
        return self._connected and self._ever_synced

    @property
    def sent(self) -> Mapping[RibKey, ResolvedAttributes]:
        """The RIB-out as ExaBGP holds it (a copy), like ``ExabgpSpeaker.sent``: what the
        controller reads back as its observation of the speaker."""
        return dict(self.rib)

    # -- test controls ---------------------------------------------------------------------
    @property
    def announced(self) -> dict[str, ResolvedAttributes]:
        """prefix -> attributes, over all neighbors (the last neighbor's wins)."""
        return {prefix: attrs for (_, prefix), attrs in sorted(self.rib.items())}

    def fail_next(self, error: ActuatorError | None = None) -> None:
        """The next command fails with ``error`` (default: ExaBGP answers ``error``, a
        CommandError naming the command, which is a PermanentError: that command
        is skipped, the rest sent, the error raised at the end). A TransientError is a
        timeout: it is raised at once and the connection is dropped (``reconnect`` next)."""
        self._failures.append(error)

    def fail_after(self, n: int, error: ActuatorError | None = None) -> None:
        """The next ``n`` commands succeed, the one after fails (as with ``fail_next``):
        a batch cut short halfway."""
        self._good_before_failure = n
        self._failures.append(error)

    def clear_failures(self) -> None:
        """Forget injected failures that no command consumed."""
        self._failures.clear()
        self._good_before_failure = 0

    def disconnect(self) -> None:
        """The relay went away: ``set_routes`` raises TransientError (``desired`` is still
        recorded); ExaBGP keeps what it announces."""
        self._connected = False

    def reconnect(self) -> None:
        """The relay is back: the RIB is read back (kept), what is not desired is withdrawn,
        nothing is announced, and ``on_resync`` is called."""
        self._connected = True
        self._resync_in_background()

    def restart(self) -> None:
        """ExaBGP restarted: its RIB is empty, and its new relay connects (like
        ``reconnect``): nothing is announced until the controller's next ``set_routes``."""
        self.rib = {}
        self.reconnect()

    def set_peer(self, address: str, up: bool) -> None:
        """A session changed; a session coming up makes the speaker read back (resync)."""
        old = self._peers.get(address) or PeerState(address=address, name=address)
        peer = PeerState(address=address, name=old.name, up=up, state="up" if up else "down")
        self._peers[address] = peer
        if self.on_peer_change is not None and old.up != up:
            self.on_peer_change(peer)
        if up and not old.up and self._connected:
            self._resync_in_background()

    # -- the rules --------------------------------------------------------------------------
    def _resync_once(self) -> None:
        try:
            if not self._connected:
                raise TransientError("exabgp", "fake speaker disconnected")
            self._ever_synced = True  # the read-back
            if self.desired_known:
                # the plan over what the RIB already holds of ``desired``: withdraws only
                keep = {k: v for k, v in self.rib.items() if k in self.desired}
                self._send(diff_rib(keep, self.rib, self.settings.local_as))
        finally:
            self._report()

    def _resync_in_background(self) -> None:
        # what the real speaker's resync loop does: a failure is logged there, not raised
        with contextlib.suppress(ActuatorError):
            self._resync_once()

    def _report(self) -> None:
        self.resyncs += 1
        if self.on_resync is not None:
            self.on_resync()

    def _send(self, commands: list[Command]) -> None:
        # like ExabgpSpeaker._push: a rejected command is skipped, the rest still sent,
        # the first error raised at the end
        first_error: ActuatorError | None = None
        for command in commands:
            if self._failures and self._good_before_failure > 0:
                self._good_before_failure -= 1
            elif self._failures:
                error = self._failures.pop(0) or CommandError(command.text)
                if isinstance(error, TransientError):
                    # a timeout: the command reached ExaBGP, its answer was lost (so an
                    # announce is on the wire, as the real speaker assumes); the real
                    # speaker drops a timed-out connection
                    if any(attrs is not None for _, attrs in command.changes):
                        self.commands.append(command.text)
                        apply_command(self.rib, command)
                    self._connected = False
                    raise error
                first_error = first_error or error
                continue
            self.commands.append(command.text)
            apply_command(self.rib, command)
        if first_error is not None:
            raise first_error


if TYPE_CHECKING:

    def _fake_is_a_speaker(fake: FakeSpeaker) -> Speaker:  # mypy checks the Protocol
        return fake
