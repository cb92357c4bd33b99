"""The relay program: keeps reading ExaBGP, survives anycastd's absence, dies on stdin EOF."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

RELAY = [sys.executable, "-m", "anycastd.relay"]


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
        # commands go to stdout (ExaBGP), events come back
        conn.sendall(b"announce route 192.0.2.1/32 next-hop self\n")
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
