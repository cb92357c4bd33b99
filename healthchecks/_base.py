"""Shared machinery for probes: the deadline, latency measurement and error mapping.

Rule: every probe body runs through :func:`guarded`, which is the only place that turns
exceptions into results. Probe bodies return ``(Status, reason)`` for outcomes they
understand and may let anything else escape; ``guarded`` maps what escapes:

* the deadline expiring -> TIMEOUT (with the stage the probe was in),
* ``OSError`` (refused, unreachable, reset...) -> FAIL,
* any other ``Exception`` -> ERROR (a bug or misconfiguration, not a verdict on the target),
* ``CancelledError`` (and other ``BaseException``) -> propagates untouched.
"""

from __future__ import annotations

import asyncio
import errno as errno_mod
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

from healthchecks.result import ProbeResult, Status

# Reasons end up in logs, metrics labels' neighbours and the status JSON: keep them to
# one short line so a misbehaving target cannot flood them.
MAX_REASON = 200


class Stage:
    """Mutable breadcrumb a probe body updates so a timeout can say where it stuck."""

    __slots__ = ("name",)

    def __init__(self, name: str = "starting") -> None:
        self.name = name


Body = Callable[[Stage], Awaitable[tuple[Status, str]]]


def one_line(text: str, limit: int = MAX_REASON) -> str:
    """Collapse whitespace/newlines and bound the length of a reason."""
    flat = " ".join(text.split())
    if len(flat) > limit:
        flat = flat[: limit - 3] + "..."
    return flat


def os_reason(exc: OSError) -> str:
    """Human text for a socket error: the errno meaning, without asyncio's address noise."""
    if exc.errno is not None and exc.errno in errno_mod.errorcode:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


def format_seconds(seconds: float) -> str:
    """Compact duration for reasons: 250ms, 1.5s, 3.0d."""
    if abs(seconds) < 1:
        return f"{seconds * 1000:.0f}ms"
    if abs(seconds) < 120:
        return f"{seconds:.3g}s"
    if abs(seconds) < 2 * 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


async def guarded(body: Body, timeout: float) -> ProbeResult:  # noqa: ASYNC109 (see Probe)
    """Run ``body`` under a hard deadline and map whatever happens to a ProbeResult."""
    stage = Stage()
    start = time.monotonic()
    status: Status
    reason: str
    scope: asyncio.Timeout | None = None
    try:
        async with asyncio.timeout(timeout) as scope:
            status, reason = await body(stage)
    except TimeoutError as exc:
        # TimeoutError is also an OSError (ETIMEDOUT from the kernel): only our own
        # deadline counts as TIMEOUT; a kernel-level timeout is the target failing.
        if scope is not None and scope.expired():
            status = Status.TIMEOUT
            reason = f"timed out after {format_seconds(timeout)} ({stage.name})"
        else:
            status, reason = Status.FAIL, f"{stage.name}: {os_reason(exc)}"
    except OSError as exc:
        status, reason = Status.FAIL, f"{stage.name}: {os_reason(exc)}"
    except Exception as exc:  # the contract: run() never raises; a bug becomes ERROR
        status = Status.ERROR
        reason = f"internal error ({stage.name}): {type(exc).__name__}: {exc}"
    return ProbeResult(status, time.monotonic() - start, one_line(reason))


def host_port(host: str, port: int) -> str:
    """``host:port`` with IPv6 literals bracketed, as in URLs."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def check_port(port: int) -> None:
    if not 0 < port < 65536:
        raise ValueError(f"port must be 1..65535, got {port}")



async def close_stream(writer: asyncio.StreamWriter, grace: float = 0.25) -> None:
    """Close a connection politely, but never wait on the peer for more than ``grace``.

    A TLS close waits for the peer's close_notify; a hung peer must not turn a finished
    probe into a slow one, so after ``grace`` the transport is aborted instead.
    """
    writer.close()
    try:
        async with asyncio.timeout(grace):
            await writer.wait_closed()
    except (TimeoutError, OSError):
        writer.transport.abort()


def str_pairs(value: Iterable[tuple[str, str]] | Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """Normalise headers/env given as pairs or as a mapping into a hashable tuple."""
    items = value.items() if isinstance(value, Mapping) else value
    return tuple((str(k), str(v)) for k, v in items)
