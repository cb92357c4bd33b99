"""The relay's dead-man timer (issue 13): anycastd gone for the hold -> its routes withdrawn;
back within the hold -> nothing written to ExaBGP."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from anycastd.bgp.relay import BARRIER, parse_route_command, withdraw_commands

RELAY = [sys.executable, "-m", "anycastd.bgp.relay"]
SUMMARY = (b"Peer            AS        up/down state       |     #sent     #recvd\n"
           b"10.0.0.1        65000        0:01:00 established    1    1\n")


@pytest.mark.parametrize(
    ("line", "parsed"),
    [
        (b"announce route 192.0.2.1/32 next-hop self\n", ("announce", ["*"], ["192.0.2.1/32"])),
        (b"neighbor 10.0.0.1, neighbor 10.0.1.1 announce attributes next-hop self med 5 "
         b"nlri 192.0.2.1/32 192.0.2.2/32\n",
         ("announce", ["10.0.0.1", "10.0.1.1"], ["192.0.2.1/32", "192.0.2.2/32"])),
        (b"neighbor fd00::1 withdraw route 2001:db8::1/128\n",
         ("withdraw", ["fd00::1"], ["2001:db8::1/128"])),
        (b"withdraw attributes next-hop self nlri 192.0.2.1/32 192.0.2.2/32",
         ("withdraw", ["*"], ["192.0.2.1/32", "192.0.2.2/32"])),
        (b"show adj-rib out extensive\n", None),
        (b"announce\n", None),
        (b"neighbor\n", None),
        (b"announce attributes next-hop self\n", None),
        (b"\xff\xfe announce route x\n", None),
    ],
)
def test_route_commands_are_parsed_as_anycastd_writes_them(
    line: bytes, parsed: tuple[str, list[str], list[str]] | None,
) -> None:
    assert parse_route_command(line) == parsed


def test_withdraws_are_packed_per_family_and_neighbor_set() -> None:
    assert withdraw_commands({
        "192.0.2.1/32": {"*"}, "2001:db8::1/128": {"*"}, "192.0.2.2/32": {"*", "10.0.0.1"},
        "192.0.2.3/32": {"10.0.0.2", "10.0.0.1"}, "192.0.2.4/32": {"10.0.0.1", "10.0.0.2"},
    }) == [
        b"withdraw attributes next-hop self nlri 192.0.2.1/32 192.0.2.2/32\n",
        b"neighbor 10.0.0.1, neighbor 10.0.0.2 withdraw attributes next-hop self nlri "
        b"192.0.2.3/32 192.0.2.4/32\n",
        b"withdraw route 2001:db8::1/128\n",
    ]
    assert withdraw_commands({}) == []


class FakeExabgp:
    """The relay run as ExaBGP runs it; this side plays ExaBGP (its stdin/stdout)."""

    def __init__(self, sock: Path, *args: str) -> None:
        self.proc = subprocess.Popen([*RELAY, *args, str(sock)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        self._buf = b""

    def feed(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def line(self, timeout: float = 5.0) -> bytes | None:
        """The next line the relay wrote to ExaBGP, or None after ``timeout``."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.proc.stdout], [], [], left)
            if ready:
                chunk = self.proc.stdout.read()
                if not chunk:
                    return None
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line + b"\n"

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace")


