"""Issue 8, scenario 6: a late answer never matches the wrong command.

ExaBGP answers each command with ``done``/``error`` and no id. When the speaker gives up on a
command (timeout) it drops the connection, but the relay survives and forwards ExaBGP's
output to whichever connection is current: the late ``done`` must not reach the new
connection, where it would be taken as the answer to the read-back (an empty adj-rib-out
while ExaBGP still holds the route, which is then never withdrawn).

The real relay program runs here between the real speaker and a scripted ExaBGP that plays
the relay's stdin/stdout like ExaBGP 5 does: commands are run one after the other in the
order received (its asynchronous queue) and each is answered once.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from anycastd.bgp.speaker import ExabgpSpeaker
from anycastd.errors import TransientError
from anycastd.model import Route
from tests.unit.test_exabgp_speaker import SETTINGS, until

HEADER = ("neighbor 10.0.0.1 local-ip 10.0.0.2 local-as 65001 peer-as 65000 "
          "router-id 192.0.2.1 family-allowed in-open ")
#: ExaBGP 5.0.15's ``show neighbor summary`` header (exabgp/bgp/neighbor.py)
SUMMARY_HEADER = "Peer            AS        up/down state       |     #sent     #recvd"


class PipeExabgp:
    """ExaBGP as the relay sees it: commands on the relay's stdout, answers on its stdin.

    ``hold_next(word)`` delays the answer of the next command containing ``word`` until a
    later command has arrived (it then comes late: after the speaker gave up on it)."""

    def __init__(self) -> None:
        self.rib: dict[str, str] = {}
        self.received: list[str] = []
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._hold: str | None = None
        self._later = asyncio.Event()

    def hold_next(self, word: str) -> None:
        self._hold = word
        self._later.clear()

    async def read(self, stdout: asyncio.StreamReader) -> None:
        while line := await stdout.readline():
            cmd = line.decode().strip()
            self.received.append(cmd)
            self._later.set()
            await self._queue.put(cmd)

    async def answer(self, stdin: asyncio.StreamWriter) -> None:
        while True:
            cmd = await self._queue.get()
            out = self._run(cmd)
            if self._hold is not None and self._hold in cmd:
                self._hold = None
                self._later.clear()
                await self._later.wait()
            stdin.write("".join(f"{x}\n" for x in [*out, "done"]).encode())
            await stdin.drain()

    def _run(self, cmd: str) -> list[str]:
        words = cmd.split()
        if cmd == "show adj-rib out extensive":
            return [f"{HEADER}ipv4 unicast {p} next-hop 10.0.0.2" for p in sorted(self.rib)]
        if cmd == "show neighbor summary":
            return [SUMMARY_HEADER, "10.0.0.1        65000        0:01:00 established    1    1"]
        if "announce" in words:
            self.rib[words[words.index("route") + 1]] = cmd
        elif "withdraw" in words:
            self.rib.pop(words[words.index("route") + 1], None)
        return []


@contextlib.asynccontextmanager
async def relayed(
    speaker: ExabgpSpeaker, exa: PipeExabgp, *options: str
) -> AsyncIterator[None]:
    server = asyncio.create_task(speaker.run())
    await until(speaker.socket_path.exists)
    relay = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "anycastd.bgp.relay", *options, str(speaker.socket_path),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    assert relay.stdin is not None
    assert relay.stdout is not None
    tasks = [asyncio.create_task(exa.read(relay.stdout)),
             asyncio.create_task(exa.answer(relay.stdin))]
    try:
        await until(lambda: speaker.synced)
        yield
    finally:
        for t in (*tasks, server):
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await t
        relay.kill()
        await relay.wait()


async def test_a_late_done_does_not_answer_the_read_back_on_the_next_connection(
    tmp_path: Path,
) -> None:
    speaker = ExabgpSpeaker(SETTINGS, tmp_path, command_timeout=0.5)
    exa = PipeExabgp()
    async with relayed(speaker, exa):
        exa.hold_next("announce")
        # ExaBGP takes the route but answers only after the speaker gave up and reconnected
        with pytest.raises(TransientError):
            await speaker.set_routes([Route("192.0.2.53/32")])
        await until(lambda: exa.received.count("show adj-rib out extensive") >= 2)
        await until(lambda: speaker.synced)
        assert list(speaker.sent) == [("10.0.0.1", "192.0.2.53/32")]  # what ExaBGP holds
        await speaker.set_routes([])
        assert exa.rib == {}


class OtherHeaderExabgp(PipeExabgp):
    """An ExaBGP whose ``show neighbor summary`` starts with another header line."""

    def _run(self, cmd: str) -> list[str]:
        if cmd == "show neighbor summary":
            return ["Neighbor        AS        up/down state"]
        return super()._run(cmd)


async def test_a_barrier_answer_the_relay_cannot_recognise_does_not_wedge_it(
    tmp_path: Path,
) -> None:
    # If the barrier's answer is never recognised, the relay must not hold every command
    # forever (anycastd could then never withdraw): after its deadline it goes on.
    speaker = ExabgpSpeaker(SETTINGS, tmp_path, command_timeout=5.0)
    exa = OtherHeaderExabgp()
    async with relayed(speaker, exa, "--barrier-timeout", "0.3"):
        await speaker.set_routes([Route("192.0.2.53/32")])
        assert "192.0.2.53/32" in exa.rib
        await speaker.set_routes([])
        assert exa.rib == {}
