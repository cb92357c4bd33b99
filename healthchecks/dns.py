"""DNS probe (dnspython): ask ``server`` for ``qname``/``qtype`` and check the answer.

OK when the response rcode equals ``rcode`` and every string in ``expect`` appears among
the answer section's records (in presentation format, e.g. ``192.0.2.1`` for A, the
target name for CNAME/NS). Comparison normalises IP addresses (``2001:DB8::1`` matches
``2001:db8::1``) and names (case and trailing dot), so config can be written naturally.
The query is sent with RD set, as a stub resolver would. ``server`` must be an IP address:
the probe checks one server, it does not resolve which one.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Literal

import dns.asyncbackend
import dns.asyncquery
import dns.exception
import dns.inet
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from healthchecks._base import Stage, check_port, guarded, host_port, one_line
from healthchecks.result import ProbeResult, Status

__all__ = ["DnsProbe"]


def _normalise(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text.lower().rstrip(".")


@dataclass(frozen=True, slots=True)
class DnsProbe:
    server: str
    qname: str
    port: int = 53
    qtype: str = "A"
    rcode: str = "NOERROR"
    expect: frozenset[str] = field(default_factory=frozenset)
    transport: Literal["udp", "tcp"] = "udp"

    def __post_init__(self) -> None:
        object.__setattr__(self, "expect", frozenset(self.expect))
        object.__setattr__(self, "qtype", self.qtype.upper())
        object.__setattr__(self, "rcode", self.rcode.upper())
        check_port(self.port)
        try:
            ipaddress.ip_address(self.server)
        except ValueError:
            raise ValueError(f"server must be an IP address, got {self.server!r}") from None
        try:
            dns.rdatatype.from_text(self.qtype)
        except dns.exception.DNSException:
            raise ValueError(f"unknown qtype {self.qtype!r}") from None
        try:
            dns.rcode.from_text(self.rcode)
        except dns.exception.DNSException:
            raise ValueError(f"unknown rcode {self.rcode!r}") from None
        if self.transport not in ("udp", "tcp"):
            raise ValueError(f"transport must be 'udp' or 'tcp', got {self.transport!r}")

    def describe(self) -> str:
        where = host_port(self.server, self.port)
        return f"dns {self.qtype} {self.qname} @{where}/{self.transport}"

    async def run(self, timeout: float) -> ProbeResult:  # noqa: ASYNC109 (contract)
        return await guarded(self._check, timeout)

    async def _check(self, stage: Stage) -> tuple[Status, str]:
        query = dns.message.make_query(self.qname, self.qtype)
        stage.name = f"{self.transport} query"
        # No dnspython timeout: the deadline in guarded() cancels the query, which closes
        # the socket; a second clock would only race with it.
        try:
            if self.transport == "tcp":
                response = await dns.asyncquery.tcp(query, self.server, port=self.port)
            else:
                # A *connected* UDP socket, so an ICMP port-unreachable surfaces as
                # "Connection refused" at once instead of waiting out the deadline.
                backend = dns.asyncbackend.get_backend("asyncio")
                family = dns.inet.af_for_address(self.server)
                # dnspython leaves make_socket unannotated; its return type is documented.
                async with await backend.make_socket(  # type: ignore[no-untyped-call]
                    family, socket.SOCK_DGRAM, 0, None, (self.server, self.port)
                ) as sock:
                    response = await dns.asyncquery.udp(
                        query, self.server, port=self.port, sock=sock
                    )
        except (dns.exception.FormError, dns.exception.SyntaxError) as exc:
            return Status.FAIL, f"malformed response: {exc}"
        except dns.query.BadResponse:
            return Status.FAIL, "response does not match the query"
        except EOFError:
            # dnspython's TCP reader: the server closed the connection mid-answer.
            return Status.FAIL, "connection closed without a response"
        except dns.exception.DNSException as exc:
            return Status.FAIL, f"{type(exc).__name__}: {exc}"

        got_rcode = dns.rcode.to_text(response.rcode())
        if got_rcode != self.rcode:
            return Status.FAIL, f"rcode {got_rcode}, expected {self.rcode}"
        # Sorted: servers (and dnspython) shuffle RRsets; reasons should not flap with them.
        answers = sorted(rdata.to_text() for rrset in response.answer for rdata in rrset)
        present = {_normalise(a) for a in answers}
        missing = sorted(e for e in self.expect if _normalise(e) not in present)
        if missing:
            seen = ", ".join(answers) if answers else "none"
            return Status.FAIL, one_line(f"missing {', '.join(missing)} (answer: {seen})")
        return Status.OK, f"rcode {got_rcode}, {len(answers)} answers"
