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
- Fail closed when anycastd is gone (the dead-man timer, issue 13). While no anycastd is
  connected the relay counts a *hold* (``--hold``, default :data:`HOLD`; anycastd also tells
  a connected relay its ``[bgp] relay_hold`` in-band with ``relay hold SECONDS``, a line the
  relay keeps for itself). If no anycastd has connected when the hold runs out, the relay
  withdraws every prefix anycastd announced -- those it saw go by (``announce`` commands),
  from the neighbors they went to, and those in anycastd's record of its own prefixes
  (``<socket>.owned``, external mode) that it never saw (a relay respawned meanwhile), from
  every neighbor -- and stays alive for ExaBGP (whose other routes, e.g. static ones in its
  config, are left alone). anycastd coming back within the
  hold changes nothing at the peers: it reads the adj-rib-out back and adopts it. The
  withdraw answers are nobody's: the next connection is put behind a barrier first.

Stdlib only, no anycastd imports: it starts fast and cannot fail on a broken install.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import math
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
#: Dead-man hold: how long ExaBGP keeps anycastd's routes while no anycastd is connected.
#: Long enough for a restart (measured: an anycastd restart reconnects within ~2 s, see
#: docs/reliability.md), far shorter than the BGP hold times a dead node would cost its
#: peers (90-180 s by default). 0 turns the timer off (routes then stay until anycastd
#: returns: fail open).
HOLD = 15.0
#: The in-band line anycastd sends to set the hold; never forwarded to ExaBGP.
HOLD_COMMAND = b"relay hold "
#: Prefixes per withdraw command when the hold runs out.
_WITHDRAW_CHUNK = 200


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

    def __init__(
        self, path: str, *, barrier_timeout: float = BARRIER_TIMEOUT, hold: float = HOLD
    ) -> None:
        self.path = path
        self.barrier_timeout = barrier_timeout
        self.hold = hold
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
        # stdout is written by the socket thread and the dead-man thread; this lock orders
        # the writes (never taken while holding _lock: a write may block until ExaBGP reads)
        self._out = threading.Lock()
        # Dead-man timer (under _lock): when the last connection ended (relay start counts
        # as one), whether the hold already fired for this absence, and (neighbor, prefix)
        # pairs anycastd announced through this relay ("*" = no selector).
        self._changed = threading.Condition(self._lock)
        self._away_since: float | None = time.monotonic()
        self._fired = False
        self._announced: set[tuple[str, str]] = set()
        # prefixes that went through this relay at all: an owned prefix seen here and not in
        # _announced was withdrawn by anycastd, and is not withdrawn again from every peer
        self._seen: set[str] = set()
        self.withdrawn_by_hold = 0  # prefixes withdrawn when the hold ran out (for tests)

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
            self._away_since = time.monotonic()
            self._changed.notify_all()
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
                    # "hold": this relay takes "relay hold SECONDS" (the dead-man timer)
                    conn.sendall(b"relay hello %d hold\n" % os.getppid())
                    for line in list(self._states.values()):
                        conn.sendall(line)
                except OSError:
                    conn.close()
                    continue
                self._conn = conn
                self._away_since = None
                self._fired = False
                self._changed.notify_all()
            reader = conn.makefile("rb")
            try:
                for line in reader:
                    if line.startswith(HOLD_COMMAND):
                        self._set_hold(line)
                        continue
                    if not self._may_send(conn):
                        break
                    self._track(line)
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

    # -- the dead-man timer ---------------------------------------------------------------
    def _set_hold(self, line: bytes) -> None:
        try:
            hold = float(line[len(HOLD_COMMAND):].strip())
        except ValueError:
            return
        if hold >= 0 and math.isfinite(hold):
            with self._lock:
                self.hold = hold
                self._changed.notify_all()

    def _track(self, line: bytes) -> None:
        """Remember the (neighbor, prefix) pairs a command announces or withdraws."""
        parsed = parse_route_command(line)
        if parsed is None:
            return
        verb, neighbors, prefixes = parsed
        with self._lock:
            self._seen.update(prefixes)
            for prefix in prefixes:
                if verb == "announce":
                    self._announced.update((n, prefix) for n in neighbors)
                elif neighbors == ["*"]:
                    self._announced = {k for k in self._announced if k[1] != prefix}
                else:
                    self._announced.difference_update((n, prefix) for n in neighbors)

    def deadman(self) -> None:
        """Forever: when no anycastd has been connected for ``hold`` seconds, withdraw what
        it announced (once per absence)."""
        stdout = sys.stdout.buffer
        while True:
            with self._lock:
                while True:
                    if self._away_since is not None and not self._fired and self.hold > 0:
                        left = self._away_since + self.hold - time.monotonic()
                        if left <= 0:
                            break
                        self._changed.wait(left)
                    else:
                        self._changed.wait()
                self._fired = True
                # what anycastd announced through this relay, from the peers it went to; what
                # anycastd's record names and this relay never saw (it was respawned), from
                # every peer
                targets: dict[str, set[str]] = {}
                for neighbor, prefix in self._announced:
                    targets.setdefault(prefix, set()).add(neighbor)
                for prefix in self._owned_prefixes() - self._seen:
                    targets.setdefault(prefix, set()).add("*")
                prefixes = set(targets)
                self._announced = set()
                if prefixes:
                    # the answers to these are nobody's: the next connection waits for a
                    # barrier (taken before _out is released, so it is written after them)
                    self._need_barrier = True
                    self._owed = 0
                    self._owner = None
                away = time.monotonic() - (self._away_since or time.monotonic())
            if prefixes:
                with self._out:
                    for command in withdraw_commands(targets):
                        stdout.write(command)
                    stdout.flush()
            self.withdrawn_by_hold += len(prefixes)
            sys.stderr.write(
                f"anycastd-exabgp-relay: no anycastd for {away:.1f}s (hold {self.hold:g}s): "
                f"withdrew {len(prefixes)} prefixes (fail closed)\n")
            sys.stderr.flush()

    def _owned_prefixes(self) -> set[str]:
        """anycastd's own record of the prefixes it announced (external mode)."""
        try:
            with open(self.path + ".owned", "rb") as fh:
                data = json.loads(fh.read(1 << 24))
        except (OSError, ValueError):
            return set()
        if not isinstance(data, list):
            return set()
        return {p for p in data if isinstance(p, str) and _looks_like_prefix(p)}

    def _write(self, stdout: typing.BinaryIO, line: bytes) -> None:
        with self._out:
            stdout.write(line)
            stdout.flush()


