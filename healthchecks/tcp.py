"""TCP connect probe: OK when a connection to host:port is established.

The connection is closed right away (FIN, not RST), so the service only sees a client
that connected and left. Host names are resolved; IPv6 literals work as-is.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from healthchecks._base import Stage, check_port, close_stream, guarded, host_port
from healthchecks.result import ProbeResult, Status

__all__ = ["TcpProbe"]


@dataclass(frozen=True, slots=True)
class TcpProbe:
    host: str
    port: int

    def __post_init__(self) -> None:
        check_port(self.port)

    def describe(self) -> str:
        return f"tcp {host_port(self.host, self.port)}"

    async def run(self, timeout: float) -> ProbeResult:  # noqa: ASYNC109 (contract)
        return await guarded(self._check, timeout)

    async def _check(self, stage: Stage) -> tuple[Status, str]:
        stage.name = "connect"
        _, writer = await asyncio.open_connection(self.host, self.port)
        stage.name = "close"
        await close_stream(writer)
        return Status.OK, ""
