"""The daemon's API listeners: bound at start, served once the first reconcile pass ended.

Rule: binding is a start-up check (a taken port or a live control socket: exit 69 before
anything changes); serving waits for the first pass (at most :data:`API_DEFER`), so
importing aiohttp (~90 ms) is not on the way to the first routes (bench/README_startup.md).
A request that comes in between waits in the listen backlog; it is not refused.

Two listeners (``observe.api``): the read-only TCP one (status, metrics) and the control
socket (status and the operator flags; file permissions decide who may use them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anycastd.config import ApiConfig
from anycastd.errors import StartupError
from anycastd.observe.logs import event
from anycastd.observe.metrics import Metrics
from anycastd.observe.sockets import listen_tcp, listen_unix, unlink

if TYPE_CHECKING:  # aiohttp loads only when the API is served
    from anycastd.observe.api import ApiServer, FlagKind

log = logging.getLogger("anycastd")

#: At start: how long the API waits for the first pass before it is served anyway.
API_DEFER = 1.0


class Listeners:
    """``bind()`` at start, ``serve()`` as a task, ``close()`` at exit (idempotent)."""

    def __init__(self, api: ApiConfig, runtime_dir: Path) -> None:
        self.api = api
        self.path = api.socket_path(runtime_dir)
        self.servers: list[ApiServer] = []
        self._socks: tuple[list[socket.socket], socket.socket] | None = None

    def bind(self) -> None:
        """Both listeners, or StartupError naming the key and what went wrong."""
        api = self.api
        if not api.enabled:
            return
        try:
            tcp = listen_tcp(api.host, api.port)
        except OSError as exc:
            raise StartupError(f"cannot listen on {api.listen} (api.listen): {exc}") from None
        try:
            control = listen_unix(self.path, group=api.socket_group)
        except OSError as exc:
            for sock in tcp:
                sock.close()
            raise StartupError(f"cannot serve the control socket {self.path} (api.socket): "
                               f"{exc}") from None
        self._socks = (tcp, control)

    async def serve(
        self,
        first_pass: asyncio.Event,
        *,
        status: Callable[[], Mapping[str, Any]],
        alive: Callable[[], bool],
        set_flag: Callable[[str, FlagKind, bool], bool],
        metrics: Metrics | None,
    ) -> None:
        """Serve the bound listeners once ``first_pass`` is set (or after API_DEFER)."""
        if self._socks is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(API_DEFER):
                await first_pass.wait()
        from anycastd.observe.api import ApiServer, create_app

        if self._socks is None:  # closed while waiting
            return
        tcp_socks, control_sock = self._socks
        tcp, control = (
            ApiServer(create_app(status_provider=status, alive=alive, set_flag=set_flag,
                                 metrics=m, control=c))
            for m, c in ((metrics, False), (None, True))
        )
        # each server owns its sockets once its serve() returned (or failed: it closed
        # them); until then close() closes what is still here, also after a cancel
        await tcp.serve(tcp_socks)
        self.servers.append(tcp)
        self._socks = ([], control_sock)
        await control.serve([control_sock], path=self.path)
        self.servers.append(control)
        self._socks = None
        event(log, "api_listening", url=tcp.url, control=control.url)

    async def close(self) -> None:
        """Stop the servers; listeners bound but never served are closed and the control
        socket's file removed."""
        socks, self._socks = self._socks, None
        if socks is not None:
            for sock in (*socks[0], socks[1]):
                sock.close()
            unlink(self.path)
        for server in self.servers:
            await server.stop()
