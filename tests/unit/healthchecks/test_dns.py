"""DnsProbe against a small real DNS server (see dns_server.py)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from healthchecks import DnsProbe, Status

from .conftest import needs_ipv6
from .dns_server import DnsServer, Zone, start_dns_server


@pytest.fixture
async def dns_server() -> AsyncIterator[DnsServer]:
    zone = Zone(
        records={
            ("svc.example.test.", "A"): ["192.0.2.1", "192.0.2.2"],
            ("svc.example.test.", "AAAA"): ["2001:db8::53"],
            ("alias.example.test.", "CNAME"): ["svc.example.test."],
        }
    )
    server = await start_dns_server("127.0.0.1", zone)
    yield server
    await server.close()


def _probe(server: DnsServer, **kwargs: object) -> DnsProbe:
    kwargs.setdefault("qname", "svc.example.test")
    return DnsProbe("127.0.0.1", port=server.port, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_expected_answers_are_ok(dns_server: DnsServer, transport: str) -> None:
    probe = _probe(dns_server, expect=frozenset({"192.0.2.1", "192.0.2.2"}), transport=transport)
    result = await probe.run(2.0)
    assert (result.status, result.reason) == (Status.OK, "rcode NOERROR, 2 answers")
    assert dns_server.zone.queries == ["A svc.example.test."]


async def test_missing_expected_answer_fails(dns_server: DnsServer) -> None:
    result = await _probe(dns_server, expect=frozenset({"192.0.2.1", "192.0.2.9"})).run(2.0)
    assert result.status is Status.FAIL
    assert result.reason == "missing 192.0.2.9 (answer: 192.0.2.1, 192.0.2.2)"


async def test_answers_compare_normalised(dns_server: DnsServer) -> None:
    aaaa = _probe(dns_server, qtype="aaaa", expect=frozenset({"2001:DB8:0::53"}))
    assert (await aaaa.run(2.0)).status is Status.OK
    cname = _probe(dns_server, qname="alias.example.test", qtype="CNAME",
                   expect=frozenset({"SVC.example.test"}))  # fmt: skip
    assert (await cname.run(2.0)).status is Status.OK


async def test_wrong_rcode_fails(dns_server: DnsServer) -> None:
    result = await _probe(dns_server, qname="nope.example.test").run(2.0)
    assert (result.status, result.reason) == (Status.FAIL, "rcode NXDOMAIN, expected NOERROR")


async def test_expected_nxdomain_is_ok(dns_server: DnsServer) -> None:
    probe = _probe(dns_server, qname="nope.example.test", rcode="nxdomain")
    assert (await probe.run(2.0)).status is Status.OK


async def test_servfail_fails(dns_server: DnsServer) -> None:
    dns_server.zone.rcode = "SERVFAIL"
    for transport in ("udp", "tcp"):
        result = await _probe(dns_server, transport=transport).run(2.0)
        assert (result.status, result.reason) == (Status.FAIL, "rcode SERVFAIL, expected NOERROR")


async def test_mismatched_response_id_fails(dns_server: DnsServer) -> None:
    dns_server.zone.wrong_id = True
    result = await _probe(dns_server, transport="tcp").run(2.0)
    assert result.status is Status.FAIL


async def test_silent_udp_server_times_out(dns_server: DnsServer) -> None:
    dns_server.zone.silent = True
    start = time.monotonic()
    result = await _probe(dns_server).run(0.3)
    assert (result.status, result.reason) == (Status.TIMEOUT, "timed out after 300ms (udp query)")
    assert time.monotonic() - start < 0.8


async def test_udp_refused_fails_fast(closed_port: int) -> None:
    result = await DnsProbe("127.0.0.1", "x.test", port=closed_port).run(2.0)
    assert (result.status, result.reason) == (Status.FAIL, "udp query: Connection refused")
    assert result.latency < 0.5


async def test_tcp_refused_fails(closed_port: int) -> None:
    probe = DnsProbe("127.0.0.1", "x.test", port=closed_port, transport="tcp")
    result = await probe.run(2.0)
    assert (result.status, result.reason) == (Status.FAIL, "tcp query: Connection refused")


async def test_tcp_server_that_accepts_and_hangs_times_out(hang_port: int) -> None:
    start = time.monotonic()
    result = await DnsProbe("127.0.0.1", "x.test", port=hang_port, transport="tcp").run(0.3)
    assert result.status is Status.TIMEOUT
    assert time.monotonic() - start < 0.8


async def test_tcp_server_that_closes_without_answer_fails(dns_server: DnsServer) -> None:
    dns_server.zone.silent = True  # the TCP handler then closes after reading the query
    result = await _probe(dns_server, transport="tcp").run(2.0)
    assert result.status is Status.FAIL


@needs_ipv6
@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_ipv6_server(transport: str) -> None:
    server = await start_dns_server("::1", Zone(records={("v6.test.", "A"): ["192.0.2.7"]}))
    try:
        probe = DnsProbe("::1", "v6.test", port=server.port, transport=transport,  # type: ignore[arg-type]
                         expect=frozenset({"192.0.2.7"}))  # fmt: skip
        assert probe.describe() == f"dns A v6.test @[::1]:{server.port}/{transport}"
        assert (await probe.run(2.0)).status is Status.OK
    finally:
        await server.close()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"server": "dns.example.test"}, "IP address"),
        ({"qtype": "BOGUS"}, "qtype"),
        ({"rcode": "WHATEVER"}, "rcode"),
        ({"transport": "quic"}, "transport"),
        ({"port": 70000}, "port"),
    ],
)
def test_invalid_options_are_rejected(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"server": "127.0.0.1", "qname": "x.test", **kwargs}
    with pytest.raises(ValueError, match=match):
        DnsProbe(**args)  # type: ignore[arg-type]
