"""Public result types shared by every probe.

Contract: a probe is a frozen value (its options are its fields) with
``async def run(self, timeout: float) -> ProbeResult``. ``run`` never raises except
``asyncio.CancelledError`` (cancellation belongs to the caller) and returns within
``timeout`` plus a small slack spent on cleanup (closing sockets, reaping children).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["Probe", "ProbeResult", "Status"]


class Status(enum.Enum):
    """Outcome of one probe run.

    FAIL means the target answered wrongly or refused; TIMEOUT means it did not answer in
    time; ERROR means the probe itself could not run (misconfiguration, missing binary,
    unreadable CA file, internal bug) - i.e. the check says nothing about the target.
    """

    OK = "ok"
    FAIL = "fail"
    TIMEOUT = "timeout"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What one run observed: status, wall latency in seconds, short human reason."""

    status: Status
    latency: float
    reason: str

    @property
    def ok(self) -> bool:
        return self.status is Status.OK


@runtime_checkable
class Probe(Protocol):
    """Anything the scheduler can run: every probe class here satisfies it."""

    # ASYNC109 prefers the caller's asyncio.timeout, but the probe owns its deadline here:
    # it must answer TIMEOUT (a result) and clean up (kill, close) rather than be cancelled.
    async def run(self, timeout: float) -> ProbeResult:  # noqa: ASYNC109
        """Probe once; never raise (except CancelledError); honour ``timeout``."""
        ...

    def describe(self) -> str:
        """Short text for logs, e.g. ``tcp 127.0.0.1:80``."""
        ...
