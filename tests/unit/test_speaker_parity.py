"""FakeSpeaker and ExabgpSpeaker obey the same rules: one script, both speakers, same RIB.

The planner's property tests trust FakeSpeaker; this runs one scripted sequence (set_routes,
a rejected command, the relay away, set_routes failing, reconnect, withdraw-only resync,
ExaBGP restart) against FakeSpeaker and against the real speaker talking to a scripted
ExaBGP that keeps its adj-rib-out from the commands, and compares after every step the
``sent`` RIB, the commands ExaBGP accepted, and how often the controller was woken.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from anycastd.bgp.speaker import ExabgpSpeaker
from anycastd.errors import ActuatorError
from anycastd.model import Attributes, ResolvedAttributes, RibKey, Route
from anycastd.testing.exabgp import FakeSpeaker
from tests.unit.test_exabgp_speaker import SETTINGS, ScriptedExabgp, until

HEADER = ("neighbor 10.0.0.1 local-ip 10.0.0.2 local-as 65001 peer-as 65000 "
          "router-id 192.0.2.1 family-allowed in-open ")
A, B, C = "192.0.2.1/32", "192.0.2.2/32", "192.0.2.3/32"


@dataclass
class ExabgpRib:
    """What ExaBGP holds, kept from the commands it accepted (survives relay reconnects)."""

    routes: dict[str, str] = field(default_factory=dict)  # prefix -> " med M" or ""
    accepted: list[str] = field(default_factory=list)
    reject_next: int = 0

    def answer(self, cmd: str) -> str:
        if cmd.startswith("show "):
            return "done"
        if self.reject_next:
            self.reject_next -= 1
            return "error"
        words = cmd.split()
        if "nlri" in words:
            prefixes = words[words.index("nlri") + 1:]
        else:
            prefixes = [words[words.index("route") + 1]]
        for prefix in prefixes:
            if "withdraw" in words:
                self.routes.pop(prefix, None)
            else:
                self.routes[prefix] = f" med {words[words.index('med') + 1]}" if "med" in words \
                    else ""
        self.accepted.append(cmd)
        return "done"

    def lines(self) -> list[str]:
        return [f"{HEADER}ipv4 unicast {p} next-hop 10.0.0.2{extra}"
                for p, extra in sorted(self.routes.items())]


class RibExabgp(ScriptedExabgp):
    """A relay connection to the shared ExabgpRib."""

    def __init__(self, rib: ExabgpRib, pid: int) -> None:
        super().__init__(rib.answer, pid)
        self.rib = rib

    async def serve(self, path: Path) -> None:
        self.adj_rib_out = self.rib.lines()
        self.answer = self._answer
        await super().serve(path)

    def _answer(self, cmd: str) -> str:
        answer = self.rib.answer(cmd)
        self.adj_rib_out = self.rib.lines()
        return answer


class Side:
    """One speaker under the script; ``sent``, accepted commands, wake-ups."""

    woken = 0

    async def set_routes(self, routes: list[Route]) -> str:
        raise NotImplementedError

    def state(self) -> tuple[dict[RibKey, ResolvedAttributes], list[str], int]:
        raise NotImplementedError


class FakeSide(Side):
    def __init__(self) -> None:
        self.fake = FakeSpeaker(SETTINGS, on_resync=self._woken)

    def _woken(self) -> None:
        self.woken += 1

    async def set_routes(self, routes: list[Route]) -> str:
        return await outcome(self.fake.set_routes(routes))

    async def reject_next(self) -> None:
        self.fake.fail_next()

    async def disconnect(self) -> None:
        self.fake.disconnect()

    async def reconnect(self) -> None:
        self.fake.reconnect()

    async def restart(self) -> None:
        self.fake.restart()

    async def resync(self) -> str:
        return await outcome(self.fake.resync())

    def state(self) -> tuple[dict[RibKey, ResolvedAttributes], list[str], int]:
        return dict(self.fake.sent), list(self.fake.commands), self.woken


class RealSide(Side):
    def __init__(self, tmp_path: Path) -> None:
        self.speaker = ExabgpSpeaker(SETTINGS, tmp_path, on_resync=self._woken)
        self.rib = ExabgpRib()
        self.tasks: list[asyncio.Task[None]] = []
        self.relay: RibExabgp | None = None

    def _woken(self) -> None:
        self.woken += 1

    async def start(self) -> None:
        self.tasks.append(asyncio.create_task(self.speaker.run()))
        await until(self.speaker.socket_path.exists)
        await self._connect(4242)

    async def _connect(self, pid: int) -> None:
        woken = self.woken
        self.relay = RibExabgp(self.rib, pid)
        self.tasks.append(asyncio.create_task(self.relay.serve(self.speaker.socket_path)))
        await until(lambda: self.woken > woken)  # read back and reported

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await t

    async def set_routes(self, routes: list[Route]) -> str:
        return await outcome(self.speaker.set_routes(routes))

    async def reject_next(self) -> None:
        self.rib.reject_next += 1

    async def disconnect(self) -> None:
        assert self.relay is not None
        assert self.relay.writer is not None
        self.relay.writer.close()
        await until(lambda: not self.speaker.connected)

    async def reconnect(self) -> None:
        await self._connect(4242)

    async def restart(self) -> None:
        await self.disconnect()
        self.rib.routes.clear()
        await self._connect(5353)  # a new ExaBGP, an empty RIB

    async def resync(self) -> str:
        return await outcome(self.speaker.resync())

    def state(self) -> tuple[dict[RibKey, ResolvedAttributes], list[str], int]:
        return dict(self.speaker.sent), list(self.rib.accepted), self.woken


async def outcome(call: Awaitable[None]) -> str:
    try:
        await call
    except ActuatorError as exc:
        return type(exc).__name__
    return "ok"


Step = Callable[[Side], Awaitable[object]]


def routes(*prefixes: str, med: int | None = None) -> list[Route]:
    return [Route(p, Attributes(med=med)) for p in prefixes]


SCRIPT: list[tuple[str, Step]] = [
    ("announce A, B", lambda s: s.set_routes(routes(A, B))),
    ("steady state", lambda s: s.set_routes(routes(A, B))),
    ("rejected withdraw of B, A gets a MED",
     lambda s: _then(s.reject_next(), s.set_routes(routes(A, med=2)))),
    ("relay away", lambda s: s.disconnect()),
    ("set_routes fails, wish kept", lambda s: s.set_routes(routes(A, C, med=2))),
    ("reconnect: withdraw B only, no C", lambda s: s.reconnect()),
    ("the next pass announces C", lambda s: s.set_routes(routes(A, C, med=2))),
    ("wish shrinks while away", lambda s: _then(s.disconnect(), s.set_routes(routes(A, med=2)))),
    ("reconnect withdraws C", lambda s: s.reconnect()),
    ("ExaBGP restarts: nothing re-sent", lambda s: s.restart()),
    ("the next pass announces A", lambda s: s.set_routes(routes(A, med=2))),
    ("resync in step sends nothing", lambda s: s.resync()),
    ("partial failure", lambda s: _then(s.reject_next(), s.set_routes(routes(B, C)))),
    ("resync withdraws A", lambda s: s.resync()),
]


async def _then(first: Awaitable[None], second: Awaitable[str]) -> str:
    await first
    return await second


async def test_fake_and_real_speaker_keep_the_same_rib_through_the_same_script(
    tmp_path: Path,
) -> None:
    fake, real = FakeSide(), RealSide(tmp_path)
    await real.start()
    fake.fake.reconnect()  # the real one read back on its first connect
    try:
        for name, step in SCRIPT:
            fake_result, real_result = await step(fake), await step(real)
            assert fake_result == real_result, name
            assert fake.state() == real.state(), name
    finally:
        await real.stop()
    assert real.rib.routes == {B: "", C: ""}  # the last wish, A withdrawn by the resync


@pytest.mark.parametrize("synced", [True, False])
def test_fake_speaker_ever_synced_like_the_real_one(synced: bool) -> None:
    fake = FakeSpeaker(SETTINGS, synced=synced)
    assert fake.ever_synced is synced
    fake.reconnect()
    assert fake.ever_synced
