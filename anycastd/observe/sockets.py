"""The API's listening sockets, bound with the standard library alone.

Rule: no aiohttp here. ``anycastd run`` binds its listeners at start, so a taken port or a
live control socket is still a start-up error (exit 69) before anything is changed, and
serves them with aiohttp (``observe.api``) only once its first reconcile pass has ended:
aiohttp's import (~90 ms) is not on the way to the first routes (bench/README_startup.md).
A request that comes in between waits in the listen backlog; it is not refused.
"""

from __future__ import annotations

import contextlib
import grp
import os
import socket
from pathlib import Path

#: listen(2) backlog, as asyncio's create_server uses
BACKLOG = 100


def listen_tcp(host: str, port: int) -> list[socket.socket]:
    """Listening, non-blocking TCP sockets on ``host`` (an address, ``[v6]`` brackets allowed,
    or a name: one socket per address it resolves to, as asyncio's ``create_server`` binds)
    and ``port`` (0: any free port); OSError when it cannot bind one of them."""
    infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    socks: list[socket.socket] = []
    unsupported: OSError | None = None
    try:
        for family, kind, proto, _, address in dict.fromkeys(
            (i[0], i[1], i[2], i[3], i[4]) for i in infos
        ):
            try:
                sock = socket.socket(family, kind, proto)
            except OSError as exc:  # a family this kernel lacks (ipv6.disable=1): skip it,
                unsupported = exc  # as asyncio's create_server does
                continue
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    if not socks:
        raise unsupported or OSError(f"{host} resolves to no address")
    return socks


def listen_unix(path: Path, *, group: str = "", mode: int = 0o660) -> socket.socket:
    """A listening unix socket at ``path`` with ``mode`` and ``group`` ("" keeps the
    process's group). A stale socket file is replaced; one that answers (another anycastd)
    raises OSError(EADDRINUSE), like a taken TCP port. An unknown group, or one this process
    may not chown to, raises OSError too."""
    gid = -1
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise OSError(f"no group named {group!r} (api.socket_group)") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chown(path, -1, gid)
        os.chmod(path, mode)
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        unlink(path)
        raise
    return sock


def remove_stale(path: Path) -> None:
    """Remove a socket file nobody answers on; refuse to take over a live one."""
    if not path.exists() and not path.is_symlink():
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()
            return
    raise OSError(98, f"{path}: another process answers on this socket")


def unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
