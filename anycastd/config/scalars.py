"""Field types: each turns one kind of user text (a duration, a prefix, a community, ...)
into a value, or fails with a message that says what was expected. No models here."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from pathlib import Path
from typing import Annotated

import dns.exception
import dns.rcode
import dns.rdatatype
from pydantic import AfterValidator, Field, PlainSerializer, PlainValidator, Strict
from pydantic_core import PydanticCustomError

from anycastd.config.errors import _describe
from anycastd.durations import DurationError, format_duration, parse_duration
from anycastd.model import WELL_KNOWN_COMMUNITIES

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")


def _err(kind: str, message: str) -> PydanticCustomError:
    # The message is used verbatim as a template: escape braces in user text.
    return PydanticCustomError(kind, message.replace("{", "{{").replace("}", "}}"))


class _Seconds(float):
    """A duration the loader already resolved (inherited or derived), not user text."""


def _v_duration(value: object) -> float:
    if isinstance(value, _Seconds):
        return float(value)
    try:
        return parse_duration(value)
    except DurationError as exc:
        raise _err("duration", str(exc)) from None


def _v_positive(value: float) -> float:
    if value <= 0:
        raise _err("duration_positive", "must be longer than 0s")
    return value


def _v_whole_seconds(value: float) -> float:
    if value != int(value):
        raise _err("duration_whole", f"must be a whole number of seconds, got {value:g}s")
    return value


_duration_ser = PlainSerializer(float, return_type=float)
Duration = Annotated[float, PlainValidator(_v_duration), _duration_ser]
PositiveDuration = Annotated[
    float, PlainValidator(_v_duration), AfterValidator(_v_positive), _duration_ser
]
Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
Port = Annotated[int, Strict(), Field(ge=1, le=65535)]
Asn = Annotated[int, Strict(), Field(ge=1, le=4294967295)]
U32 = Annotated[int, Strict(), Field(ge=0, le=4294967295)]


def _v_name(value: str) -> str:
    if not NAME_RE.fullmatch(value):
        raise _err(
            "name",
            f'"{value}" is not a valid name: use 1-63 of a-z 0-9 _ . - '
            "starting with a letter or digit",
        )
    return value


Name = Annotated[str, Strict(), AfterValidator(_v_name)]


def _need_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise _err("type", f"expected {what} as a string, got {_describe(value)}")
    return value


def _v_ip(value: object) -> IPv4Address | IPv6Address:
    if isinstance(value, IPv4Address | IPv6Address):
        return value
    text = _need_str(value, "an IP address")
    try:
        return ip_address(text)
    except ValueError:
        raise _err(
            "ip_address", f'"{text}" is not an IPv4 or IPv6 address (like 192.0.2.1 or 2001:db8::1)'
        ) from None


def _v_ipv4(value: object) -> IPv4Address:
    address = _v_ip(value)
    if not isinstance(address, IPv4Address):
        raise _err("ipv4_address", f'"{address}" is not an IPv4 address (like 192.0.2.1)')
    return address


def _v_prefix(value: object) -> IPv4Network | IPv6Network:
    if isinstance(value, IPv4Network | IPv6Network):
        return value
    text = _need_str(value, "an IP prefix")
    if "/" not in text:
        try:
            addr = ip_address(text)
        except ValueError:
            pass
        else:
            raise _err(
                "prefix", f'"{text}" has no prefix length; write "{text}/{addr.max_prefixlen}"'
            )
    try:
        return ip_network(text, strict=True)
    except ValueError:
        pass
    try:
        loose = ip_network(text, strict=False)
    except ValueError:
        raise _err(
            "prefix", f'"{text}" is not an IP prefix (like 192.0.2.0/24 or 2001:db8::/48)'
        ) from None
    raise _err("prefix_host_bits", f"{text} has host bits set; did you mean {loose}?")


_str_ser = PlainSerializer(str, return_type=str, when_used="json")
IPAddress = Annotated[IPv4Address | IPv6Address, PlainValidator(_v_ip), _str_ser]
IPv4Addr = Annotated[IPv4Address, PlainValidator(_v_ipv4), _str_ser]
Prefix = Annotated[IPv4Network | IPv6Network, PlainValidator(_v_prefix), _str_ser]


def _v_abspath(value: object) -> Path:
    if isinstance(value, Path):
        return value
    text = _need_str(value, "a path")
    if not text.startswith("/"):
        raise _err("path", f'"{text}" is not an absolute path; write it starting with "/"')
    return Path(text)


AbsPath = Annotated[Path, PlainValidator(_v_abspath), _str_ser]

_HOSTNAME = re.compile(
    r"(?=.{1,253}\.?$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*\.?"
)


def _v_host(value: object) -> str:
    text = _need_str(value, "a host")
    try:
        return str(ip_address(text))
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(text):
        raise _err("host", f'"{text}" is not an IP address or a host name')
    return text


Host = Annotated[str, PlainValidator(_v_host)]


def _v_str_map(value: object) -> tuple[tuple[str, str], ...]:
    if isinstance(value, tuple):
        return value  # already validated (a model re-validated from python)
    if not isinstance(value, dict):
        raise _err("table", f"expected a table of strings, got {_describe(value)}")
    for key, item in value.items():
        if not isinstance(item, str):
            raise _err("table", f'the value of "{key}" must be a string, got {_describe(item)}')
    return tuple(value.items())


# Hashable on purpose (frozen models are hashed); read it with dict(check.headers).
StrMap = Annotated[
    tuple[tuple[str, str], ...],
    PlainValidator(_v_str_map),
    PlainSerializer(dict, return_type=dict),
]


def _v_community(value: object) -> str:
    text = _need_str(value, "a community").strip()
    if text.lower() in WELL_KNOWN_COMMUNITIES:
        return WELL_KNOWN_COMMUNITIES[text.lower()]
    match = re.fullmatch(r"(\d+):(\d+)", text)
    if not match or any(int(p) > 65535 for p in match.groups()):
        names = ", ".join(WELL_KNOWN_COMMUNITIES)
        raise _err(
            "community",
            f'"{text}" is not a community: write "A:B" (each 0..65535) or one of {names}',
        )
    return f"{int(match[1])}:{int(match[2])}"


def _v_large_community(value: object) -> str:
    text = _need_str(value, "a large community").strip()
    match = re.fullmatch(r"(\d+):(\d+):(\d+)", text)
    if not match or any(int(p) > 4294967295 for p in match.groups()):
        raise _err(
            "large_community",
            f'"{text}" is not a large community: write "A:B:C" (each 0..4294967295)',
        )
    return ":".join(str(int(p)) for p in match.groups())


def _dedupe(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


Community = Annotated[str, PlainValidator(_v_community)]
LargeCommunity = Annotated[str, PlainValidator(_v_large_community)]


def _v_policy(value: object) -> str:
    text = _need_str(value, "a policy")
    match = re.fullmatch(r"\s*(all|any|at-least\s+(\d+))\s*", text)
    if not match or (match[2] is not None and int(match[2]) < 1):
        raise _err("policy", f'expected "all", "any" or "at-least N" (N >= 1), got "{text}"')
    return f"at-least {int(match[2])}" if match[2] else match[1]


Policy = Annotated[str, PlainValidator(_v_policy)]


def _v_listen(value: object) -> str:
    text = _need_str(value, "host:port")
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", text)
    if match and 1 <= int(match[2] or match[4]) <= 65535:
        try:
            valid = (
                isinstance(ip_address(match[1]), IPv6Address)
                if match[1]
                else bool(_v_host(match[3]))
            )
        except (ValueError, PydanticCustomError):
            valid = False
        if valid:
            return text
    raise _err(
        "listen",
        f'expected "host:port" or "[v6-address]:port" (like 127.0.0.1:9180), got "{text}"',
    )


def _v_ifname(value: object) -> str:
    text = _need_str(value, "an interface name")
    if not re.fullmatch(r"[^\s/:]{1,15}", text):
        raise _err("ifname", f'"{text}" is not an interface name (1-15 characters, no "/:")')
    return text


def _v_next_hop(value: object) -> str | IPv4Address | IPv6Address:
    if value == "self":
        return "self"
    try:
        return _v_ip(value)
    except PydanticCustomError:
        raise _err(
            "next_hop", f'expected "self" or an IP address, got {_describe(value)}'
        ) from None


def _v_hold_time(value: float) -> float:
    if value != int(value) or not (value == 0 or 3 <= value <= 65535):
        raise _err(
            "hold_time", f"must be 0s or 3s..65535s in whole seconds, got {format_duration(value)}"
        )
    return value


def _v_graceful_restart(value: float) -> float:
    if value != int(value) or value > 4095:
        raise _err(
            "graceful_restart",
            f"must be 0s (off) or up to 4095s in whole seconds, got {format_duration(value)}",
        )
    return value


def _v_area(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 4294967295:
        return str(IPv4Address(value))
    text = _need_str(value, "an OSPF area")
    try:
        return str(IPv4Address(text))
    except ValueError:
        raise _err("area", f'expected a dotted area like "0.0.0.0", got "{text}"') from None


def _v_regex(value: object) -> str:
    text = _need_str(value, "a regular expression")
    try:
        re.compile(text)
    except re.error as exc:
        raise _err("regex", f"invalid regular expression: {exc}") from None
    return text


def _url_validator(scheme: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        text = _need_str(value, "a URL")
        parts = urllib.parse.urlsplit(text)
        if parts.scheme != scheme or not parts.netloc:
            raise _err(
                "url",
                f'expected a URL starting with "{scheme}://" '
                f'(like {scheme}://192.0.2.1/health), got "{text}"',
            )
        return text

    return check


def _v_qtype(value: object) -> str:
    text = _need_str(value, "a DNS record type").upper()
    try:
        dns.rdatatype.from_text(text)
    except (dns.exception.DNSException, ValueError):
        raise _err("qtype", f'"{value}" is not a DNS record type (like A, AAAA, SOA)') from None
    return text


def _v_rcode(value: object) -> str:
    text = _need_str(value, "a DNS rcode").upper()
    try:
        dns.rcode.from_text(text)
    except (dns.exception.DNSException, ValueError):
        raise _err("rcode", f'"{value}" is not a DNS rcode (like NOERROR, NXDOMAIN)') from None
    return text


def _v_qname(value: object) -> str:
    text = _need_str(value, "a DNS name")
    if not text or not _HOSTNAME.fullmatch(text):
        raise _err("qname", f'"{text}" is not a DNS name')
    return text
