"""LinkProbe and the private netlink framing, on handcrafted messages."""

from __future__ import annotations

import socket
import struct

import pytest

from healthchecks import LinkProbe, Status
from healthchecks import _netlink as nl
from healthchecks.link import (
    IFLA_IFNAME,
    IFLA_OPERSTATE,
    RTM_DELLINK,
    RTM_NEWLINK,
    LinkState,
    parse_link,
    verdict,
)

IFF_UP = 0x1


def newlink(name: str, flags: int, oper: int | None, index: int = 7) -> bytes:
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 1, index, flags, 0)
    body += nl.pack_attr(IFLA_IFNAME, name.encode() + b"\0")
    if oper is not None:
        body += nl.pack_attr(IFLA_OPERSTATE, bytes([oper]))
    return body


def test_messages_split_a_datagram_and_stop_at_truncation() -> None:
    data = nl.pack_message(16, 0, 1, b"abcd") + nl.pack_message(3, 2, 1, b"xyz")
    parsed = [(t, f, s, bytes(p)) for t, f, s, p in nl.messages(data)]
    assert parsed == [(16, 0, 1, b"abcd"), (3, 2, 1, b"xyz")]
    assert list(nl.messages(data[:-2]))[1:] == []  # the cut second message is dropped


def test_attrs_ignore_a_truncated_tail_and_flag_bits() -> None:
    raw = nl.pack_attr(3 | 0x8000, b"eth0\0") + struct.pack("=HH", 40, 9)
    assert {k: bytes(v) for k, v in nl.attrs(raw).items()} == {3: b"eth0\0"}


def test_error_message_payload_gives_errno() -> None:
    assert nl.error_code(memoryview(struct.pack("=i", -19) + b"\0" * 16)) == 19


@pytest.mark.parametrize(
    ("flags", "oper", "status", "reason"),
    [
        (IFF_UP, 6, Status.OK, "eth0 up (operstate UP)"),
        # no operstate support (lo): the kernel says UNKNOWN and assumes carrier
        (IFF_UP, 0, Status.OK, "eth0 up (operstate UNKNOWN)"),
        (IFF_UP, None, Status.OK, "eth0 up (operstate UNKNOWN)"),
        (IFF_UP, 2, Status.FAIL, "eth0 operstate DOWN"),
        (IFF_UP, 3, Status.FAIL, "eth0 operstate LOWERLAYERDOWN"),
        (IFF_UP, 5, Status.FAIL, "eth0 operstate DORMANT"),
        (0, 6, Status.FAIL, "eth0 is administratively down"),
    ],
)
def test_verdict_rule(flags: int, oper: int | None, status: Status, reason: str) -> None:
    name, state = parse_link(RTM_NEWLINK, newlink("eth0", flags, oper))
    assert name == "eth0"
    assert verdict("eth0", state) == (status, reason)


def test_dellink_is_absent_and_fails() -> None:
    name, state = parse_link(RTM_DELLINK, newlink("eth0", IFF_UP, 6))
    assert (name, state.present) == ("eth0", False)
    assert verdict("eth0", state) == (Status.FAIL, "no interface eth0")


def test_state_equality_ignores_the_index() -> None:
    assert LinkState(True, True, "UP", index=3) == LinkState(True, True, "UP", index=9)


@pytest.mark.parametrize("name", ["", "a" * 16, "a/b"])
def test_bad_interface_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="invalid interface"):
        LinkProbe(name)


async def test_missing_interface_in_our_namespace_fails() -> None:
    result = await LinkProbe("nosuchif0").run(1.0)
    assert (result.status, result.reason) == (Status.FAIL, "no interface nosuchif0")


async def test_loopback_is_up() -> None:
    result = await LinkProbe("lo").run(1.0)
    assert result.status is Status.OK, result