def _looks_like_prefix(text: str) -> bool:
    address, slash, length = text.partition("/")
    return (bool(slash) and length.isdigit() and 0 < len(address) <= 39
            and all(c in "0123456789abcdefABCDEF.:" for c in address))


def parse_route_command(line: bytes) -> tuple[str, list[str], list[str]] | None:
    """``(verb, neighbors, prefixes)`` of an ``announce``/``withdraw`` command as anycastd
    writes them (``[neighbor A, neighbor B ]announce route P ...`` or ``... attributes ...
    nlri P1 P2``); neighbors ``["*"]`` without a selector. None for anything else."""
    words = line.decode("ascii", "replace").replace(",", " ").split()
    neighbors: list[str] = []
    i = 0
    while i + 1 < len(words) and words[i] == "neighbor":
        neighbors.append(words[i + 1])
        i += 2
    if i + 2 >= len(words) or words[i] not in ("announce", "withdraw"):
        return None
    verb, kind = words[i], words[i + 1]
    if kind == "route":
        prefixes = [words[i + 2]]
    elif kind == "attributes" and "nlri" in words[i + 2:]:
        prefixes = words[words.index("nlri", i + 2) + 1:]
    else:
        return None
    prefixes = [p for p in prefixes if _looks_like_prefix(p)]
    return verb, neighbors or ["*"], prefixes


def withdraw_commands(targets: typing.Mapping[str, typing.Collection[str]]) -> list[bytes]:
    """Withdraw each prefix from its neighbors (``"*"``: from every neighbor), packed per
    family and neighbor set."""
    groups: dict[tuple[bool, tuple[str, ...]], list[str]] = {}
    for prefix, neighbors in targets.items():
        peers = () if "*" in neighbors else tuple(sorted(neighbors))
        groups.setdefault((":" in prefix, peers), []).append(prefix)
    out: list[bytes] = []
    for (_v6, peers), prefixes in sorted(groups.items()):
        selector = "".join(f"neighbor {p}, " for p in peers)[:-2] + " " if peers else ""
        family = sorted(prefixes)
        for start in range(0, len(family), _WITHDRAW_CHUNK):
            part = family[start:start + _WITHDRAW_CHUNK]
            verb = (f"withdraw route {part[0]}" if len(part) == 1 else
                    f"withdraw attributes next-hop self nlri {' '.join(part)}")
            out.append(f"{selector}{verb}\n".encode())
    return out


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


def _deadman_or_die(relay: Relay) -> None:
    """A dead-man timer that died quietly would fail open: die loudly instead."""
    try:
        relay.deadman()
    except BaseException as exc:  # see the docstring
        sys.stderr.write(f"anycastd-exabgp-relay: dead-man timer failed: {exc!r}\n")
        os._exit(70)


def _parse_args(args: list[str]) -> tuple[str, float, float] | None:
    options = {"--barrier-timeout": BARRIER_TIMEOUT, "--hold": HOLD}
    while len(args) > 1 and args[0] in options:
        try:
            options[args[0]] = float(args[1])
        except ValueError:
            return None
        args = args[2:]
    timeout, hold = options["--barrier-timeout"], options["--hold"]
    if len(args) != 1 or not timeout > 0 or not (hold >= 0 and math.isfinite(hold)):
        return None
    return args[0], timeout, hold


def main(argv: list[str] | None = None) -> int:
    parsed = _parse_args(sys.argv[1:] if argv is None else list(argv))
    if parsed is None:
        sys.stderr.write("usage: anycastd-exabgp-relay [--barrier-timeout SECONDS] "
                         "[--hold SECONDS] SOCKET\n")
        return 64
    path, timeout, hold = parsed
    _set_pdeathsig(signal.SIGTERM)
    relay = Relay(path, barrier_timeout=timeout, hold=hold)
    threading.Thread(target=_serve_or_die, args=(relay,), name="relay-socket", daemon=True).start()
    threading.Thread(target=_deadman_or_die, args=(relay,), name="relay-deadman",
                     daemon=True).start()
    relay.pump_stdin()
    # stdin EOF: ExaBGP is gone (or closed our pipe); so are we.
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
