"""healthchecks: async health probes, independent of anycastd (never imports it).

Every probe is a frozen dataclass whose fields are its options, with
``async def run(self, timeout: float) -> ProbeResult`` that never raises (only
``asyncio.CancelledError`` propagates) and returns within ``timeout`` plus a small cleanup
slack, and ``describe() -> str`` for logs. Constructors raise ``ValueError`` for options
that can never work (bad port, bad regex...), so configuration errors surface at load time.

Event-driven probes (process, link) also have ``async def changed(self) -> None``, which
returns as soon as a kernel event says the next ``run()`` may answer differently; a scheduler
runs the check at once when it returns (``while True: await probe.changed(); run``).

``python -m healthchecks <probe> --help`` runs one probe by hand with Nagios exit codes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from healthchecks.result import Probe, ProbeResult, Status

if TYPE_CHECKING:
    from healthchecks.dns import DnsProbe
    from healthchecks.exec import ExecProbe
    from healthchecks.file import FileProbe
    from healthchecks.http import HttpProbe
    from healthchecks.link import LinkProbe
    from healthchecks.listen import ListenProbe
    from healthchecks.process import ProcessProbe
    from healthchecks.tcp import TcpProbe
    from healthchecks.tls import TlsProbe

# Probe classes load on first use (PEP 562): aiohttp, dnspython and cryptography together
# take ~0.5s to import, which a one-off `python -m healthchecks file ...` should not pay.
_LAZY = {
    "DnsProbe": "healthchecks.dns",
    "ExecProbe": "healthchecks.exec",
    "FileProbe": "healthchecks.file",
    "HttpProbe": "healthchecks.http",
    "LinkProbe": "healthchecks.link",
    "ListenProbe": "healthchecks.listen",
    "ProcessProbe": "healthchecks.process",
    "TcpProbe": "healthchecks.tcp",
    "TlsProbe": "healthchecks.tls",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'healthchecks' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])

__all__ = [
    "DnsProbe",
    "ExecProbe",
    "FileProbe",
    "HttpProbe",
    "LinkProbe",
    "ListenProbe",
    "Probe",
    "ProbeResult",
    "ProcessProbe",
    "Status",
    "TcpProbe",
    "TlsProbe",
]
