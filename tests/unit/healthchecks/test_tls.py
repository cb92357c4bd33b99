"""TlsProbe against real TLS listeners with certificates the tests make."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trustme

from healthchecks import Status, TlsProbe

from .conftest import close_quietly, needs_ipv6, self_signed

DAY = 86400.0
Serve = Callable[..., Awaitable[int]]


@pytest.fixture
async def serve_tls() -> AsyncIterator[Serve]:
    """serve_tls(ctx, host="127.0.0.1") -> port; records the SNI names it is sent."""
    servers: list[asyncio.Server] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read()
        except (OSError, ssl.SSLError):
            pass  # the probe may abort instead of a close_notify
        finally:
            await close_quietly(writer)

    async def start(ctx: ssl.SSLContext, host: str = "127.0.0.1") -> int:
        server = await asyncio.start_server(handle, host, 0, ssl=ctx)
        servers.append(server)
        port: int = server.sockets[0].getsockname()[1]
        return port

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def _ctx_from_files(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def _ctx_from_trustme(leaf: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(ctx)
    return ctx


@pytest.fixture
def good_ctx(ca: trustme.CA, utcnow: dt.datetime) -> ssl.SSLContext:
    leaf = ca.issue_cert(
        "www.example.test", "127.0.0.1", "::1", not_after=utcnow + dt.timedelta(days=30)
    )
    return _ctx_from_trustme(leaf)


async def test_valid_certificate_is_ok(serve_tls: Serve, good_ctx: ssl.SSLContext,
                                       ca_file: str) -> None:  # fmt: skip
    port = await serve_tls(good_ctx)
    result = await TlsProbe("127.0.0.1", port, ca_file=ca_file, min_remaining=7 * DAY).run(2.0)
    assert result.status is Status.OK, result.reason
    assert result.reason in ("certificate valid for 30.0d", "certificate valid for 29.9d")


async def test_untrusted_chain_fails(serve_tls: Serve, good_ctx: ssl.SSLContext) -> None:
    port = await serve_tls(good_ctx)
    result = await TlsProbe("127.0.0.1", port).run(2.0)
    assert result.status is Status.FAIL
    assert result.reason.startswith("certificate verify failed: ")


async def test_server_name_is_verified(serve_tls: Serve, good_ctx: ssl.SSLContext,
                                       ca_file: str) -> None:  # fmt: skip
    port = await serve_tls(good_ctx)
    ok = TlsProbe("127.0.0.1", port, server_name="www.example.test", ca_file=ca_file)
    assert (await ok.run(2.0)).status is Status.OK
    wrong = TlsProbe("127.0.0.1", port, server_name="other.example.test", ca_file=ca_file)
    result = await wrong.run(2.0)
    assert result.status is Status.FAIL
    assert "Hostname mismatch" in result.reason
    assert wrong.describe() == f"tls 127.0.0.1:{port} sni=other.example.test"


async def test_expired_certificate_fails_verification(
    serve_tls: Serve, ca: trustme.CA, ca_file: str, utcnow: dt.datetime
) -> None:
    leaf = ca.issue_cert(
        "127.0.0.1",
        not_before=utcnow - dt.timedelta(days=10),
        not_after=utcnow - dt.timedelta(days=1),
    )
    port = await serve_tls(_ctx_from_trustme(leaf))
    result = await TlsProbe("127.0.0.1", port, ca_file=ca_file).run(2.0)
    assert (result.status, result.reason) == (
        Status.FAIL,
        "certificate verify failed: certificate has expired",
    )


async def test_expired_certificate_fails_even_without_verification(
    serve_tls: Serve, tmp_path: Path, utcnow: dt.datetime
) -> None:
    cert, key = self_signed(
        tmp_path, "old.example.test", utcnow - dt.timedelta(days=10), utcnow - dt.timedelta(days=3)
    )
    port = await serve_tls(_ctx_from_files(cert, key))
    result = await TlsProbe("127.0.0.1", port, verify=False).run(2.0)
    assert (result.status, result.reason) == (Status.FAIL, "certificate expired 3.0d ago")


async def test_near_expiry_fails_min_remaining(
    serve_tls: Serve, tmp_path: Path, utcnow: dt.datetime
) -> None:
    cert, key = self_signed(
        tmp_path, "soon.example.test", utcnow - dt.timedelta(days=80), utcnow + dt.timedelta(days=2)
    )
    port = await serve_tls(_ctx_from_files(cert, key))
    now = utcnow.timestamp()
    near = TlsProbe("127.0.0.1", port, verify=False, min_remaining=7 * DAY, now=lambda: now)
    result = await near.run(2.0)
    assert (result.status, result.reason) == (Status.FAIL, "certificate expires in 2.0d (< 7.0d)")
    relaxed = TlsProbe("127.0.0.1", port, verify=False, min_remaining=DAY, now=lambda: now)
    assert (await relaxed.run(2.0)).reason == "certificate valid for 2.0d"


async def test_injected_clock_decides_remaining_lifetime(
    serve_tls: Serve, good_ctx: ssl.SSLContext, ca_file: str, utcnow: dt.datetime
) -> None:
    port = await serve_tls(good_ctx)
    in_25_days = utcnow.timestamp() + 25 * DAY
    probe = TlsProbe(
        "127.0.0.1", port, ca_file=ca_file, min_remaining=7 * DAY, now=lambda: in_25_days
    )
    result = await probe.run(2.0)
    assert (result.status, result.reason) == (Status.FAIL, "certificate expires in 5.0d (< 7.0d)")


async def test_not_yet_valid_certificate_fails(
    serve_tls: Serve, tmp_path: Path, utcnow: dt.datetime
) -> None:
    start = utcnow + dt.timedelta(days=1)
    cert, key = self_signed(tmp_path, "new.example.test", start, start + dt.timedelta(days=90))
    port = await serve_tls(_ctx_from_files(cert, key))
    result = await TlsProbe("127.0.0.1", port, verify=False).run(2.0)
    assert result.status is Status.FAIL
    assert result.reason == f"certificate not valid before {start:%Y-%m-%dT%H:%M:%SZ}"


@needs_ipv6
async def test_ipv6(serve_tls: Serve, good_ctx: ssl.SSLContext, ca_file: str) -> None:
    port = await serve_tls(good_ctx, "::1")
    assert (await TlsProbe("::1", port, ca_file=ca_file).run(2.0)).status is Status.OK


async def test_refused_port_fails(closed_port: int) -> None:
    result = await TlsProbe("127.0.0.1", closed_port).run(2.0)
    assert (result.status, result.reason) == (Status.FAIL, "connect: Connection refused")


async def test_server_that_hangs_in_handshake_times_out(hang_port: int) -> None:
    start = time.monotonic()
    result = await TlsProbe("127.0.0.1", hang_port, verify=False).run(0.3)
    assert (result.status, result.reason) == (Status.TIMEOUT, "timed out after 300ms (handshake)")
    assert time.monotonic() - start < 0.8


async def test_plaintext_server_fails_the_handshake() -> None:
    async def speak_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await close_quietly(writer)

    server = await asyncio.start_server(speak_http, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        result = await TlsProbe("127.0.0.1", port, verify=False).run(2.0)
    finally:
        server.close()
        await server.wait_closed()
    assert result.status is Status.FAIL
    assert result.reason.startswith("handshake")


async def test_missing_ca_file_is_an_error(tmp_path: Path) -> None:
    result = await TlsProbe("127.0.0.1", 443, ca_file=str(tmp_path / "nope.pem")).run(2.0)
    assert result.status is Status.ERROR


def test_negative_min_remaining_is_rejected() -> None:
    with pytest.raises(ValueError, match="min_remaining"):
        TlsProbe("127.0.0.1", 443, min_remaining=-1)
