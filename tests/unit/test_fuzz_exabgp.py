"""Fuzzed ExaBGP API input (issue 13): garbage, partial lines, very long lines and unknown
JSON, into the speaker (a real ``ExabgpSpeaker`` on a real unix socket pair, as the relay
would send them) and into the relay program (on ExaBGP's side, stdin, and on anycastd's side,
the socket). Everything is survived: no exception out of the speaker's connection (so no
fail-closed stop for a malformed line), the relay process never dies.

Examples per run: ``ANYCASTD_FUZZ_EXAMPLES`` (default 200)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anycastd.bgp.relay import HOLD_COMMAND, parse_route_command
from anycastd.bgp.speaker import ExabgpSpeaker
from anycastd.model import BgpSettings, Neighbor
from tests.integration.fault_support import record_section

EXAMPLES = int(os.environ.get("ANYCASTD_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
SETTINGS = BgpSettings(router_id="192.0.2.1", local_as=65001, mode="external",
                       neighbors=(Neighbor("127.0.0.2", 65000, "127.0.0.1", "r1"),))

JSONS = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=4),
    max_leaves=10,
)
STATE_EVENTS = st.builds(
    lambda peer, state, reason, typ: {"type": typ, "neighbor": {
        "address": {"peer": peer}, "state": state, "reason": reason}},
    JSONS, JSONS, JSONS, st.sampled_from(["state", "update", "notification", 7]),
)
LINES = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")),
    JSONS.map(lambda v: json.dumps(v).encode()),
    STATE_EVENTS.map(lambda v: json.dumps(v).encode()),
    st.sampled_from([b"done", b"error", b"{", b"{}", b"{\"type\": \"state\"}",
                     b"Peer            AS        up/down state", b"relay hello x",
                     b"relay hold nan", b"relay hold -1", b"relay hold 1e999",
                     b"neighbor 1.2.3.4 announce route 10.0.0.0/8 next-hop self"]),
    st.sampled_from([70_000, 300_000]).map(lambda n: b"x" * n),  # over a stream's limit
)
CHUNKS = st.lists(st.tuples(LINES, st.booleans()), max_size=12).map(
    # each line with or without its newline: partial lines run into the next one
    lambda items: b"".join(line + (b"\n" if nl else b"") for line, nl in items))


# -- the speaker ----------------------------------------------------------------------------


def test_the_speaker_survives_any_relay_input(tmp_path: Path) -> None:
    fatal: list[BaseException] = []
    counts = {"examples": 0, "bytes": 0}
    speaker = ExabgpSpeaker(SETTINGS, tmp_path, on_fatal=fatal.append)

    async def one(data: bytes) -> None:
        ours, theirs = socket.socketpair()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        theirs.setblocking(False)
        loop = asyncio.get_running_loop()
        served = loop.create_task(speaker._on_connect(reader, writer))
        try:
            await loop.sock_sendall(theirs, b"relay hello 4242 hold\n" + data)
            theirs.shutdown(socket.SHUT_WR)
        except OSError:  # the speaker closed first (a line over its limit): fine
            pass
        async with asyncio.timeout(10):
            await served  # returns on EOF (or a line over the limit): never raises
        theirs.close()

    @FUZZ
    @given(CHUNKS)
    def run(data: bytes) -> None:
        asyncio.run(one(data))
        counts["examples"] += 1
        counts["bytes"] += len(data)

    run()
    assert fatal == []
    assert all(p.address == "127.0.0.2" for p in speaker.peers.values())
    record_section("fuzz", "ExaBGP API: relay lines into the speaker", counts)


# -- the relay's parsers ------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=300) | LINES)
def test_route_command_parser_never_raises_and_returns_only_prefixes(line: bytes) -> None:
    parsed = parse_route_command(line)
    if parsed is not None:
        verb, neighbors, prefixes = parsed
        assert verb in ("announce", "withdraw")
        assert neighbors
        assert all("/" in p and " " not in p for p in prefixes)


# -- the relay program ------------------------------------------------------------------------


class RelayProcess:
    def __init__(self, tmp: Path) -> None:
        self.path = tmp / "s.sock"
        self.srv = socket.socket(socket.AF_UNIX)
        self.srv.bind(str(self.path))
        self.srv.listen()
        self.srv.settimeout(10)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "anycastd.bgp.relay", "--barrier-timeout", "0.2",
             "--hold", "0.5", str(self.path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.written = 0
        threading.Thread(target=self._drain, daemon=True).start()
        self.conn, _ = self.srv.accept()
        self.conn.settimeout(2)
        threading.Thread(target=self._drain_conn, daemon=True).start()

    def _drain(self) -> None:  # ExaBGP always reads the relay's commands
        assert self.proc.stdout is not None
        while chunk := self.proc.stdout.read1(65536):
            self.written += len(chunk)

    def _drain_conn(self) -> None:
        conn = self.conn
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass

    def feed(self, stdin: bytes, sock: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(stdin)
        self.proc.stdin.flush()
        try:
            self.conn.sendall(sock)
        except OSError:  # the relay dropped us (e.g. a command held too long): reconnect
            self.conn.close()
            self.conn, _ = self.srv.accept()
            self.conn.settimeout(2)
            threading.Thread(target=self._drain_conn, daemon=True).start()

    def stop(self) -> int | None:
        rc = self.proc.poll()
        if rc is None:
            self.proc.kill()
        self.proc.wait()
        self.conn.close()
        self.srv.close()
        return rc


def test_the_relay_survives_any_input_on_either_side(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path)
    counts: dict[str, Any] = {"examples": 0, "bytes": 0}
    try:
        @FUZZ
        @given(CHUNKS, CHUNKS)
        def run(stdin: bytes, sock: bytes) -> None:
            relay.feed(stdin, sock)
            assert relay.proc.poll() is None
            counts["examples"] += 1
            counts["bytes"] += len(stdin) + len(sock)

        run()
        # still alive and still a relay: a fresh connection gets its hello
        time.sleep(0.3)
        assert relay.proc.poll() is None
        relay.conn.close()
        conn, _ = relay.srv.accept()
        conn.settimeout(5)
        assert conn.recv(100).startswith(b"relay hello ")
        conn.sendall(HOLD_COMMAND + b"7\n")
        conn.close()
    finally:
        rc = relay.stop()
    assert rc is None, "the relay died"
    record_section("fuzz", "ExaBGP API: garbage into the relay (both sides)", counts)
