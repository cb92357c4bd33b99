"""sd_notify without libsystemd: READY, RELOADING, STOPPING, STATUS, WATCHDOG and
EXTEND_TIMEOUT_USEC datagrams, and the one-line STATUS summary.

A no-op when NOTIFY_SOCKET is unset (not started by systemd, or in tests), so callers never
branch on it. Errors sending to the socket are swallowed: systemd being unreachable must not
take the daemon down; the watchdog will notice if it matters.

The protocol as the daemon uses it (``engine.daemon``)::

    start      STATUS=starting: ... + EXTEND_TIMEOUT_USEC   (the start-up hold may be long)
    first pass READY=1 + STATUS=<summary>   (only once the first reconcile pass has run)
    any change STATUS=<summary>             ("4 up, 1 draining, 0 down; bgp 2/2 established")
    SIGHUP     RELOADING=1 + MONOTONIC_USEC, then READY=1 + STATUS once the reload is done
    SIGTERM    STOPPING=1 + STATUS + EXTEND_TIMEOUT_USEC (the shutdown drain's bound)
    watchdog   WATCHDOG=1 every WATCHDOG_USEC/2 while the controller is not stuck
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Iterable


def status_line(
    states: Iterable[str], *, peers_up: int = 0, peers_total: int | None = None
) -> str:
    """The STATUS= summary: ``"4 up, 1 draining, 0 down; bgp 2/2 established"``.

    ``states`` are the services' state values; up, draining and down are always shown,
    maintenance and disabled only when some service is in them. ``peers_total`` None: no
    ``[bgp]`` (the BGP part is left out)."""
    counts: dict[str, int] = {}
    for state in states:
        counts[state] = counts.get(state, 0) + 1
    parts = [f"{counts.get(s, 0)} {s}" for s in ("up", "draining", "down")]
    parts += [f"{counts[s]} {s}" for s in ("maintenance", "disabled") if counts.get(s)]
    line = ", ".join(parts)
    if peers_total is not None:
        line += f"; bgp {peers_up}/{peers_total} established"
    return line


def _usec(seconds: float) -> str:
    return str(max(0, math.ceil(seconds * 1_000_000)))


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        self._address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._last_status: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def watchdog_interval(self) -> float | None:
        """Half of WATCHDOG_USEC in seconds (the recommended ping period), or None."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 2_000_000
        except ValueError:
            return None

    def notify(self, **fields: str) -> None:
        """One datagram, the fields in the order given (``READY=1\\nSTATUS=...``)."""
        if not self._address:
            return
        if "status" in fields:
            self._last_status = fields["status"]
        payload = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        addr = self._address
        if addr.startswith("@"):  # abstract namespace socket
            addr = "\0" + addr[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(addr)
                sock.sendall(payload)
        except OSError:
            pass

    def ready(self, status: str = "") -> None:
        self.notify(ready="1", **({"status": status} if status else {}))

    def status(self, text: str) -> None:
        """STATUS=text, sent only when it differs from the last one sent."""
        if text != self._last_status:
            self.notify(status=text)

    def watchdog(self) -> None:
        self.notify(watchdog="1")

    def reloading(self) -> None:
        # MONOTONIC_USEC: systemd >= 253 requires it with RELOADING=1 (Type=notify-reload);
        # older ones ignore it. CLOCK_MONOTONIC, as systemd reads it.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify(reloading="1", monotonic_usec=str(usec))

    def stopping(self, status: str = "") -> None:
        self.notify(stopping="1", **({"status": status} if status else {}))

    def extend_timeout(self, seconds: float, status: str = "") -> None:
        """EXTEND_TIMEOUT_USEC: the start, reload or stop in progress may take ``seconds``
        more from now (systemd extends its timeout; send again before it runs out)."""
        fields = {"extend_timeout_usec": _usec(seconds)}
        if status:
            fields["status"] = status
        self.notify(**fields)
