"""The ExaBGP API protocol over one relay connection: one command at a time.

ExaBGP answers every command with ``done`` or ``error`` (plain text, no id), and answers some
lines ahead of queued route commands, so a command is only written after the previous one was
answered. Output lines of ``show`` commands arrive before their ``done``. JSON lines are
events (neighbor state changes) and never answers.

A command that times out leaves the stream out of step (a late answer would be taken for the
next command's), so the connection is closed: the relay reconnects and the speaker re-reads
the adj-rib-out.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from anycastd.errors import PermanentError, TransientError

ACTUATOR = "exabgp"
log = logging.getLogger("anycastd.bgp")

EventHandler = Callable[[dict[str, Any]], None]


class CommandError(PermanentError):
    """ExaBGP answered ``error``; ``command`` is the line that caused it."""

    def __init__(self, command: str) -> None:
        super().__init__(ACTUATOR, f"ExaBGP rejected command: {command}")
        self.command = command


class ApiConnection:
    """One relay connection. ``run()`` reads until EOF; ``command()`` sends and waits."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_event: EventHandler,
        *,
        timeout: float = 10.0,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._on_event = on_event
        self.timeout = timeout
        self._lock = asyncio.Lock()
        self._pending: asyncio.Future[list[str]] | None = None
        self._output: list[str] = []
        self.closed = asyncio.Event()
        self.exabgp_pid: int | None = None
        self.relay_takes_hold = False  # the relay said "hold" in its hello

    async def run(self) -> None:
        """Read lines until the relay goes away. Never raises except CancelledError."""
        try:
            while True:
                raw = await self._reader.readline()
                if not raw:
                    break
                self._handle(raw.decode("utf-8", "replace").rstrip("\r\n"))
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            log.warning("relay_connection_failed", extra={"error": str(exc)})
        finally:
            self._close("relay connection closed")

    def _handle(self, line: str) -> None:
        if not line:
            return
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except ValueError:
                log.warning("exabgp_event_unparseable", extra={"line": line[:200]})
                return
            if isinstance(event, dict):
                self._on_event(event)
            return
        if line in ("done", "error"):
            pending, output = self._pending, self._output
            self._pending, self._output = None, []
            if pending is None or pending.done():
                log.warning("exabgp_answer_unexpected", extra={"answer": line})
            elif line == "done":
                pending.set_result(output)
            else:
                pending.set_exception(_Rejected())
            return
        if self._pending is not None:
            self._output.append(line)

    def _close(self, reason: str) -> None:
        if self._pending is not None and not self._pending.done():
            self._pending.set_exception(TransientError(ACTUATOR, reason))
        self._pending = None
        self.closed.set()
        with contextlib.suppress(Exception):
            self._writer.close()

    def close(self) -> None:
        self._close("connection closed by anycastd")

    def notify(self, text: str) -> None:
        """Write one line meant for the relay itself (never answered, e.g. ``relay hold``).
        Safe between and during commands: one write, and no answer to pair."""
        if not self.closed.is_set():
            self._writer.write(text.encode() + b"\n")

    async def command(self, text: str, *, wait: float | None = None) -> list[str]:
        """Send one command; return its output lines. ``error`` → CommandError (permanent);
        a lost connection or timeout → TransientError."""
        async with self._lock:
            if self.closed.is_set():
                raise TransientError(ACTUATOR, "not connected to ExaBGP")
            loop = asyncio.get_running_loop()
            future: asyncio.Future[list[str]] = loop.create_future()
            self._pending, self._output = future, []
            try:
                self._writer.write(text.encode() + b"\n")
                await self._writer.drain()
                return await asyncio.wait_for(future, wait or self.timeout)
            except _Rejected:
                raise CommandError(text) from None
            except TimeoutError:
                self._close("timeout")
                raise TransientError(ACTUATOR, f"no answer within timeout to: {text}") from None
            except (OSError, RuntimeError) as exc:
                self._close(str(exc))
                raise TransientError(ACTUATOR, f"connection lost: {exc}") from exc
            except asyncio.CancelledError:
                # The answer to this command may still come and would be taken as the
                # answer to the next one: drop the connection (the relay reconnects and
                # the speaker re-reads the adj-rib-out).
                self._close("cancelled while waiting for an answer")
                raise


class _Rejected(Exception):
    pass
