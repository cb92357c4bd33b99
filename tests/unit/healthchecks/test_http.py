"""HttpProbe against a real aiohttp server (plain and TLS) on the loopback."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from healthchecks import HttpProbe, Status

from .conftest import needs_ipv6

Serve = Callable[..., Awaitable[int]]


def _app() -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="status: ok\n")

    async def unavailable(request: web.Request) -> web.Response:
        return web.Response(status=503, text="down")

    async def echo(request: web.Request) -> web.Response:
        lines = [f"{request.method} host={request.host}"]
        lines += [f"{k}={v}" for k, v in request.headers.items() if k.startswith("X-")]
        return web.Response(text="\n".join(lines))

    async def big(request: web.Request) -> web.StreamResponse:
        # 1 MiB of filler, then the marker: beyond the 64 KiB the probe reads.
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"x" * (1 << 20) + b"MARKER")
        return resp

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(10)
        return web.Response(text="late")

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/ok")

    app = web.Application()
    app.router.add_route("*", "/ok", ok)
    app.router.add_get("/down", unavailable)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/big", big)
    app.router.add_get("/slow", slow)
    app.router.add_get("/redirect", redirect)
    return app


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """serve(host="127.0.0.1", ssl_context=None) -> port of a running test app."""
    runners: list[web.AppRunner] = []

    async def start(host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None) -> int:
        runner = web.AppRunner(_app(), shutdown_timeout=0.1)
        await runner.setup()
        runners.append(runner)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.bind((host, 0))
        await web.SockSite(runner, sock, ssl_context=ssl_context).start()
        port: int = sock.getsockname()[1]
        return port

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def http_port(serve: Serve) -> int:
    return await serve()


@pytest.fixture
def server_names() -> list[str]:
    return []


@pytest.fixture
def tls_server_context(ca: trustme.CA, server_names: list[str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("www.example.test", "127.0.0.1").configure_cert(ctx)

    def record_sni(sock: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        server_names.append(name or "")

    ctx.sni_callback = record_sni
    return ctx


@pytest.fixture
async def https_port(serve: Serve, tls_server_context: ssl.SSLContext) -> int:
    return await serve(ssl_context=tls_server_context)


async def test_expected_status_is_ok(http_port: int) -> None:
    probe = HttpProbe(f"http://127.0.0.1:{http_port}/ok")
    result = await probe.run(2.0)
    assert (result.status, result.reason) == (Status.OK, "status 200")
    assert probe.describe() == f"http GET http://127.0.0.1:{http_port}/ok"


async def test_unexpected_status_fails_naming_both(http_port: int) -> None:
    result = await HttpProbe(f"http://127.0.0.1:{http_port}/down").run(2.0)
    assert (result.status, result.reason) == (Status.FAIL, "status 503 not in {200}")


async def test_status_set_can_accept_other_codes(http_port: int) -> None:
    probe = HttpProbe(f"http://127.0.0.1:{http_port}/down", expect_status=frozenset({200, 503}))
    assert (await probe.run(2.0)).status is Status.OK


async def test_redirects_are_not_followed(http_port: int) -> None:
    probe = HttpProbe(f"http://127.0.0.1:{http_port}/redirect")
    assert (await probe.run(2.0)).reason == "status 302 not in {200}"
    probe = HttpProbe(f"http://127.0.0.1:{http_port}/redirect", expect_status=frozenset({302}))
    assert (await probe.run(2.0)).status is Status.OK


async def test_body_regex_match_and_mismatch(http_port: int) -> None:
    url = f"http://127.0.0.1:{http_port}/ok"
    assert (await HttpProbe(url, body_regex=r"status: o+k").run(2.0)).status is Status.OK
    result = await HttpProbe(url, body_regex="healthy").run(2.0)
    assert (result.status, result.reason) == (Status.FAIL, "body does not match /healthy/")


async def test_body_regex_only_sees_the_first_64_kib(http_port: int) -> None:
    url = f"http://127.0.0.1:{http_port}/big"
    assert (await HttpProbe(url, body_regex="^x+").run(2.0)).status is Status.OK
    result = await HttpProbe(url, body_regex="MARKER").run(2.0)
    assert result.status is Status.FAIL


async def test_method_host_header_and_extra_headers_are_sent(http_port: int) -> None:
    probe = HttpProbe(
        f"http://127.0.0.1:{http_port}/echo",
        method="post",
        host_header="www.example.test",
        headers=(("X-Probe", "anycastd"),),
        body_regex="^POST host=www.example.test\nX-Probe=anycastd$",
    )
    result = await probe.run(2.0)
    assert result.status is Status.OK, result.reason


async def test_refused_port_fails(closed_port: int) -> None:
    result = await HttpProbe(f"http://127.0.0.1:{closed_port}/").run(2.0)
    assert (result.status, result.reason) == (Status.FAIL, "connect: Connection refused")


async def test_slow_handler_times_out_waiting_for_the_response(http_port: int) -> None:
    start = time.monotonic()
    result = await HttpProbe(f"http://127.0.0.1:{http_port}/slow").run(0.3)
    assert result.status is Status.TIMEOUT
    assert result.reason == "timed out after 300ms (request)"
    assert time.monotonic() - start < 0.8


async def test_server_that_accepts_and_hangs_times_out(hang_port: int) -> None:
    start = time.monotonic()
    result = await HttpProbe(f"http://127.0.0.1:{hang_port}/").run(0.3)
    assert result.status is Status.TIMEOUT
    assert time.monotonic() - start < 0.8


async def test_server_that_closes_without_answer_fails() -> None:
    async def slam(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.close()

    server = await asyncio.start_server(slam, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        result = await HttpProbe(f"http://127.0.0.1:{port}/").run(2.0)
    finally:
        server.close()
        await server.wait_closed()
    assert result.status is Status.FAIL
    assert "ServerDisconnected" in result.reason


@needs_ipv6
async def test_ipv6_literal_url(serve: Serve) -> None:
    port = await serve("::1")
    assert (await HttpProbe(f"http://[::1]:{port}/ok").run(2.0)).status is Status.OK


# --- https ----------------------------------------------------------------------------


async def test_https_verified_against_the_given_ca(https_port: int, ca_file: str) -> None:
    probe = HttpProbe(f"https://127.0.0.1:{https_port}/ok", ca_file=ca_file)
    result = await probe.run(2.0)
    assert (result.status, result.reason) == (Status.OK, "status 200")


async def test_https_untrusted_certificate_fails(https_port: int) -> None:
    result = await HttpProbe(f"https://127.0.0.1:{https_port}/ok").run(2.0)
    assert result.status is Status.FAIL
    assert result.reason.startswith("certificate verify failed: ")


async def test_https_without_verification_accepts_unknown_ca(https_port: int) -> None:
    result = await HttpProbe(f"https://127.0.0.1:{https_port}/ok", verify=False).run(2.0)
    assert result.status is Status.OK


async def test_sni_override_is_sent_and_verified(
    https_port: int, ca_file: str, server_names: list[str]
) -> None:
    url = f"https://127.0.0.1:{https_port}/ok"
    assert (await HttpProbe(url, ca_file=ca_file, sni="www.example.test").run(2.0)).ok
    assert server_names == ["www.example.test"]
    # A name the certificate does not cover fails verification.
    result = await HttpProbe(url, ca_file=ca_file, sni="other.example.test").run(2.0)
    assert result.status is Status.FAIL


async def test_host_header_drives_sni_by_default(
    https_port: int, ca_file: str, server_names: list[str]
) -> None:
    probe = HttpProbe(
        f"https://127.0.0.1:{https_port}/echo",
        ca_file=ca_file,
        host_header=f"www.example.test:{https_port}",
        body_regex="host=www.example.test",
    )
    result = await probe.run(2.0)
    assert result.status is Status.OK, result.reason
    assert server_names == ["www.example.test"]


async def test_client_certificate_is_presented(
    serve: Serve, ca: trustme.CA, ca_file: str, tmp_path: Path
) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(server_ctx)
    port = await serve(ssl_context=server_ctx)

    client = ca.issue_cert("probe@example.test")
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    client.cert_chain_pems[0].write_to_path(str(cert))
    client.private_key_pem.write_to_path(str(key))

    url = f"https://127.0.0.1:{port}/ok"
    with_cert = HttpProbe(url, ca_file=ca_file, client_cert=str(cert), client_key=str(key))
    assert (await with_cert.run(2.0)).status is Status.OK
    without = await HttpProbe(url, ca_file=ca_file).run(2.0)
    assert without.status is Status.FAIL


async def test_missing_ca_file_is_an_error(https_port: int, tmp_path: Path) -> None:
    probe = HttpProbe(f"https://127.0.0.1:{https_port}/ok", ca_file=str(tmp_path / "nope"))
    result = await probe.run(2.0)
    assert result.status is Status.ERROR
    assert result.reason.startswith("tls setup:")


async def test_tls_server_that_hangs_in_handshake_times_out(hang_port: int) -> None:
    start = time.monotonic()
    result = await HttpProbe(f"https://127.0.0.1:{hang_port}/", verify=False).run(0.3)
    assert result.status is Status.TIMEOUT
    assert time.monotonic() - start < 0.8


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"url": "ftp://x/"}, "url"),
        ({"url": "http:///nohost"}, "url"),
        ({"url": "http://x/", "body_regex": "("}, "body_regex"),
        ({"url": "http://x/", "expect_status": frozenset()}, "expect_status"),
        ({"url": "http://x/", "expect_status": frozenset({42})}, "expect_status"),
        ({"url": "http://x/", "client_key": "k.pem"}, "client_cert"),
    ],
)
def test_invalid_options_are_rejected(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        HttpProbe(**kwargs)  # type: ignore[arg-type]


async def test_sni_is_sent_even_without_verification(
    https_port: int, server_names: list[str]
) -> None:
    probe = HttpProbe(f"https://127.0.0.1:{https_port}/ok", verify=False, sni="a.example.test")
    assert (await probe.run(2.0)).status is Status.OK
    assert server_names == ["a.example.test"]
