"""TCP connect probe: OK when a connection to host:port is established.

The connection is closed right away (FIN, not RST), so the service only sees a client
that connected and left. Host names are resolved on every run and their addresses tried
in order (like ``asyncio.open_connection``); IPv6 literals work as-is.

Rule: this is the hot path of a daemon that runs thousands of checks a second, so a run
is one non-blocking socket, ``connect()``, at most one writability wait on the loop and
``close()``: no transport, protocol, StreamReader/Writer, and no name resolution for IP
literals (parsed once, at construction). A listener on this host completes the handshake
inside ``connect()``; a ``poll()`` with timeout 0 sees that and the run never waits (nor
arms a timer). Every await runs under ``asyncio.timeout_at(deadline)``, the hard deadline,
and the socket is closed on every path, cancellation included. Outcomes and reasons are
those :func:`healthchecks._base.guarded` gives the other probes, except that a name that
does not resolve fails in the ``resolve`` stage (it said ``connect`` before).
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from healthchecks._base import check_port, format_seconds, host_port, one_line, os_reason
from healthchecks.result import ProbeResult, Status

__all__ = ["TcpProbe"]

_SOCK_STREAM = socket.SOCK_STREAM
_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)  # Linux: non-blocking from socket(), no fcntl
# connect() on a non-blocking socket: the handshake goes on in the background
_PENDING = frozenset({errno.EINPROGRESS, errno.EINTR})
_SockAddr = tuple[Any, ...]  # (host, port) or (host, port, flowinfo, scope_id), numeric


def _literal_family(host: str) -> int:
    """AF_INET/AF_INET6 for an IP literal (no zone index), 0 for a name to resolve."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return family
    return 0


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():  # the writer callback may fire again before it is removed
        fut.set_result(None)


class _Expired(Exception):
    """The run's own deadline passed (unlike a kernel ETIMEDOUT, which is an OSError)."""


async def _connect(
    loop: asyncio.AbstractEventLoop, family: int, addr: _SockAddr, deadline: float
) -> None:
    """Connect a fresh non-blocking socket to ``addr`` and close it; OSError on failure,
    _Expired when the handshake is still pending at ``deadline`` (loop time).

    ``addr`` must be numeric (no resolution here). The socket is closed on every path,
    cancellation included, after its writer is removed (before the fd can be reused).
    """
    sock = socket.socket(family, _SOCK_STREAM | _NONBLOCK)
    try:
        if not _NONBLOCK:
            sock.setblocking(False)
        err = sock.connect_ex(addr)
        if err in _PENDING:
            fd = sock.fileno()
            # A handshake with a listener on this host completes inside connect() (the
            # kernel runs the peer's side in the same call): one poll() syscall sees that
            # and saves the event loop round trip, which costs more than the connect.
            ready = select.poll()
            ready.register(fd, select.POLLOUT)
            if not ready.poll(0):
                fut: asyncio.Future[None] = loop.create_future()
                loop.add_writer(fd, _wake, fut)
                try:
                    async with asyncio.timeout_at(deadline):  # the hard deadline
                        await fut
                except TimeoutError:
                    raise _Expired from None
                finally:
                    loop.remove_writer(fd)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
    finally:
        sock.close()


@dataclass(frozen=True, slots=True)
class TcpProbe:
    host: str
    port: int
    # derived from host at construction: the address family of an IP literal, else 0
    _family: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        check_port(self.port)
        object.__setattr__(self, "_family", _literal_family(self.host))

    def describe(self) -> str:
        return f"tcp {host_port(self.host, self.port)}"

    async def run(self, timeout: float) -> ProbeResult:  # noqa: ASYNC109 (contract)
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        # The deadline is armed (asyncio.timeout_at) only around the awaits: a connect
        # that completes inside the syscall never waits, so it needs no timer.
        deadline = loop.time() + timeout
        stage = "connect"
        if timeout <= 0:  # no time to even try: what asyncio.timeout(0) would give
            reason = f"timed out after {format_seconds(timeout)} ({stage})"
            return ProbeResult(Status.TIMEOUT, time.monotonic() - start, reason)
        try:
            if self._family:
                await _connect(loop, self._family, (self.host, self.port), deadline)
            else:
                stage = "resolve"
                try:
                    async with asyncio.timeout_at(deadline):
                        infos = await loop.getaddrinfo(self.host, self.port, type=_SOCK_STREAM)
                except TimeoutError:
                    raise _Expired from None
                stage = "connect"
                await self._connect_any(loop, infos, deadline)
        except _Expired:
            reason = f"timed out after {format_seconds(timeout)} ({stage})"
            return ProbeResult(Status.TIMEOUT, time.monotonic() - start, reason)
        except OSError as exc:  # refused, unreachable, kernel ETIMEDOUT, unknown name...
            return self._fail(start, f"{stage}: {os_reason(exc)}")
        except Exception as exc:  # the contract: run() never raises; a bug becomes ERROR
            reason = f"internal error ({stage}): {type(exc).__name__}: {exc}"
            return ProbeResult(Status.ERROR, time.monotonic() - start, one_line(reason))
        return ProbeResult(Status.OK, time.monotonic() - start, "")

    @staticmethod
    async def _connect_any(
        loop: asyncio.AbstractEventLoop,
        infos: Sequence[tuple[int, int, int, str, _SockAddr]],
        deadline: float,
    ) -> None:
        """Try each resolved address in order; OK on the first that connects."""
        errors: list[OSError] = []
        for family, _, _, _, sockaddr in infos:
            try:
                await _connect(loop, family, sockaddr, deadline)
            except OSError as exc:
                errors.append(exc)
            else:
                return
        if not errors:
            raise OSError(errno.EADDRNOTAVAIL, "no address to connect to")
        reasons = list(dict.fromkeys(os_reason(e) for e in errors))
        if len(reasons) == 1:
            raise errors[0]
        raise OSError("; ".join(reasons))

    @staticmethod
    def _fail(start: float, reason: str) -> ProbeResult:
        return ProbeResult(Status.FAIL, time.monotonic() - start, one_line(reason))