class Anycastd:
    """The listening side of the socket: gone means no listener (connect refused)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.srv: socket.socket | None = None
        self.start()

    def start(self) -> None:
        self.path.unlink(missing_ok=True)
        self.srv = socket.socket(socket.AF_UNIX)
        self.srv.bind(str(self.path))
        self.srv.listen()
        self.srv.settimeout(10)

    def die(self, conn: socket.socket) -> None:
        conn.close()
        if self.srv is not None:
            self.srv.close()
            self.srv = None

    def accept(self) -> tuple[socket.socket, object]:
        assert self.srv is not None
        return self.srv.accept()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Anycastd]:
    srv = Anycastd(tmp_path / "s.sock")
    yield srv
    if srv.srv is not None:
        srv.srv.close()


def connect(server: Anycastd, relay: FakeExabgp) -> socket.socket:
    conn, _ = server.accept()
    conn.settimeout(5)
    hello = conn.recv(4096)
    assert hello.startswith(b"relay hello ")
    assert hello.split()[3] == b"hold"
    return conn


def announce_through(conn: socket.socket, relay: FakeExabgp, command: bytes,
                     *, barrier: bool) -> None:
    conn.sendall(command)
    if barrier:
        assert relay.line() == BARRIER
        relay.feed(SUMMARY + b"done\n")
    assert relay.line() == command
    relay.feed(b"done\n")
    assert conn.recv(100) == b"done\n"


def test_anycastd_gone_for_the_hold_gets_its_routes_withdrawn(
    tmp_path: Path, server: Anycastd,
) -> None:
    # anycastd's record names all three; 192.0.2.2/32 went through this relay and was
    # withdrawn: it is not withdrawn again (from every neighbor: the operator's routes)
    Path(f"{tmp_path / 's.sock'}.owned").write_text(
        json.dumps(["192.0.2.1/32", "192.0.2.2/32", "2001:db8::1/128"]))
    relay = FakeExabgp(tmp_path / "s.sock", "--hold", "30")
    try:
        conn = connect(server, relay)
        conn.sendall(b"relay hold 0.5\n")  # anycastd's [bgp] relay_hold, in-band
        announce_through(conn, relay, b"neighbor 10.0.0.1 announce attributes next-hop self "
                         b"nlri 192.0.2.1/32 192.0.2.2/32\n", barrier=True)
        announce_through(conn, relay, b"neighbor 10.0.0.1 withdraw route 192.0.2.2/32\n",
                         barrier=False)
        announce_through(conn, relay, b"announce route 2001:db8::1/128 next-hop self\n",
                         barrier=False)
        gone = time.monotonic()
        server.die(conn)
        # the in-band hold line was never passed to ExaBGP; what is still announced goes,
        # from the neighbors it went to
        assert relay.line(timeout=10) == b"neighbor 10.0.0.1 withdraw route 192.0.2.1/32\n"
        assert relay.line() == b"withdraw route 2001:db8::1/128\n"
        waited = time.monotonic() - gone
        assert 0.45 <= waited < 5
        # ExaBGP answers; nobody is owed them. The relay lives on, and the next anycastd
        # first gets a barrier (the two answers must not reach it)
        relay.feed(b"done\ndone\n")
        assert relay.line(timeout=1.0) is None
        assert relay.proc.poll() is None
        server.start()
        conn = connect(server, relay)
        conn.sendall(b"show adj-rib out extensive\n")
        assert relay.line() == BARRIER
        relay.feed(SUMMARY + b"done\n")
        assert relay.line() == b"show adj-rib out extensive\n"
        relay.feed(b"done\n")
        assert conn.recv(100) == b"done\n"
    finally:
        err = relay.stop()
    assert "withdrew 2 prefixes (fail closed)" in err


def test_anycastd_back_within_the_hold_changes_nothing(
    tmp_path: Path, server: Anycastd,
) -> None:
    relay = FakeExabgp(tmp_path / "s.sock", "--hold", "1.5")
    try:
        conn = connect(server, relay)
        announce_through(conn, relay, b"announce route 192.0.2.1/32 next-hop self\n",
                         barrier=True)
        for _ in range(3):  # three restarts, each well within the hold
            server.die(conn)
            time.sleep(0.5)
            server.start()
            conn = connect(server, relay)
        # the hold has long run out since the first death, but never in one absence
        assert relay.line(timeout=2.0) is None
        server.die(conn)
        assert relay.line(timeout=10) == b"withdraw route 192.0.2.1/32\n"
    finally:
        relay.stop()


def test_a_respawned_relay_withdraws_what_anycastds_record_names(tmp_path: Path) -> None:
    """The relay died too (ExaBGP respawned it): it saw no announce, but anycastd's record
    of its own prefixes (external mode) names them. Garbage in the record is ignored."""
    sock = tmp_path / "s.sock"
    Path(f"{sock}.owned").write_text(json.dumps(["192.0.2.9/32", 7, "x/32; rm -rf /"]))
    relay = FakeExabgp(sock, "--hold", "0.3")
    try:
        assert relay.line(timeout=10) == b"withdraw route 192.0.2.9/32\n"
    finally:
        relay.stop()


def test_hold_zero_is_off(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    Path(f"{sock}.owned").write_text(json.dumps(["192.0.2.9/32"]))
    relay = FakeExabgp(sock, "--hold", "0")
    try:
        assert relay.line(timeout=1.0) is None
    finally:
        relay.stop()


@pytest.mark.parametrize("args", [["--hold", "-1"], ["--hold", "inf"], ["--hold", "x"],
                                  ["--hold"], ["--barrier-timeout", "0"]])
def test_bad_arguments_are_a_usage_error(args: list[str]) -> None:
    proc = subprocess.run([*RELAY, *args, "/nonexistent.sock"], capture_output=True,
                          timeout=30, check=False, stdin=subprocess.DEVNULL)
    assert proc.returncode == 64
    assert b"usage:" in proc.stderr
