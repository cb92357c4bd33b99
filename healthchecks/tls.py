"""TLS probe: handshake with host:port and check the server certificate's lifetime.

OK when the handshake succeeds (chain and name verified unless ``verify`` is off) and the
leaf certificate is currently valid with at least ``min_remaining`` seconds before
notAfter. The leaf is parsed from DER with ``cryptography`` in both modes, so expiry is
checked even when verification is off (self-signed backends). ``server_name`` is sent as
SNI and verified against the certificate; it defaults to ``host``. ``now`` is the wall
clock (certificates are wall-clock facts) and is injectable so tests need not wait days.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from cryptography import x509

from healthchecks._base import (
    Stage,
    check_port,
    close_stream,
    format_seconds,
    guarded,
    host_port,
)
from healthchecks._tls import client_context
from healthchecks.result import ProbeResult, Status

__all__ = ["TlsProbe"]


@dataclass(frozen=True, slots=True)
class TlsProbe:
    host: str
    port: int
    server_name: str | None = None
    min_remaining: float = 0.0
    verify: bool = True
    ca_file: str | None = None
    now: Callable[[], float] = field(default=time.time, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_port(self.port)
        if self.min_remaining < 0:
            raise ValueError(f"min_remaining must be >= 0, got {self.min_remaining}")

    def describe(self) -> str:
        sni = f" sni={self.server_name}" if self.server_name else ""
        return f"tls {host_port(self.host, self.port)}{sni}"

    async def run(self, timeout: float) -> ProbeResult:  # noqa: ASYNC109 (contract)
        return await guarded(self._check, timeout)

    async def _check(self, stage: Stage) -> tuple[Status, str]:
        stage.name = "tls setup"
        try:
            # In a thread: loading the trust store is file I/O (see http.py).
            ctx = await asyncio.to_thread(
                partial(client_context, verify=self.verify, ca_file=self.ca_file)
            )
        except (OSError, ssl.SSLError) as exc:
            return Status.ERROR, f"tls setup: {exc}"
        stage.name = "connect"
        _, writer = await asyncio.open_connection(self.host, self.port)
        try:
            stage.name = "handshake"
            outcome = await self._handshake(writer, ctx)
        except BaseException:
            # Deadline, cancellation or a socket error mid-handshake: nothing polite is
            # left to do, and waiting on the peer would overrun the deadline.
            writer.transport.abort()
            raise
        stage.name = "close"
        await close_stream(writer)
        if isinstance(outcome, tuple):
            return outcome
        try:
            cert = x509.load_der_x509_certificate(outcome)
        except ValueError as exc:  # only reachable with verify off: the target's fault
            return Status.FAIL, f"unparseable certificate: {exc}"
        return self._judge(cert.not_valid_before_utc, cert.not_valid_after_utc)

    async def _handshake(
        self, writer: asyncio.StreamWriter, ctx: ssl.SSLContext
    ) -> tuple[Status, str] | bytes:
        """The peer's DER certificate, or the failure that prevented getting it."""
        try:
            await writer.start_tls(ctx, server_hostname=self.server_name or self.host)
        except ssl.SSLCertVerificationError as exc:
            return Status.FAIL, f"certificate verify failed: {exc.verify_message}"
        except ssl.SSLError as exc:
            return Status.FAIL, f"handshake: {exc.reason or exc}"
        ssl_object = writer.get_extra_info("ssl_object")
        der: bytes | None = ssl_object.getpeercert(binary_form=True) if ssl_object else None
        if not der:
            return Status.FAIL, "server sent no certificate"
        return der

    def _judge(self, not_before: dt.datetime, not_after: dt.datetime) -> tuple[Status, str]:
        now = self.now()
        if now < not_before.timestamp():
            return Status.FAIL, f"certificate not valid before {not_before:%Y-%m-%dT%H:%M:%SZ}"
        remaining = not_after.timestamp() - now
        if remaining < 0:
            return Status.FAIL, f"certificate expired {format_seconds(-remaining)} ago"
        if remaining < self.min_remaining:
            return (
                Status.FAIL,
                f"certificate expires in {format_seconds(remaining)}"
                f" (< {format_seconds(self.min_remaining)})",
            )
        return Status.OK, f"certificate valid for {format_seconds(remaining)}"
