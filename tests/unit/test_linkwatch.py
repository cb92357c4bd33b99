"""LinkEventFilter: rtnetlink datagrams in, reasons out. Handcrafted bytes, no socket.

The messages are built here with ``struct`` from the kernel's layouts (nlmsghdr, ifaddrmsg,
ifinfomsg, rtattr), independently of the codec in anycastd/actuators/loopback.py.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct

import pytest

from anycastd.actuators.linkwatch import LinkEventFilter
from anycastd.errors import PermanentError

RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR = 16, 17, 20, 21
NLMSG_ERROR = 2
IFA_ADDRESS, IFA_LOCAL, IFA_PROTO = 1, 2, 11
IFLA_IFNAME, IFLA_MTU = 3, 4
IFF_UP, IFF_RUNNING = 0x1, 0x40
AF_BRIDGE = 7
OURS = 0xAC
PORTID = 4242


def rta(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def nlmsg(kind: int, body: bytes, *, seq: int = 0, pid: int = 0) -> bytes:
    length = 16 + len(body)
    return struct.pack("=IHHII", length, kind, 0, seq, pid) + body + b"\0" * (-length % 4)


def addr(kind: int, index: int, text: str, *, proto: int | None = None) -> bytes:
    iface = ipaddress.ip_interface(text)
    family = socket.AF_INET if iface.version == 4 else socket.AF_INET6
    body = struct.pack("=BBBBI", family, iface.network.prefixlen, 0, 0, index)
    body += rta(IFA_ADDRESS, iface.ip.packed)
    if iface.version == 4:
        body += rta(IFA_LOCAL, iface.ip.packed)
    if proto is not None:
        body += rta(IFA_PROTO, bytes([proto]))
    return nlmsg(kind, body)


def link(
    kind: int,
    index: int,
    name: str | None,
    *,
    up: bool = True,
    family: int = socket.AF_UNSPEC,
    seq: int = 0,
    pid: int = 0,
) -> bytes:
    flags = IFF_UP | IFF_RUNNING if up else 0
    body = struct.pack("=BxHiII", family, 772, index, flags, 0xFFFFFFFF)
    if name is not None:
        body += rta(IFLA_IFNAME, name.encode() + b"\0")
    body += rta(IFLA_MTU, struct.pack("=I", 65536))
    return nlmsg(kind, body, seq=seq, pid=pid)


def error(code: int, *, seq: int, pid: int = PORTID) -> bytes:
    return nlmsg(NLMSG_ERROR, struct.pack("=i", code) + b"\0" * 16, seq=seq, pid=pid)


def resolved(interface: str = "lo", index: int = 1, *, up: bool = True) -> LinkEventFilter:
    """A filter whose start-up RTM_GETLINK was answered: index known, nothing reported."""
    f = LinkEventFilter(interface, PORTID)
    f.expect_reply(7)
    assert f.feed(link(RTM_NEWLINK, index, interface, up=up, seq=7, pid=PORTID)) == []
    assert (f.index, f.up) == (index, up)
    return f


# --------------------------------------------------------------------------------------------
# addresses


def test_removed_owned_address_on_the_interface_is_reported() -> None:
    f = resolved()
    assert f.feed(addr(RTM_DELADDR, 1, "192.0.2.10/32", proto=OURS)) == [
        "address removed 192.0.2.10/32"
    ]


def test_added_foreign_address_is_reported_as_foreign() -> None:
    f = resolved()
    assert f.feed(addr(RTM_NEWADDR, 1, "2001:db8::5/128")) == [
        "address added 2001:db8::5/128 (foreign)"
    ]


def test_address_on_another_interface_is_ignored() -> None:
    f = resolved()
    assert f.feed(addr(RTM_DELADDR, 2, "192.0.2.10/32", proto=OURS)) == []


def test_address_events_are_ignored_while_the_index_is_unknown() -> None:
    # Before the answer to our RTM_GETLINK: everything queued ahead of it predates the query.
    f = LinkEventFilter("lo", PORTID)
    f.expect_reply(1)
    assert f.feed(addr(RTM_DELADDR, 1, "192.0.2.10/32")) == []


def test_several_messages_in_one_datagram_are_reported_in_order() -> None:
    f = resolved()
    data = (
        addr(RTM_NEWADDR, 1, "192.0.2.1/32", proto=OURS)
        + addr(RTM_NEWADDR, 3, "192.0.2.2/32")
        + addr(RTM_DELADDR, 1, "2001:db8::1/128", proto=OURS)
    )
    assert f.feed(data) == ["address added 192.0.2.1/32", "address removed 2001:db8::1/128"]


def test_truncated_and_malformed_datagrams_are_dropped_without_error() -> None:
    f = resolved()
    whole = addr(RTM_DELADDR, 1, "192.0.2.10/32")
    assert f.feed(whole[:-6]) == []  # length field says more than arrived
    assert f.feed(whole[:10]) == []  # not even a header
    zero_length_attr = nlmsg(RTM_DELADDR, struct.pack("=BBBBI", 2, 32, 0, 0, 1) + b"\0" * 4)
    assert f.feed(zero_length_attr) == []  # no address attribute: nothing to name
    short_body = nlmsg(RTM_NEWLINK, b"\0" * 4)
    assert f.feed(short_body) == []


# --------------------------------------------------------------------------------------------
# link state and identity


def test_link_down_then_up_is_reported_once_each() -> None:
    f = resolved()
    assert f.feed(link(RTM_NEWLINK, 1, "lo", up=False)) == ["link down"]
    assert f.feed(link(RTM_NEWLINK, 1, "lo", up=False)) == []  # e.g. an MTU change
    assert f.feed(link(RTM_NEWLINK, 1, "lo", up=True)) == ["link up"]
    assert f.up is True


def test_other_interfaces_links_are_ignored() -> None:
    f = resolved()
    assert f.feed(link(RTM_NEWLINK, 5, "veth0", up=False)) == []
    assert f.feed(link(RTM_DELLINK, 5, "veth0")) == []
    assert (f.index, f.up) == (1, True)


def test_deleted_and_recreated_interface_is_followed_by_name() -> None:
    f = resolved("br0", 4)
    assert f.feed(link(RTM_DELLINK, 4, "br0")) == ["link deleted"]
    assert f.feed(addr(RTM_NEWADDR, 4, "192.0.2.1/32")) == []  # the old index means nothing
    assert f.feed(link(RTM_NEWLINK, 9, "br0", up=False)) == ["link appeared (index 9, down)"]
    assert f.feed(addr(RTM_NEWADDR, 9, "192.0.2.1/32")) == ["address added 192.0.2.1/32 (foreign)"]


def test_interface_renamed_away_is_reported_and_no_longer_followed() -> None:
    f = resolved("br0", 4)
    assert f.feed(link(RTM_NEWLINK, 4, "old-br0")) == ["link renamed to 'old-br0'"]
    assert f.index is None
    assert f.feed(addr(RTM_NEWADDR, 4, "192.0.2.1/32")) == []


def test_bridge_port_messages_are_not_link_events() -> None:
    # AF_BRIDGE RTM_DELLINK means "left its bridge", not "deleted".
    f = resolved("veth0", 6)
    assert f.feed(link(RTM_DELLINK, 6, "veth0", family=AF_BRIDGE)) == []
    assert f.feed(link(RTM_NEWLINK, 6, "veth0", up=False, family=AF_BRIDGE)) == []
    assert (f.index, f.up) == (6, True)


def test_link_message_without_a_name_is_matched_by_index() -> None:
    f = resolved()
    assert f.feed(link(RTM_NEWLINK, 1, None, up=False)) == ["link down"]


# --------------------------------------------------------------------------------------------
# the answer to our RTM_GETLINK


def test_answer_is_told_from_events_by_port_id_not_only_by_sequence() -> None:
    # Another program's request with the same sequence number causes an event carrying
    # that program's port id: an event, not our answer.
    f = LinkEventFilter("br0", PORTID)
    f.expect_reply(3)
    assert f.feed(link(RTM_NEWLINK, 8, "br0", seq=3, pid=999)) == ["link appeared (index 8, up)"]
    assert f.feed(link(RTM_NEWLINK, 8, "br0", seq=3, pid=PORTID)) == []  # the answer: silent


def test_answer_for_a_missing_interface_leaves_the_index_unknown() -> None:
    f = resolved("br0", 4)
    f.expect_reply(8)
    assert f.feed(error(-errno.ENODEV, seq=8)) == []
    assert (f.index, f.up) == (None, None)
    assert f.feed(link(RTM_NEWLINK, 11, "br0")) == ["link appeared (index 11, up)"]


def test_answer_with_another_error_is_raised_mapped() -> None:
    f = LinkEventFilter("lo", PORTID)
    f.expect_reply(2)
    with pytest.raises(PermanentError, match=r"linkwatch: interface 'lo': EPERM"):
        f.feed(error(-errno.EPERM, seq=2))


def test_answer_changes_the_index_silently() -> None:
    # After an overrun the index is re-read; the overrun itself already asked for a pass.
    f = resolved("br0", 4)
    f.expect_reply(9)
    assert f.feed(link(RTM_NEWLINK, 12, "br0", up=False, seq=9, pid=PORTID)) == []
    assert (f.index, f.up) == (12, False)
