"""``python -m healthchecks``: one Nagios line, Nagios exit codes, no tracebacks."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import socket
import ssl
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from healthchecks.__main__ import duration

from .dns_server import Zone, start_dns_server


@dataclass
class Run:
    code: int
    out: str
    err: str


async def cli(*args: str) -> Run:
    # Async so servers living on the test's event loop keep answering meanwhile.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "healthchecks", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


@pytest.fixture
def listening_port() -> Iterator[int]:
    # The kernel completes the handshake into the backlog; no accept() needed.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s.getsockname()[1]


async def test_tcp_ok_exits_0_with_one_line(listening_port: int) -> None:
    run = await cli("tcp", "--host", "127.0.0.1", "--port", str(listening_port))
    assert run.code == 0
    assert re.fullmatch(rf"OK - tcp 127\.0\.0\.1:{listening_port} - \d+\.\dms\n", run.out)


async def test_tcp_refused_exits_2_critical(closed_port: int) -> None:
    run = await cli("tcp", "--host", "127.0.0.1", "--port", str(closed_port))
    assert run.code == 2
    assert run.out.startswith(
        f"CRITICAL - tcp 127.0.0.1:{closed_port} - connect: Connection refused - "
    )


async def test_timeout_is_critical_and_may_follow_the_probe_name(hang_port: int) -> None:
    run = await cli("http", "--url", f"http://127.0.0.1:{hang_port}/", "--timeout", "200ms")
    assert run.code == 2
    assert "timed out after 200ms" in run.out


async def test_missing_required_option_is_unknown_without_traceback() -> None:
    run = await cli("tcp", "--host", "127.0.0.1")
    assert run.code == 3
    assert "UNKNOWN" in run.err
    assert "--port" in run.err
    assert "Traceback" not in run.err


@pytest.mark.parametrize(
    "args",
    [
        ("bogus",),
        (),
        ("tcp", "--host", "127.0.0.1", "--port", "eighty"),
        ("--timeout", "soon", "tcp", "--host", "127.0.0.1", "--port", "1"),
        ("http", "--url", "http://127.0.0.1/", "--body-regex", "("),
        ("dns", "--server", "not-an-ip", "--qname", "x"),
        ("exec",),
        ("process",),
        ("process", "--pidfile", "/run/x.pid", "--unit", "x"),
        ("listen", "--address", "localhost", "--port", "53"),
        ("link", "--interface", "x" * 20),
    ],
)
async def test_usage_and_option_errors_are_unknown(args: tuple[str, ...]) -> None:
    run = await cli(*args)
    assert run.code == 3
    assert run.out == ""
    assert "UNKNOWN" in run.err
    assert "Traceback" not in run.err


async def test_exec_probe_passes_argv_without_a_shell(tmp_path: Path) -> None:
    run = await cli("exec", "--", "/bin/sh", "-c", "echo 'all; good'; exit 1")
    assert run.code == 2
    assert " - exit 1: all; good - " in run.out


async def test_missing_executable_is_unknown() -> None:
    run = await cli("exec", "--", "/nonexistent/check")
    assert run.code == 3
    assert run.out.startswith("UNKNOWN - exec /nonexistent/check - cannot execute")


async def test_file_probe(tmp_path: Path) -> None:
    flag = tmp_path / "maintenance"
    assert (await cli("file", "--path", str(flag), "--expect", "absent")).code == 0
    assert (await cli("file", "--path", str(flag))).code == 2


async def test_help_exits_0() -> None:
    run = await cli("--help")
    assert run.code == 0
    for probe in ("tcp", "process", "listen", "link"):
        assert probe in run.out


async def test_process_probe_by_pidfile_and_by_cmdline(tmp_path: Path) -> None:
    sleeper = (sys.executable, "-c", "import time; time.sleep(60)")
    child = await asyncio.create_subprocess_exec(*sleeper)
    try:
        (tmp_path / "x.pid").write_text(f"{child.pid}\n")
        ok = await cli("process", "--pidfile", str(tmp_path / "x.pid"))
        by_argv = await cli("process", "--", *sleeper)
        missing = await cli("process", "--", "/nonexistent/daemon", "--flag")
    finally:
        child.kill()
        await child.wait()
    assert (ok.code, by_argv.code, missing.code) == (0, 0, 2), (ok, by_argv, missing)
    assert ok.out.startswith(f"OK - process pidfile {tmp_path / 'x.pid'} - pid {child.pid} - ")
    assert "no process matches cmdline ['/nonexistent/daemon', '--flag']" in missing.out


async def test_listen_probe_reads_the_socket_table(listening_port: int, closed_port: int) -> None:
    ok = await cli("listen", "--address", "127.0.0.1", "--port", str(listening_port))
    udp = await cli("listen", "--address", "127.0.0.1", "--port", str(listening_port),
                    "--protocol", "udp")  # fmt: skip
    assert (ok.code, udp.code) == (0, 2), (ok, udp)
    assert ok.out.startswith(f"OK - listen tcp 127.0.0.1:{listening_port} - bound to ")
    assert f"no udp socket bound on 127.0.0.1:{listening_port}" in udp.out


async def test_link_probe() -> None:
    ok = await cli("link", "--interface", "lo")
    missing = await cli("link", "--interface", "nosuchif0")
    assert (ok.code, missing.code) == (0, 2), (ok, missing)
    assert "no interface nosuchif0" in missing.out


@pytest.mark.parametrize(
    ("text", "seconds"), [("2", 2.0), ("1.5s", 1.5), ("250ms", 0.25), ("7d", 604800.0)]
)
def test_duration_units(text: str, seconds: float) -> None:
    assert duration(text) == seconds


async def test_http_options_map_onto_the_probe() -> None:
    async def down(request: web.Request) -> web.Response:
        return web.Response(status=503, text=f"down for {request.headers.get('X-Why')}")

    app = web.Application()
    app.router.add_get("/", down)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    try:
        ok = await cli("http", "--url", url, "--expect-status", "200,503",
                       "--header", "X-Why: upgrade", "--body-regex", "for upgrade")  # fmt: skip
        bad = await cli("http", "--url", url)
    finally:
        await runner.cleanup()
    assert (ok.code, bad.code) == (0, 2), (ok, bad)
    assert " - status 503 not in {200} - " in bad.out


async def test_dns_options_map_onto_the_probe() -> None:
    zone = Zone(records={("a.test.", "A"): ["192.0.2.1"]})
    server = await start_dns_server("127.0.0.1", zone)
    base = ("dns", "--server", "127.0.0.1", "--port", str(server.port), "--qname", "a.test")
    try:
        ok = await cli(*base, "--expect", "192.0.2.1", "--transport", "tcp")
        bad = await cli(*base, "--rcode", "NXDOMAIN")
    finally:
        await server.close()
    assert (ok.code, bad.code) == (0, 2), (ok, bad)
    assert "rcode NOERROR, expected NXDOMAIN" in bad.out


async def test_tls_options_map_onto_the_probe(
    ca: trustme.CA, ca_file: str, utcnow: dt.datetime
) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", not_after=utcnow + dt.timedelta(days=30)).configure_cert(ctx)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            await reader.read()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    base = ("tls", "--host", "127.0.0.1", "--port", str(server.sockets[0].getsockname()[1]))
    try:
        ok = await cli(*base, "--ca-file", ca_file, "--min-remaining", "7d")
        soon = await cli(*base, "--insecure", "--min-remaining", "60d")
    finally:
        server.close()
        await server.wait_closed()
    assert (ok.code, soon.code) == (0, 2), (ok, soon)
    assert "(< 60.0d)" in soon.out
