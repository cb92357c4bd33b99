"""sd_notify without libsystemd: READY, STATUS, WATCHDOG and STOPPING datagrams.

A no-op when NOTIFY_SOCKET is unset (not started by systemd, or in tests), so callers never
branch on it. Errors sending to the socket are swallowed: systemd being unreachable must not
take the daemon down; the watchdog will notice if it matters.
"""

from __future__ import annotations

import os
import socket


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        self._address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")

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
        if not self._address:
            return
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
        self.notify(status=text)

    def watchdog(self) -> None:
        self.notify(watchdog="1")

    def reloading(self) -> None:
        self.notify(reloading="1")

    def stopping(self) -> None:
        self.notify(stopping="1")
