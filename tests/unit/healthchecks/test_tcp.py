"""TcpProbe against real listeners on the loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from healthchecks import Status, TcpProbe

from .conftest import eventually, needs_ipv6


async def _server(host: str) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.read())  # b"" means the probe closed cleanly (FIN)
        writer.close()

    seen: list[bytes] = []
    server = await asyncio.start_server(handle, host, 0)
    server.seen = seen  # type: ignore[attr-defined]
    return server


@pytest.fixture
async def v4_server() -> AsyncIterator[asyncio.Server]:
    server = await _server("127.0.0.1")
    yield server
    server.close()
    await server.wait_closed()


async def test_connect_succeeds_and_closes_cleanly(v4_server: asyncio.Server) -> None:
    port = v4_server.sockets[0].getsockname()[1]
    result = await TcpProbe("127.0.0.1", port).run(1.0)
    assert result.status is Status.OK
    assert result.reason == ""
    assert await eventually(lambda: bool(v4_server.seen))  # type: ignore[attr-defined]
    assert v4_server.seen == [b""]  # type: ignore[attr-defined]


@needs_ipv6
async def test_connect_over_ipv6() -> None:
    server = await _server("::1")
    try:
        port = server.sockets[0].getsockname()[1]
        probe = TcpProbe("::1", port)
        assert probe.describe() == f"tcp [::1]:{port}"
        result = await probe.run(1.0)
        assert result.status is Status.OK
    finally:
        server.close()
        await server.wait_closed()


async def test_refused_port_fails(closed_port: int) -> None:
    result = await TcpProbe("127.0.0.1", closed_port).run(1.0)
    assert result.status is Status.FAIL
    assert result.reason == "connect: Connection refused"


async def test_full_accept_queue_times_out() -> None:
    # A listener that never accepts, with its backlog filled: further SYNs are dropped,
    # so connect() hangs: the only way to make a loopback connect time out.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        start = time.monotonic()
        result = await TcpProbe("127.0.0.1", port).run(0.3)
        elapsed = time.monotonic() - start
    finally:
        for s in fillers:
            s.close()
        listener.close()
    assert result.status is Status.TIMEOUT
    assert result.reason == "timed out after 300ms (connect)"
    assert 0.3 <= elapsed < 0.8


async def test_unresolvable_name_fails() -> None:
    result = await TcpProbe("name.invalid", 80).run(2.0)
    assert result.status is Status.FAIL


def test_invalid_port_is_rejected_at_construction() -> None:
    with pytest.raises(ValueError, match="port"):
        TcpProbe("127.0.0.1", 0)


@contextlib.contextmanager
def _stuck_listener() -> Iterator[int]:
    """A port whose accept queue is full, so a connect() to it stays pending."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    try:
        for _ in range(4):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex(listener.getsockname())
            fillers.append(s)
        yield listener.getsockname()[1]
    finally:
        for s in fillers:
            s.close()
        listener.close()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_ip_literal_probes_compare_and_print_by_their_options_only() -> None:
    probe = TcpProbe("127.0.0.1", 80)
    assert probe == TcpProbe("127.0.0.1", 80)
    assert hash(probe) == hash(TcpProbe("127.0.0.1", 80))
    assert probe != TcpProbe("localhost", 80)
    assert repr(probe) == "TcpProbe(host='127.0.0.1', port=80)"


async def test_host_name_is_resolved_and_its_addresses_tried_in_turn(
    v4_server: asyncio.Server,
) -> None:
    # "localhost" may resolve to ::1 first: refused there, it must go on to 127.0.0.1
    port = v4_server.sockets[0].getsockname()[1]
    result = await TcpProbe("localhost", port).run(2.0)
    assert (result.status, result.reason) == (Status.OK, "")


async def test_unresolvable_name_fails_in_the_resolve_stage() -> None:
    result = await TcpProbe("name.invalid", 80).run(2.0)
    assert result.status is Status.FAIL
    assert result.reason.startswith("resolve: ")


async def test_a_timed_out_connect_leaves_no_socket_open() -> None:
    with _stuck_listener() as port:
        before = _open_fds()
        result = await TcpProbe("127.0.0.1", port).run(0.2)
        assert result.status is Status.TIMEOUT
        assert _open_fds() == before


async def test_cancellation_propagates_and_closes_the_socket() -> None:
    with _stuck_listener() as port:
        before = _open_fds()
        task = asyncio.create_task(TcpProbe("127.0.0.1", port).run(5.0))
        await asyncio.sleep(0.1)
        assert not task.done()
        assert _open_fds() == before + 1  # the pending connect
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert _open_fds() == before


async def test_many_concurrent_runs_all_succeed_and_leave_no_socket_open(
    v4_server: asyncio.Server,
) -> None:
    port = v4_server.sockets[0].getsockname()[1]
    probe = TcpProbe("127.0.0.1", port)
    before = _open_fds()
    results = await asyncio.gather(*(probe.run(2.0) for _ in range(200)))
    assert {r.status for r in results} == {Status.OK}
    # the server's side of each connection closes once it has read the FIN
    assert await eventually(lambda: _open_fds() == before)
