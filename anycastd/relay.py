"""anycastd-exabgp-relay: ExaBGP's API helper, joining its stdin/stdout to anycastd's socket.

ExaBGP runs this program as a ``process`` (``run anycastd-exabgp-relay /run/anycastd/exabgp.sock``)
and talks to it over its stdin/stdout; anycastd serves the unix socket and connects the two.

Rules, each from a measured ExaBGP behaviour (docs: PLATFORM.md):

- Always read stdin. ExaBGP writes API events with blocking writes; a helper that stops
  reading stalls ExaBGP. Lines that arrive while anycastd is away are dropped, except the
  last session state per peer, which is kept and replayed on every (re)connect so anycastd
  learns which sessions are up.
- Never exit while ExaBGP lives. Every helper death burns ExaBGP's respawn budget (the 6th
  death within 64 s makes ExaBGP exit). A lost socket means: reconnect with backoff.
- Die with ExaBGP: stdin EOF ends the process, and PR_SET_PDEATHSIG covers the rest.

Stdlib only, no anycastd imports: it starts fast and cannot fail on a broken install.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import signal
import socket
import struct
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1
_BACKOFF_MIN = 0.05
_BACKOFF_MAX = 2.0


def _set_pdeathsig(sig: int) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent (ExaBGP) dies."""
    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


class Relay:
    """Moves lines between ExaBGP (stdin/stdout) and anycastd (a unix stream socket)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn: socket.socket | None = None
        # peer address -> last "state" event line; replayed on connect
        self._states: dict[str, bytes] = {}

    # -- ExaBGP -> anycastd -------------------------------------------------------------
    def pump_stdin(self) -> None:
        """Read ExaBGP's events forever; forward them when connected. Returns on EOF."""
        stdin = sys.stdin.buffer
        while True:
            line = stdin.readline()
            if not line:
                return
            if not line.endswith(b"\n"):
                line += b"\n"
            self._remember_state(line)
            with self._lock:
                conn = self._conn
                if conn is None:
                    continue
                try:
                    conn.sendall(line)
                except OSError:
                    self._drop(conn)

    def _remember_state(self, line: bytes) -> None:
        if not line.startswith(b"{") or b'"state"' not in line:
            return
        try:
            event = json.loads(line)
            if event.get("type") != "state":
                return
            peer = str(event["neighbor"]["address"]["peer"])
        except (ValueError, KeyError, TypeError):
            return
        self._states[peer] = line

    def _drop(self, conn: socket.socket) -> None:
        # caller holds the lock
        if self._conn is conn:
            self._conn = None
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            conn.close()

    # -- anycastd -> ExaBGP -------------------------------------------------------------
    def serve(self) -> None:
        """Connect to anycastd forever (with backoff); forward its commands to stdout."""
        backoff = _BACKOFF_MIN
        stdout = sys.stdout.buffer
        while True:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                conn.connect(self.path)
            except OSError:
                conn.close()
                time.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
                continue
            backoff = _BACKOFF_MIN
            # an anycastd that stops reading must not stall ExaBGP: give up on it instead
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 5, 0))
            with self._lock:
                try:
                    conn.sendall(b"relay hello %d\n" % os.getppid())
                    for line in list(self._states.values()):
                        conn.sendall(line)
                except OSError:
                    conn.close()
                    continue
                self._conn = conn
            reader = conn.makefile("rb")
            try:
                for line in reader:
                    stdout.write(line if line.endswith(b"\n") else line + b"\n")
                    stdout.flush()
            except OSError:
                pass
            finally:
                with self._lock:
                    self._drop(conn)
                with contextlib.suppress(OSError):
                    reader.close()
            time.sleep(_BACKOFF_MIN)


def _serve_or_die(relay: Relay) -> None:
    """The socket side must never die quietly: stdin would still be drained, so ExaBGP
    would not respawn us and anycastd could never reconnect (its routes frozen, failing
    open). Any unexpected error ends the process; ExaBGP then starts a fresh relay."""
    try:
        relay.serve()
    except BaseException as exc:  # see the docstring
        sys.stderr.write(f"anycastd-exabgp-relay: socket side failed: {exc!r}\n")
        os._exit(70)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: anycastd-exabgp-relay SOCKET\n")
        return 64
    _set_pdeathsig(signal.SIGTERM)
    relay = Relay(args[0])
    threading.Thread(target=_serve_or_die, args=(relay,), name="relay-socket", daemon=True).start()
    relay.pump_stdin()
    # stdin EOF: ExaBGP is gone (or closed our pipe); so are we.
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
