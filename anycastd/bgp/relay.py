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
- Never hand an answer to the wrong connection. ExaBGP answers each command ``done`` or
  ``error`` with no id, answers some commands ahead of queued ones, and keeps answering
  commands of a dead connection (or of a dead relay: its queue is per process name). So a
  new anycastd connection gets nothing but events until the stream is provably in step:
  when answers may be owed to someone else (this relay just started, or a connection
  ended with answers owed, or an answer came that nobody was owed), the relay first sends
  a *barrier*, ``show neighbor summary`` -- a queued command like the route commands, so
  every earlier command is answered before it, with an answer anycastd never asks for
  (its header line) -- and drops everything but events until that answer is complete.
  Barrier answers are recognised by their header and always dropped, also late ones.
  Commands are held (not dropped) meanwhile; anycastd's own timeout bounds the wait.

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
import typing

_PR_SET_PDEATHSIG = 1
_BACKOFF_MIN = 0.05
_BACKOFF_MAX = 2.0
#: The barrier command and the start of the first line of its answer (ExaBGP 4.2 and 5:
#: ``Peer            AS        up/down state       |     #sent     #recvd``).
BARRIER = b"show neighbor summary\n"
#: How long commands are held for a barrier's answer before the relay goes on without it.
BARRIER_TIMEOUT = 15.0
_BARRIER_HEADER = b"Peer "
_ANSWERS = (b"done", b"error")


def _set_pdeathsig(sig: int) -> None:
    """Ask the kernel to send ``sig`` to this process when its parent (ExaBGP) dies.

    A copy of what :mod:`anycastd.children` does for anycastd's own children, kept here
    because the relay imports nothing of anycastd (stdlib only: starts fast, cannot fail on
    a broken install); it also runs in the relay itself, not between fork and exec."""
    with contextlib.suppress(OSError, AttributeError, TypeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


class Relay:
    """Moves lines between ExaBGP (stdin/stdout) and anycastd (a unix stream socket)."""

    def __init__(self, path: str, *, barrier_timeout: float = BARRIER_TIMEOUT) -> None:
        self.path = path
        self.barrier_timeout = barrier_timeout
        self._barrier_sent = 0.0  # monotonic time the last barrier was written
        self._lock = threading.Lock()
        self._conn: socket.socket | None = None
        # peer address -> last "state" event line; replayed on connect
        self._states: dict[str, bytes] = {}
        # Pairing (all under _lock): answers owed to _owner's commands; barriers sent and not
        # yet answered; whether a barrier is needed before the next command; whether the
        # lines now arriving belong to a barrier answer.
        self._in_step = threading.Condition(self._lock)
        self._owed = 0
        self._owner: socket.socket | None = None
        self._barriers = 0
        self._need_barrier = True  # a respawned relay inherits its predecessor's queue
        self._in_barrier_answer = False
        # stdout is written by the socket thread only; this lock orders the writes (never
        # held together with _lock: a write may block until ExaBGP reads)
        self._out = threading.Lock()

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
                if not line.startswith(b"{") and not self._answer_is_ours(line):
                    continue
                conn = self._conn
                if conn is None:
                    continue
                try:
                    conn.sendall(line)
                except OSError:
                    self._drop(conn)

    def _answer_is_ours(self, line: bytes) -> bool:
        """Account for one non-event line; True if it belongs to the current connection.
        Caller holds the lock."""
        word = line.strip()
        if self._in_barrier_answer:
            if word in _ANSWERS:
                self._in_barrier_answer = False
                self._barriers = max(self._barriers - 1, 0)
                self._in_step.notify_all()
            return False
        if line.startswith(_BARRIER_HEADER):
            self._in_barrier_answer = True  # ours, or a predecessor's late one: dropped
            return False
        if self._barriers:
            return False  # owed to someone before the barrier
        if word in _ANSWERS:
            self._owed -= 1
            if self._owed < 0:
                # an answer nobody is owed: the stream is out of step
                self._owed = 0
                self._need_barrier = True
                return False
        return self._owner is not None and self._owner is self._conn

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
            if self._owed:
                # answers still owed to it would be taken by the next connection
                self._need_barrier = True
            self._in_step.notify_all()
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
                    if not self._may_send(conn):
                        break
                    self._write(stdout, line if line.endswith(b"\n") else line + b"\n")
            except OSError:
                pass
            finally:
                with self._lock:
                    self._drop(conn)
                with contextlib.suppress(OSError):
                    reader.close()
            time.sleep(_BACKOFF_MIN)


    def _may_send(self, conn: socket.socket) -> bool:
        """Wait until a command of ``conn`` can be paired with its answer; then count it.
        False if ``conn`` is gone meanwhile (the command is dropped, never sent late)."""
        stdout = sys.stdout.buffer
        with self._lock:
            while True:
                if self._conn is not conn:
                    return False
                if self._need_barrier:
                    self._need_barrier = False
                    self._barriers += 1
                    self._barrier_sent = time.monotonic()
                    # the barrier answers for everything sent before it
                    self._owed = 0
                    self._lock.release()
                    try:
                        self._write(stdout, BARRIER)
                    finally:
                        self._lock.acquire()
                    continue
                if not self._barriers:
                    self._owed += 1
                    self._owner = conn
                    return True
                if time.monotonic() - self._barrier_sent > self.barrier_timeout:
                    # Never recognised (another ExaBGP's header) or never answered: holding
                    # every command forever would leave anycastd unable even to withdraw.
                    # Whatever was queued before the barrier has long been answered.
                    sys.stderr.write("anycastd-exabgp-relay: barrier not answered within "
                                     f"{self.barrier_timeout:g}s; going on\n")
                    self._barriers = 0
                    self._in_barrier_answer = False
                    continue
                # anycastd may give up meanwhile: its command must then not be sent late
                if not self._in_step.wait(0.1) and _closed_by_peer(conn):
                    self._drop(conn)
                    return False

    def _write(self, stdout: typing.BinaryIO, line: bytes) -> None:
        with self._out:
            stdout.write(line)
            stdout.flush()


def _closed_by_peer(conn: socket.socket) -> bool:
    try:
        return conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


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
    timeout = BARRIER_TIMEOUT
    if len(args) == 3 and args[0] == "--barrier-timeout":
        try:
            timeout = float(args[1])
        except ValueError:
            timeout = -1.0
        args = args[2:]
    if len(args) != 1 or not timeout > 0:
        sys.stderr.write("usage: anycastd-exabgp-relay [--barrier-timeout SECONDS] SOCKET\n")
        return 64
    _set_pdeathsig(signal.SIGTERM)
    relay = Relay(args[0], barrier_timeout=timeout)
    threading.Thread(target=_serve_or_die, args=(relay,), name="relay-socket", daemon=True).start()
    relay.pump_stdin()
    # stdin EOF: ExaBGP is gone (or closed our pipe); so are we.
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
