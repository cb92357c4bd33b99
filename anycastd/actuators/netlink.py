"""Netlink errno → actuator exception mapping, shared by the netlink actuators.

Rule: no ``pyroute2`` exception (nor a bare ``OSError`` from the netlink socket) leaves an
actuator. Every one is translated here into the small taxonomy of
:mod:`anycastd.errors`, so the controller decides with one rule: retry a
:class:`TransientError` with backoff, report a :class:`PermanentError`.

An errno we do not know is treated as permanent: retrying an unknown failure in a tight loop
is worse than leaving the drift for the next periodic reconcile pass.

Usage::

    with map_netlink_errors("loopback"):
        ipr.addr("add", ...)

``open_rtnetlink`` is the one place an rtnetlink socket is opened (in a named namespace or
the current one): the loopback actuator uses it for requests, the link watcher for events.
"""

from __future__ import annotations

import errno as _errno
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager

from pyroute2 import NetlinkError
from pyroute2 import netns as pyroute2_netns

from anycastd.errors import ActuatorError, PermanentError, TransientError

__all__ = [
    "PERMANENT_ERRNOS",
    "TRANSIENT_ERRNOS",
    "classify",
    "map_netlink_errors",
    "open_rtnetlink",
]

NETLINK_ROUTE = 0
SO_RCVBUFFORCE = 33  # not exported by the socket module
SOL_NETLINK = 270
NETLINK_GET_STRICT_CHK = 12

#: Receive buffer of every rtnetlink socket: a 10,000-address dump, or a burst of that many
#: address events, fits without an overrun (ENOBUFS).
RCVBUF = 8 * 1024 * 1024
#: The kernel always answers; a silent socket for this long means something is badly wrong.
SOCKET_TIMEOUT = 10.0

#: The kernel or the socket is busy, a buffer overflowed, or the call was interrupted:
#: the same request may well succeed a moment later.
TRANSIENT_ERRNOS: frozenset[int] = frozenset(
    {
        _errno.EBUSY,
        _errno.EAGAIN,  # == EWOULDBLOCK
        _errno.ENOBUFS,  # netlink socket receive buffer overrun: dump lost, re-read
        _errno.EINTR,
        _errno.ETIMEDOUT,
        _errno.ENOMEM,
        _errno.ECONNRESET,
        _errno.ECONNREFUSED,
        _errno.EPIPE,
        _errno.EINPROGRESS,
        _errno.EALREADY,
    }
)

#: The request itself is wrong for this kernel (bad argument, no such device, no
#: permission, feature missing): the same request will fail the same way.
PERMANENT_ERRNOS: frozenset[int] = frozenset(
    {
        _errno.EINVAL,
        _errno.EPERM,
        _errno.EACCES,
        _errno.EOPNOTSUPP,
        _errno.ENODEV,
        _errno.ENOENT,
        _errno.ESRCH,
        _errno.EEXIST,
        _errno.EADDRNOTAVAIL,
        _errno.EAFNOSUPPORT,
        _errno.EPROTONOSUPPORT,
        _errno.ENOTSUP,
        _errno.ERANGE,
        _errno.E2BIG,
        _errno.EMSGSIZE,
        _errno.ENXIO,
    }
)


def classify(code: int) -> type[ActuatorError]:
    """The exception class for a (positive or negative) netlink errno."""
    code = abs(code)
    if code in TRANSIENT_ERRNOS:
        return TransientError
    return PermanentError


def describe(code: int) -> str:
    """``"EINVAL (Invalid argument)"`` for an errno, or ``"errno N"`` when unknown."""
    code = abs(code)
    # errno.errorcode names 95 ENOTSUP; the kernel and ip(8) say EOPNOTSUPP.
    name = "EOPNOTSUPP" if code == _errno.EOPNOTSUPP else _errno.errorcode.get(code)
    if name is None:
        return f"errno {code}"
    return f"{name} ({os.strerror(code)})"


def error_for(actuator: str, code: int, context: str = "") -> ActuatorError:
    """Build the mapped exception for ``code`` (message names the errno and the context)."""
    prefix = f"{context}: " if context else ""
    return classify(code)(actuator, f"{prefix}{describe(code)}")


@contextmanager
def map_netlink_errors(actuator: str, context: str = "") -> Iterator[None]:
    """Translate ``NetlinkError`` and socket ``OSError`` raised inside into ActuatorErrors.

    ``ActuatorError`` raised inside passes through unchanged. The original exception is
    chained (``__cause__``) for logs.
    """
    try:
        yield
    except ActuatorError:
        raise
    except NetlinkError as exc:
        code = int(exc.code) if isinstance(exc.code, int) else 0
        raise error_for(actuator, code, context) from exc
    except OSError as exc:
        # The netlink socket itself failed (closed, buffer overrun reported as OSError).
        if isinstance(exc, TimeoutError) and exc.errno is None:
            code = _errno.ETIMEDOUT  # socket.timeout carries no errno
        else:
            code = exc.errno if exc.errno is not None else _errno.EIO
        raise error_for(actuator, code, context) from exc


def open_rtnetlink(
    actuator: str, netns: str | None, *, groups: int = 0, rcvbuf: int = RCVBUF
) -> socket.socket:
    """A bound NETLINK_ROUTE socket in ``netns`` (``ip netns`` name or a path; None: ours).

    ``groups`` is the RTMGRP_* multicast mask to subscribe to (0: requests only); ``rcvbuf``
    the receive buffer in bytes (the kernel doubles it). The socket
    is blocking with ``SOCKET_TIMEOUT``. A missing namespace raises PermanentError and is
    never created; every other failure is mapped like any netlink error.
    """
    context = f"open rtnetlink socket in netns {netns}" if netns else "open rtnetlink socket"
    with map_netlink_errors(actuator, context):
        if netns is None:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        else:
            path = netns if "/" in netns else f"/run/netns/{netns}"
            if not os.path.exists(path):
                raise PermanentError(actuator, f"{context}: no such namespace")
            # flags=0: never create the namespace, only enter it.
            sock = pyroute2_netns.create_socket(
                netns=netns,
                family=socket.AF_NETLINK,
                socket_type=socket.SOCK_RAW,
                proto=NETLINK_ROUTE,
                flags=0,
            )
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
            sock.bind((0, groups))
            sock.settimeout(SOCKET_TIMEOUT)
        except BaseException:
            sock.close()
            raise
    return sock
