"""The speaker's protocol client against a scripted ExaBGP on the relay socket (no ExaBGP)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from anycastd.bgp.client import CommandError
from anycastd.bgp.protocol import PeerState, Speaker
from anycastd.bgp.speaker import ExabgpSpeaker
from anycastd.bgp.supervisor import log_exabgp_line
from anycastd.errors import PermanentError, TransientError
from anycastd.model import Attributes, BgpSettings, Neighbor, Route
from anycastd.testing.exabgp import FakeSpeaker

SETTINGS = BgpSettings(
    router_id="192.0.2.1", local_as=65001, mode="external",
    neighbors=(Neighbor("10.0.0.1", 65000, "10.0.0.2", "r1"),),
)


def state_line(peer: str, state: str) -> str:
    return json.dumps({"type": "state", "neighbor": {"address": {"local": "10.0.0.2",
                                                                "peer": peer}, "state": state}})


class ScriptedExabgp:
    """Connects like the relay; answers like ExaBGP (adj-rib-out kept from the commands)."""

    def __init__(self, answer: Callable[[str], str] | None = None, pid: int = 4242) -> None:
        self.pid = pid
        self.received: list[str] = []
        self.answer = answer or (lambda _cmd: "done")
        self.adj_rib_out: list[str] = []
        self.writer: asyncio.StreamWriter | None = None

    async def serve(self, path: Path) -> None:
        reader, writer = await asyncio.open_unix_connection(str(path))
        self.writer = writer
        writer.write(b"relay hello %d\n" % self.pid)
        while line := await reader.readline():
            cmd = line.decode().strip()
            self.received.append(cmd)
            answer = self.answer(cmd)
            if answer == "silent":
                continue
            if cmd == "show adj-rib out extensive":
                writer.write("".join(f"{x}\n" for x in self.adj_rib_out).encode())
            writer.write(f"{answer}\n".encode())
            await writer.drain()

    async def event(self, line: str) -> None:
        assert self.writer is not None
        self.writer.write(line.encode() + b"\n")
        await self.writer.drain()


async def until(predicate: Callable[[], bool], limit: float = 5.0) -> None:
    """Poll a plain attribute of the fake (no event to wait on)."""
    async with asyncio.timeout(limit):
        while not predicate():
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(speaker: ExabgpSpeaker, exa: ScriptedExabgp) -> AsyncIterator[None]:
    task = asyncio.create_task(speaker.run())
    for _ in range(100):
        if speaker.socket_path.exists():
            break
        await asyncio.sleep(0.01)
    client = asyncio.create_task(exa.serve(speaker.socket_path))
    async with asyncio.timeout(5):
        await speaker.wait_connected()
    await until(lambda: "show adj-rib out extensive" in exa.received)
    try:
        yield
    finally:
        task.cancel()
        client.cancel()
        for t in (task, client):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await t


async def test_changes_are_sent_once_and_steady_state_sends_nothing(tmp_path: Path) -> None:
    speaker = ExabgpSpeaker(SETTINGS, tmp_path)
    exa = ScriptedExabgp()
    async with running(speaker, exa):
        routes = [Route("192.0.2.53/32", Attributes(med=10))]
        await speaker.set_routes(routes)
        await speaker.set_routes(routes)
        await speaker.set_routes([])
    assert exa.received[1:] == [
        "neighbor 10.0.0.1 announce route 192.0.2.53/32 next-hop self med 10",
        "neighbor 10.0.0.1 withdraw route 192.0.2.53/32",
    ]


async def test_error_answer_raises_permanent_error_naming_the_command(tmp_path: Path) -> None:
    speaker = ExabgpSpeaker(SETTINGS, tmp_path)
    exa = ScriptedExabgp(lambda cmd: "error" if "announce" in cmd else "done")
    async with running(speaker, exa):
        with pytest.raises(CommandError) as info:
            await speaker.set_routes([Route("192.0.2.53/32")])
    assert isinstance(info.value, PermanentError)
    assert info.value.command == "neighbor 10.0.0.1 announce route 192.0.2.53/32 next-hop self"
    assert speaker.sent == {}


async def test_unanswered_command_times_out_as_transient(tmp_path: Path) -> None:
    speaker = ExabgpSpeaker(SETTINGS, tmp_path, command_timeout=0.2)
    exa = ScriptedExabgp(lambda cmd: "silent" if "announce" in cmd else "done")
    async with running(speaker, exa):
        with pytest.raises(TransientError):
            await speaker.set_routes([Route("192.0.2.53/32")])
        assert not speaker.connected


async def test_an_announce_left_unanswered_counts_as_announced_until_read_back(
    tmp_path: Path,
) -> None:
    # ExaBGP may still act on a command it has not answered: until a read-back says
    # otherwise the controller must see the route as announced (so it withdraws it before
    # it takes the address away). Review finding on issue 8.
    speaker = ExabgpSpeaker(SETTINGS, tmp_path, command_timeout=0.2)
    exa = ScriptedExabgp(lambda cmd: "silent" if "announce" in cmd else "done")
    async with running(speaker, exa):
        with pytest.raises(TransientError):
            await speaker.set_routes([Route("192.0.2.53/32")])
    assert ("10.0.0.1", "192.0.2.53/32") in speaker.sent


async def test_a_rejected_announce_is_not_counted_as_announced(tmp_path: Path) -> None:
    speaker = ExabgpSpeaker(SETTINGS, tmp_path)
    exa = ScriptedExabgp(lambda cmd: "error" if "announce" in cmd else "done")
    async with running(speaker, exa):
        with pytest.raises(CommandError):
            await speaker.set_routes([Route("192.0.2.53/32")])
        assert speaker.sent == {}


async def test_not_connected_is_transient_and_the_wish_waits_for_the_next_pass(
    tmp_path: Path,
) -> None:
    # Issue 8: the speaker never announces on its own (the wish may be stale by the time
    # the relay is back); it reports the read-back and the controller's pass sends it.
    woken: list[str] = []
    speaker = ExabgpSpeaker(SETTINGS, tmp_path, on_resync=lambda: woken.append("resync"))
    with pytest.raises(TransientError):
        await speaker.set_routes([Route("192.0.2.53/32")])
    exa = ScriptedExabgp()
    async with running(speaker, exa):
        await until(lambda: bool(woken))
        assert exa.received == ["show adj-rib out extensive"]
        await speaker.set_routes([Route("192.0.2.53/32")])
    assert exa.received[1:] == ["neighbor 10.0.0.1 announce route 192.0.2.53/32 next-hop self"]


async def test_reconnect_reads_adj_rib_out_and_the_next_pass_sends_only_the_difference(
    tmp_path: Path,
) -> None:
    woken: list[str] = []
    speaker = ExabgpSpeaker(SETTINGS, tmp_path, on_resync=lambda: woken.append("resync"))
    routes = [Route("192.0.2.1/32"), Route("192.0.2.2/32")]
    with contextlib.suppress(TransientError):
        await speaker.set_routes(routes)
    exa = ScriptedExabgp()
    exa.adj_rib_out = [
        "neighbor 10.0.0.1 local-ip 10.0.0.2 local-as 65001 peer-as 65000 router-id 192.0.2.1 "
        "family-allowed in-open ipv4 unicast 192.0.2.1/32 next-hop 10.0.0.2",
        # a route of the operator's own config: not ours, left alone (external mode)
        "neighbor 10.0.0.1 local-ip 10.0.0.2 local-as 65001 peer-as 65000 router-id 192.0.2.1 "
        "family-allowed in-open ipv4 unicast 198.51.100.0/24 next-hop 10.0.0.2",
    ]
    async with running(speaker, exa):
        await until(lambda: bool(woken))
        assert exa.received == ["show adj-rib out extensive"]  # nothing sent on its own
        await speaker.set_routes(routes)
    assert exa.received == [
        "show adj-rib out extensive",
        "neighbor 10.0.0.1 announce route 192.0.2.2/32 next-hop self",
    ]


async def test_peer_state_events_update_the_mapping_and_call_back(tmp_path: Path) -> None:
    seen: list[PeerState] = []
    speaker = ExabgpSpeaker(SETTINGS, tmp_path, on_peer_change=seen.append)
    exa = ScriptedExabgp()
    async with running(speaker, exa):
        await exa.event(state_line("10.0.0.1", "up"))
        await until(lambda: speaker.peers["10.0.0.1"].up)
        # an "up" makes the speaker check the adj-rib-out again
        await until(lambda: exa.received.count("show adj-rib out extensive") >= 2)
        await exa.event(state_line("10.0.0.1", "down"))
        await until(lambda: not speaker.peers["10.0.0.1"].up)
    assert [(p.name, p.up) for p in seen] == [("r1", True), ("r1", False)]


async def test_fake_speaker_records_the_rib_and_injects_errors() -> None:
    fake = FakeSpeaker(SETTINGS)
    await fake.set_routes([Route("192.0.2.53/32", Attributes(med=5))])
    assert fake.announced["192.0.2.53/32"].med == 5
    fake.fail_next()
    with pytest.raises(PermanentError):
        await fake.set_routes([])
    assert "192.0.2.53/32" in fake.announced
    await fake.resync()
    assert fake.announced == {}
    fake.disconnect()
    with pytest.raises(TransientError):
        await fake.set_routes([Route("192.0.2.53/32")])


async def test_config_rejected_by_exabgp_is_a_permanent_error_with_its_message(
    tmp_path: Path,
) -> None:
    exabgp = str(Path(sys.executable).parent / "exabgp")
    bad = BgpSettings(router_id="192.0.2.1", local_as=65001, exabgp=exabgp,
                      neighbors=(Neighbor("10.0.0.1", 65000, "10.0.0.2", hold_time=1),))
    speaker = ExabgpSpeaker(bad, tmp_path, relay_argv=["/bin/cat"])
    with pytest.raises(PermanentError, match="hold-time") as info:
        await speaker.validate()
    assert "holdtime must be zero or at least 3 seconds" in str(info.value)
    # the rejected candidate never replaces the live config
    assert not speaker.config_path.exists()


def test_exabgp_log_lines_become_structured_records(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="anycastd.exabgp")
    log_exabgp_line(b"reactor         connected to peer-1 with outgoing-2 10.0.0.2-10.0.0.1\n", 77)
    log_exabgp_line(b"outgoing-1      Connection failed: [Errno 111]\n", 77)
    first, second = caplog.records
    assert first.getMessage() == "connected to peer-1 with outgoing-2 10.0.0.2-10.0.0.1"
    assert (first.exabgp_source, first.exabgp_pid, first.levelno) == (  # type: ignore[attr-defined]
        "reactor", 77, logging.INFO)
    assert second.levelno == logging.WARNING


async def test_fake_speaker_is_a_speaker_and_follows_settings_changes() -> None:
    fake: Speaker = FakeSpeaker(SETTINGS)
    await fake.set_routes([Route("192.0.2.53/32")])
    two = replace(SETTINGS, neighbors=(*SETTINGS.neighbors, Neighbor("10.0.1.1", 65010)))
    await fake.update_settings(two)
    assert isinstance(fake, FakeSpeaker)
    assert sorted(fake.rib) == [("10.0.0.1", "192.0.2.53/32")]  # never announces on its own
    await fake.set_routes([Route("192.0.2.53/32")])  # the controller's pass after on_resync
    assert sorted(fake.rib) == [("10.0.0.1", "192.0.2.53/32"), ("10.0.1.1", "192.0.2.53/32")]
    assert set(fake.peers) == {"10.0.0.1", "10.0.1.1"}


@pytest.mark.parametrize(("second_pid", "expected"), [
    (4242, [("r1", True)]),  # relay respawned by the same ExaBGP: the session never dropped
    (5353, [("r1", True), ("r1", False), ("r1", True)]),  # a new ExaBGP: new sessions
])
async def test_relay_reconnect_keeps_peer_state_only_for_the_same_exabgp(
    tmp_path: Path, second_pid: int, expected: list[tuple[str, bool]]
) -> None:
    seen: list[PeerState] = []
    speaker = ExabgpSpeaker(SETTINGS, tmp_path, on_peer_change=seen.append)
    first = ScriptedExabgp()
    async with running(speaker, first):
        await first.event(state_line("10.0.0.1", "up"))
        await until(lambda: speaker.peers["10.0.0.1"].up)
        assert first.writer is not None
        first.writer.close()
        await until(lambda: not speaker.connected)
        second = ScriptedExabgp(pid=second_pid)
        client = asyncio.create_task(second.serve(speaker.socket_path))
        try:
            await until(lambda: speaker.connected and second.writer is not None)
            await second.event(state_line("10.0.0.1", "up"))  # the relay's replay
            await until(lambda: speaker.peers["10.0.0.1"].up)
        finally:
            client.cancel()
    assert [(p.name, p.up) for p in seen] == expected


async def test_a_client_that_is_not_a_relay_is_turned_away(tmp_path: Path) -> None:
    speaker = ExabgpSpeaker(SETTINGS, tmp_path, command_timeout=0.5)
    exa = ScriptedExabgp()
    async with running(speaker, exa):
        reader, writer = await asyncio.open_unix_connection(str(speaker.socket_path))
        writer.write(b"GET / HTTP/1.0\n")
        assert await reader.read() == b""
        writer.close()
        await speaker.set_routes([Route("192.0.2.53/32")])
    assert exa.received[-1] == "neighbor 10.0.0.1 announce route 192.0.2.53/32 next-hop self"


async def test_synced_only_after_the_adj_rib_out_was_read_back(tmp_path: Path) -> None:
    # Start-up adoption waits for `synced`: before the read-back, `sent` says nothing.
    answers: dict[str, str] = {"show adj-rib out extensive": "silent"}
    exa = ScriptedExabgp(answer=lambda cmd: answers.get(cmd, "done"))
    speaker = ExabgpSpeaker(SETTINGS, tmp_path)
    task = asyncio.create_task(speaker.run())
    try:
        await until(speaker.socket_path.exists)
        client = asyncio.create_task(exa.serve(speaker.socket_path))
        async with asyncio.timeout(5):
            await speaker.wait_connected()
        await until(lambda: "show adj-rib out extensive" in exa.received)
        assert speaker.connected
        assert not speaker.synced  # the read-back is unanswered
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    client.cancel()
    with contextlib.suppress(asyncio.CancelledError, OSError):
        await client


async def test_synced_after_a_connect_and_read_back(tmp_path: Path) -> None:
    exa = ScriptedExabgp()
    speaker = ExabgpSpeaker(SETTINGS, tmp_path)
    assert not speaker.synced
    async with running(speaker, exa):
        await until(lambda: speaker.synced)
        assert speaker.synced
