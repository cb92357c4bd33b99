"""The speaker's side of issue 13, against a scripted relay on a real socket pair: it tells
the relay its dead-man hold, and (managed mode, graceful restart) sends End-of-RIB only when
the controller's pass has ended -- an End-of-RIB ExaBGP refuses does not fail the pass."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

from anycastd.bgp.speaker import ExabgpSpeaker
from anycastd.model import BgpSettings, Neighbor, Route

SETTINGS = BgpSettings(router_id="192.0.2.1", local_as=65001, mode="managed",
                       graceful_restart=5, relay_hold=7.5,
                       neighbors=(Neighbor("10.0.0.1", 65000, "10.0.0.2", "r1"),))


def up_event(peer: str, state: str = "up") -> bytes:
    return json.dumps({"type": "state", "neighbor": {"address": {"peer": peer},
                                                     "state": state}}).encode() + b"\n"


LOOPS: list[asyncio.Task[None]] = []


class Relay:
    """Plays the relay: reads the speaker's lines, answers each command as told."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def line(self) -> str:
        async with asyncio.timeout(5):
            return (await self.reader.readline()).decode().strip()

    def send(self, data: bytes) -> None:
        self.writer.write(data)


async def _session(tmp_path: Path) -> tuple[ExabgpSpeaker, Relay, asyncio.Task[None]]:
    speaker = ExabgpSpeaker(SETTINGS, tmp_path)
    # what run() starts besides ExaBGP and the socket: the read-back loop
    loop_task = asyncio.get_running_loop().create_task(speaker._resync_loop())
    LOOPS.append(loop_task)
    ours, theirs = socket.socketpair()
    s_reader, s_writer = await asyncio.open_unix_connection(sock=ours)
    r_reader, r_writer = await asyncio.open_unix_connection(sock=theirs)
    served = asyncio.get_running_loop().create_task(speaker._on_connect(s_reader, s_writer))
    relay = Relay(r_reader, r_writer)
    relay.send(b"relay hello 4242 hold\n")
    return speaker, relay, served


async def test_the_hold_is_told_and_end_of_rib_follows_the_pass(tmp_path: Path) -> None:
    speaker, relay, served = await _session(tmp_path)
    assert await relay.line() == "relay hold 7.5"
    assert await relay.line() == "show adj-rib out extensive"  # the connect's read-back
    relay.send(b"done\n")
    relay.send(up_event("10.0.0.1"))
    assert await relay.line() == "show adj-rib out extensive"  # the session's read-back
    relay.send(b"done\n")
    await asyncio.sleep(0.05)

    # the controller's pass: the announce first, then End-of-RIB when the pass ends
    passed = asyncio.get_running_loop().create_task(
        speaker.set_routes([Route("192.0.2.53/32")]))
    assert (await relay.line()).startswith("neighbor 10.0.0.1 announce route 192.0.2.53/32")
    relay.send(b"done\n")
    await passed
    ended = asyncio.get_running_loop().create_task(speaker.end_of_pass())
    assert await relay.line() == "neighbor 10.0.0.1 announce eor ipv4 unicast"
    relay.send(b"done\n")
    await ended
    # owed once per session: the next pass sends nothing at all
    await speaker.set_routes([Route("192.0.2.53/32")])
    await speaker.end_of_pass()

    # the session flaps; by the pass, ExaBGP has no established session: "error"
    relay.send(up_event("10.0.0.1", "down") + up_event("10.0.0.1"))
    assert await relay.line() == "show adj-rib out extensive"
    relay.send(b"neighbor 10.0.0.1 local-ip 10.0.0.2 local-as 65001 peer-as 65000 router-id "
               b"192.0.2.1 family-allowed in-open ipv4 unicast 192.0.2.53/32 next-hop 10.0.0.2\n"
               b"done\n")
    await asyncio.sleep(0.05)
    await speaker.set_routes([Route("192.0.2.53/32")])  # ExaBGP holds it: nothing to send
    ended = asyncio.get_running_loop().create_task(speaker.end_of_pass())
    assert await relay.line() == "neighbor 10.0.0.1 announce eor ipv4 unicast"
    relay.send(b"error\n")
    await ended  # did not raise: the pass did its work
    relay.writer.close()
    async with asyncio.timeout(5):
        await served
    LOOPS.pop().cancel()


async def test_a_session_that_went_down_owes_no_end_of_rib(tmp_path: Path) -> None:
    speaker, relay, served = await _session(tmp_path)
    assert await relay.line() == "relay hold 7.5"
    assert await relay.line() == "show adj-rib out extensive"
    relay.send(b"done\n")
    relay.send(up_event("10.0.0.1"))
    assert await relay.line() == "show adj-rib out extensive"
    relay.send(b"done\n")
    relay.send(up_event("10.0.0.1", "down"))
    await asyncio.sleep(0.05)
    await speaker.set_routes([])  # nothing to send, no End-of-RIB owed
    await speaker.end_of_pass()
    # the next line ExaBGP reads is the next pass's announce, no End-of-RIB before it
    passed = asyncio.get_running_loop().create_task(
        speaker.set_routes([Route("192.0.2.53/32")]))
    assert (await relay.line()).startswith("neighbor 10.0.0.1 announce route 192.0.2.53/32")
    relay.send(b"done\n")
    await passed
    relay.writer.close()
    async with asyncio.timeout(5):
        await served
    LOOPS.pop().cancel()
