"""A small real DNS server for tests: dnspython message parsing over asyncio UDP + TCP."""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass, field
from typing import cast

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from .conftest import close_quietly


@dataclass
class Zone:
    """What the test server answers: records by (name, type), and optional overrides."""

    records: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    rcode: str | None = None  # force this rcode for every query
    silent: bool = False  # never answer (UDP timeout)
    wrong_id: bool = False  # answer with a different message id
    queries: list[str] = field(default_factory=list)

    def answer(self, wire: bytes) -> bytes | None:
        query = dns.message.from_wire(wire)
        question = query.question[0]
        qname = question.name.to_text()
        qtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append(f"{qtype} {qname}")
        if self.silent:
            return None
        response = dns.message.make_response(query)
        if self.wrong_id:
            response.id = (query.id + 1) % 65536
        if self.rcode is not None:
            response.set_rcode(dns.rcode.from_text(self.rcode))
        elif (qname, qtype) in self.records:
            response.answer.append(
                dns.rrset.from_text_list(qname, 60, "IN", qtype, self.records[(qname, qtype)])
            )
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector transport is not a registered DatagramTransport subclass in 3.11.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.zone.answer(data)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


@dataclass
class DnsServer:
    zone: Zone
    port: int  # the same number for UDP and TCP
    tcp: asyncio.Server
    udp: asyncio.BaseTransport

    async def close(self) -> None:
        self.udp.close()
        self.tcp.close()
        await self.tcp.wait_closed()


async def start_dns_server(host: str, zone: Zone) -> DnsServer:
    async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            reply = zone.answer(await reader.readexactly(length))
            if reply is None:
                return  # close without an answer
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()
            await reader.read()
        finally:
            await close_quietly(writer)

    # Bind TCP first on port 0, then UDP on the same number (free for UDP nearly always).
    server = await asyncio.start_server(tcp, host, 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    udp, _ = await loop.create_datagram_endpoint(
        lambda: _Udp(zone), local_addr=(host, port), family=family
    )
    return DnsServer(zone, port, server, udp)
