"""Issue 8, speaker side: the routing state never lies.

- Scenario 1: on its own (reconnect, session up, settings reload) the speaker only reads back
  and withdraws; announcements come only from a controller pass (``set_routes``), and the
  speaker wakes the controller (``on_resync``) after every read-back.
- Scenario 8: malformed read-back content never raises anything but an ActuatorError, and an
  unexpected exception in a background loop is reported (``on_fatal``) while the relay
  socket keeps being served, so the daemon can still withdraw through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import pytest

from anycastd.bgp.commands import parse_adj_rib_out
from anycastd.bgp.speaker import ExabgpSpeaker
from anycastd.core.rib import resolve
from anycastd.errors import TransientError
from anycastd.model import Attributes, ResolvedAttributes, Route
from tests.unit.test_exabgp_speaker import SETTINGS, ScriptedExabgp, running, state_line, until

HEADER = ("neighbor 10.0.0.1 local-ip 10.0.0.2 local-as 65001 peer-as 65000 "
          "router-id 192.0.2.1 family-allowed in-open ")


def held(prefix: str, extra: str = "") -> str:
    """One ``show adj-rib out extensive`` line for a route ExaBGP holds for 10.0.0.1."""
    return f"{HEADER}ipv4 unicast {prefix} next-hop 10.0.0.2{extra}"


def announces(exa: ScriptedExabgp) -> list[str]:
    return [c for c in exa.received if " announce " in f" {c}"]


# --- scenario 1 ---------------------------------------------------------------------------


async def test_a_reconnect_never_announces_a_route_the_controller_asked_for_earlier(
    tmp_path: Path,
) -> None:
    woken: list[str] = []
    speaker = ExabgpSpeaker(SETTINGS, tmp_path, on_resync=lambda: woken.append("resync"))
    # the relay is away: the announce fails and the speaker remembers the wish
    with pytest.raises(TransientError):
        await speaker.set_routes([Route("192.0.2.53/32")])
    exa = ScriptedExabgp()
    async with running(speaker, exa):
        await until(lambda: bool(woken))
        assert speaker.synced
    assert exa.received == ["show adj-rib out extensive"]
    assert announces(exa) == []
    assert speaker.sent == {}


async def test_a_reconnect_withdraws_what_is_held_but_no_longer_desired(tmp_path: Path) -> None:
    woken: list[str] = []
    speaker = ExabgpSpeaker(SETTINGS, tmp_path, on_resync=lambda: woken.append("resync"))
    with pytest.raises(TransientError):
        await speaker.set_routes([Route("192.0.2.1/32")])
    exa = ScriptedExabgp()
    # 192.0.2.1 held with other attributes: not re-announced by the speaker on its own;
    # 192.0.2.2 held but not desired: withdrawn
    exa.adj_rib_out = [held("192.0.2.1/32", " med 99"), held("192.0.2.2/32")]
    speaker._owned |= {"192.0.2.1/32", "192.0.2.2/32"}  # external mode: ours to manage
    async with running(speaker, exa):
        await until(lambda: bool(woken))
    assert exa.received == [
        "show adj-rib out extensive",
        "neighbor 10.0.0.1 withdraw route 192.0.2.2/32",
    ]
    assert list(speaker.sent) == [("10.0.0.1", "192.0.2.1/32")]


async def test_a_session_up_reads_back_and_wakes_the_controller_without_announcing(
    tmp_path: Path,
) -> None:
    woken: list[str] = []
    speaker = ExabgpSpeaker(SETTINGS, tmp_path, on_resync=lambda: woken.append("resync"))
    exa = ScriptedExabgp()
    async with running(speaker, exa):
        await until(lambda: len(woken) == 1)
        await speaker.set_routes([Route("192.0.2.53/32")])
        exa.adj_rib_out = []  # the peer's session restarted and ExaBGP lost the route
        await exa.event(state_line("10.0.0.1", "up"))
        await until(lambda: len(woken) == 2)
    assert announces(exa) == ["neighbor 10.0.0.1 announce route 192.0.2.53/32 next-hop self"]
    assert speaker.sent == {}  # what ExaBGP reported; the controller's pass re-announces


# --- scenario 8 ---------------------------------------------------------------------------


async def test_a_malformed_med_in_the_read_back_is_withdrawn_not_a_crash(tmp_path: Path) -> None:
    fatal: list[BaseException] = []
    woken: list[str] = []
    speaker = ExabgpSpeaker(SETTINGS, tmp_path, on_fatal=fatal.append,
                            on_resync=lambda: woken.append("resync"))
    exa = ScriptedExabgp()
    exa.adj_rib_out = [held("192.0.2.7/32", " med 1e3")]
    speaker._owned.add("192.0.2.7/32")
    async with running(speaker, exa):
        await until(lambda: bool(woken))
        await speaker.set_routes([])
    assert fatal == []
    # the route is known to be there even if its attributes are not: it is withdrawn
    assert exa.received[-1] == "neighbor 10.0.0.1 withdraw route 192.0.2.7/32"


def test_a_malformed_read_back_line_is_kept_as_a_route_that_matches_no_wish() -> None:
    problems: list[str] = []
    rib = parse_adj_rib_out(
        [held("192.0.2.7/32", " med x"), held("192.0.2.8/32", " local-preference -")],
        65001, problems=problems,
    )
    assert sorted(rib) == [("10.0.0.1", "192.0.2.7/32"), ("10.0.0.1", "192.0.2.8/32")]
    desired = resolve([Route("192.0.2.7/32")], SETTINGS)
    assert all(attrs != desired[("10.0.0.1", "192.0.2.7/32")] for attrs in rib.values())
    assert len(problems) == 2


class Broken(ExabgpSpeaker):
    """A speaker whose read-back has a bug (anything but an ActuatorError)."""

    async def _read_back(self) -> None:
        raise RuntimeError("bug in the read-back")


async def test_a_bug_in_the_resync_is_reported_and_the_socket_is_still_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    fatal: list[BaseException] = []
    speaker = Broken(SETTINGS, tmp_path, on_fatal=fatal.append)
    exa = ScriptedExabgp()
    task = asyncio.create_task(speaker.run())
    try:
        await until(speaker.socket_path.exists)
        client = asyncio.create_task(exa.serve(speaker.socket_path))
        await until(lambda: bool(fatal))
        assert not task.done()
        assert isinstance(fatal[0], RuntimeError)
        record = next(r for r in caplog.records if r.getMessage() == "speaker_task_failed")
        assert record.levelno == logging.CRITICAL
        assert record.exc_info is not None
        # the daemon's fail-closed withdraw still reaches ExaBGP through the relay
        speaker._sent = {("10.0.0.1", "192.0.2.53/32"): ResolvedAttributes("self")}
        speaker._desired_known = True
        await speaker.set_routes([])
        assert exa.received[-1] == "neighbor 10.0.0.1 withdraw route 192.0.2.53/32"
        # and a relay that reconnects is still served
        second = ScriptedExabgp()
        assert exa.writer is not None
        exa.writer.close()
        client2 = asyncio.create_task(second.serve(speaker.socket_path))
        await until(lambda: len(fatal) == 2)
        assert speaker.connected
        await speaker.set_routes([Route("192.0.2.54/32", Attributes(med=1))])
        assert second.received[-1] == (
            "neighbor 10.0.0.1 announce route 192.0.2.54/32 next-hop self med 1")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for c in (client, client2):
        c.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await c
