"""ListenProbe: the coverage rule, dump parsing on handcrafted bytes, the shared cache,
and real sockets on 127.0.0.1 (sock_diag needs no privileges)."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterator

import pytest

from healthchecks import ListenProbe, Status
from healthchecks import _netlink as nl
from healthchecks.listen import (
    INET_DIAG_SKV6ONLY,
    SOCK_DIAG_BY_FAMILY,
    SocketTable,
    covers,
    parse_dump,
)

from .conftest import needs_ipv6

V4 = socket.AF_INET
V6 = socket.AF_INET6
LO = socket.inet_pton(V4, "127.0.0.1")
ANY4 = bytes(4)
ANY6 = bytes(16)
MAPPED = bytes(10) + b"\xff\xff" + LO


def diag_msg(family: int, port: int, addr: bytes, v6only: bool | None = None) -> memoryview:
    sockid = struct.pack("!HH", port, 0) + addr.ljust(16, b"\0") + bytes(16)
    sockid += struct.pack("=III", 0, 0, 0)
    body = struct.pack("=BBBB", family, 10, 0, 0) + sockid + struct.pack("=5I", 0, 0, 0, 0, 1)
    if v6only is not None:
        body += nl.pack_attr(INET_DIAG_SKV6ONLY, bytes([v6only]))
    return memoryview(body)


def test_dump_is_indexed_by_port_with_the_v6only_flag() -> None:
    table = parse_dump([
        (SOCK_DIAG_BY_FAMILY, diag_msg(V4, 80, LO)),
        (SOCK_DIAG_BY_FAMILY, diag_msg(V4, 80, ANY4)),
        (SOCK_DIAG_BY_FAMILY, diag_msg(V6, 53, ANY6, v6only=True)),
        (SOCK_DIAG_BY_FAMILY, memoryview(b"short")),
    ])  # fmt: skip
    assert table == {80: ((LO, False), (ANY4, False)), 53: ((ANY6, True),)}


@pytest.mark.parametrize(
    ("family", "addr", "sock", "expected"),
    [
        (V4, LO, (V4, LO, False), True),  # exact
        (V4, LO, (V4, ANY4, False), True),  # wildcard of the family
        (V4, LO, (V4, socket.inet_pton(V4, "127.0.0.2"), False), False),  # another address
        (V4, ANY4, (V4, LO, False), False),  # a wildcard check needs a wildcard socket
        (V4, LO, (V6, ANY6, False), True),  # dual-stack :: takes IPv4
        (V4, LO, (V6, ANY6, True), False),  # ...unless v6-only
        (V4, LO, (V6, MAPPED, False), True),  # ::ffff:127.0.0.1
        (V6, socket.inet_pton(V6, "::1"), (V4, ANY4, False), False),  # IPv4 never covers IPv6
        (V6, socket.inet_pton(V6, "::1"), (V6, ANY6, True), True),
    ],
)
def test_coverage_rule(
    family: int, addr: bytes, sock: tuple[int, bytes, bool], expected: bool
) -> None:
    assert covers(family, addr, *sock) is expected


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"address": "localhost", "port": 1}, "IP literal"),
     ({"address": "127.0.0.1", "port": 0}, "port"),
     ({"address": "127.0.0.1", "port": 1, "protocol": "sctp"}, "protocol")],
)  # fmt: skip
def test_bad_options_are_rejected(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ListenProbe(**kwargs)  # type: ignore[arg-type]


@pytest.fixture
def tcp_listener() -> Iterator[socket.socket]:
    with socket.socket(V4, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield s


@pytest.fixture
def udp_bound() -> Iterator[socket.socket]:
    with socket.socket(V4, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield s


async def test_tcp_listener_is_ok_and_closing_it_fails(tcp_listener: socket.socket) -> None:
    port = tcp_listener.getsockname()[1]
    table = SocketTable(ttl=0)
    probe = ListenProbe("127.0.0.1", port, table=table)
    result = await probe.run(1.0)
    assert (result.status, result.reason) == (Status.OK, f"bound to 127.0.0.1:{port}")
    tcp_listener.close()
    result = await probe.run(1.0)
    assert result.status is Status.FAIL
    assert result.reason == f"no tcp socket listening on 127.0.0.1:{port}"
    table.close()


async def test_bound_udp_socket_is_ok_and_is_not_a_tcp_listener(udp_bound: socket.socket) -> None:
    port = udp_bound.getsockname()[1]
    table = SocketTable(ttl=0)
    assert (await ListenProbe("127.0.0.1", port, "udp", table=table).run(1.0)).ok
    assert not (await ListenProbe("127.0.0.1", port, "tcp", table=table).run(1.0)).ok
    table.close()


async def test_connected_udp_socket_is_not_a_server(udp_bound: socket.socket) -> None:
    with socket.socket(V4, socket.SOCK_DGRAM) as client:
        client.bind(("127.0.0.1", 0))
        client.connect(udp_bound.getsockname())
        port = client.getsockname()[1]
        result = await ListenProbe("127.0.0.1", port, "udp", table=SocketTable(ttl=0)).run(1.0)
    assert result.status is Status.FAIL


async def test_established_tcp_connection_is_not_a_listener(tcp_listener: socket.socket) -> None:
    with socket.create_connection(tcp_listener.getsockname()) as client:
        port = client.getsockname()[1]
        result = await ListenProbe("127.0.0.1", port, table=SocketTable(ttl=0)).run(1.0)
    assert result.status is Status.FAIL


@needs_ipv6
async def test_dual_stack_wildcard_covers_ipv4_but_v6only_does_not() -> None:
    table = SocketTable(ttl=0)
    for v6only, expected in ((0, Status.OK), (1, Status.FAIL)):
        with socket.socket(V6, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
            s.bind(("::", 0))
            s.listen(1)
            port = s.getsockname()[1]
            result = await ListenProbe("127.0.0.1", port, table=table).run(1.0)
        assert result.status is expected, (v6only, result)
    table.close()


async def test_concurrent_checks_share_one_dump_per_ttl(tcp_listener: socket.socket) -> None:
    now = [100.0]
    table = SocketTable(ttl=0.02, clock=lambda: now[0])
    port = tcp_listener.getsockname()[1]
    probes = [ListenProbe("127.0.0.1", port, table=table) for _ in range(200)]
    results = await asyncio.gather(*(p.run(1.0) for p in probes))
    assert all(r.ok for r in results)
    assert table.dumps == 1
    now[0] += 0.01  # within the TTL: served from the cache
    assert (await probes[0].run(1.0)).ok
    assert table.dumps == 1
    now[0] += 0.02  # expired: one new dump
    await asyncio.gather(*(p.run(1.0) for p in probes))
    assert table.dumps == 2
    table.close()


async def test_a_cancelled_check_does_not_cancel_the_shared_dump(
    tcp_listener: socket.socket,
) -> None:
    table = SocketTable(ttl=10)
    probe = ListenProbe("127.0.0.1", tcp_listener.getsockname()[1], table=table)
    first = asyncio.create_task(probe.run(1.0))
    second = asyncio.create_task(probe.run(1.0))
    await asyncio.sleep(0)
    first.cancel()
    assert (await second).ok
    assert table.dumps == 1
    table.close()
