"""The relay program: keeps reading ExaBGP, survives anycastd's absence, dies on stdin EOF."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

from anycastd.bgp.relay import BARRIER

RELAY = [sys.executable, "-m", "anycastd.bgp.relay"]
#: the answer to BARRIER (ExaBGP 5.0.15, one neighbor)
SUMMARY = (b"Peer            AS        up/down state       |     #sent     #recvd\n"
           b"10.0.0.1        65000        0:01:00 established    1    1\n")


def state(peer: str, st: str) -> bytes:
    return json.dumps({"type": "state", "neighbor": {"address": {"peer": peer},
                                                     "state": st}}).encode() + b"\n"


def read_lines(conn: socket.socket, n: int, timeout: float = 5.0) -> list[bytes]:
    conn.settimeout(timeout)
    data = b""
    while data.count(b"\n") < n:
        chunk = conn.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    return data.splitlines()


def test_relay_drains_stdin_while_anycastd_is_away_and_replays_session_state(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.sock"
    relay = subprocess.Popen([*RELAY, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert relay.stdin is not None
        assert relay.stdout is not None
        # 4 MiB of events with nobody listening: a relay that stopped reading would block us
        relay.stdin.write((b"y" * 1023 + b"\n") * 4096)
        relay.stdin.write(state("10.0.0.1", "up"))
        relay.stdin.flush()
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        server.listen()
        server.settimeout(10)
        conn, _ = server.accept()
        lines = read_lines(conn, 2)
        assert lines[0].startswith(b"relay hello ")
        assert json.loads(lines[1])["neighbor"]["state"] == "up"
        # commands go to stdout (ExaBGP), events come back; a new relay first makes sure
        # no answer is still owed to its predecessor (a barrier, its answer never forwarded)
        conn.sendall(b"announce route 192.0.2.1/32 next-hop self\n")
        assert relay.stdout.readline() == BARRIER
        relay.stdin.write(b"done\n")  # a predecessor's late answer: dropped
        relay.stdin.write(SUMMARY + b"done\n")
        relay.stdin.flush()
        assert relay.stdout.readline() == b"announce route 192.0.2.1/32 next-hop self\n"
        relay.stdin.write(b"done\n")
        relay.stdin.flush()
        assert read_lines(conn, 1) == [b"done"]
        # anycastd goes away: the relay stays, and reconnects
        conn.close()
        time.sleep(0.2)
        assert relay.poll() is None
        conn, _ = server.accept()
        assert read_lines(conn, 2)[1] == state("10.0.0.1", "up").strip()
        # ExaBGP closes our stdin: the relay exits
        relay.stdin.close()
        assert relay.wait(timeout=5) == 0
    finally:
        if relay.poll() is None:
            relay.kill()
            relay.wait()


def test_relay_keeps_answers_owed_to_a_closed_connection_from_the_next_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    server.settimeout(10)
    relay = subprocess.Popen([*RELAY, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert relay.stdin is not None
        assert relay.stdout is not None
        conn, _ = server.accept()
        read_lines(conn, 1)  # hello
        conn.sendall(b"show adj-rib out extensive\n")
        assert relay.stdout.readline() == BARRIER
        relay.stdin.write(SUMMARY + b"done\n")
        relay.stdin.flush()
        assert relay.stdout.readline() == b"show adj-rib out extensive\n"
        conn.close()  # anycastd gave up on the answer
        conn, _ = server.accept()
        read_lines(conn, 1)  # hello
        conn.sendall(b"show adj-rib out extensive\n")
        # held behind a barrier: the late answer to the first command comes first
        assert relay.stdout.readline() == BARRIER
        relay.stdin.write(b"neighbor 10.0.0.1 ... 192.0.2.1/32 next-hop self\ndone\n")
        relay.stdin.write(SUMMARY + b"done\n")
        relay.stdin.flush()
        assert relay.stdout.readline() == b"show adj-rib out extensive\n"
        relay.stdin.write(b"neighbor 10.0.0.1 ... 192.0.2.2/32 next-hop self\ndone\n")
        relay.stdin.flush()
        assert read_lines(conn, 2) == [b"neighbor 10.0.0.1 ... 192.0.2.2/32 next-hop self",
                                       b"done"]
    finally:
        relay.kill()
        relay.wait()
        server.close()
