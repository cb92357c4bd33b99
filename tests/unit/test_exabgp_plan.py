"""Pure BGP: config text, desired RIB (core.rib), diff → commands, adj-rib-out parsing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from anycastd.bgp.commands import apply_command, diff_rib, parse_adj_rib_out, render_config
from anycastd.config.scalars import Community
from anycastd.core.rib import PlanError, normalize_prefix, resolve
from anycastd.model import (
    ALL_NEIGHBORS,
    Attributes,
    BgpSettings,
    Neighbor,
    ResolvedAttributes,
    Route,
)

R1 = Neighbor(address="10.0.0.1", peer_as=65000, local_address="10.0.0.2", name="r1",
              hold_time=9)
R2 = Neighbor(address="10.0.1.1", peer_as=65010, local_address="10.0.1.2", name="r2")
R6 = Neighbor(address="fd00::1", peer_as=65000, local_address="fd00::2", name="r6")
SETTINGS = BgpSettings(router_id="192.0.2.1", local_as=65001, neighbors=(R1, R2, R6))
SELF = ResolvedAttributes(next_hop="self")


def texts(desired: list[Route], sent: list[Route] | None = None) -> list[str]:
    before = resolve(sent or [], SETTINGS)
    return [c.text for c in diff_rib(resolve(desired, SETTINGS), before, SETTINGS.local_as)]


def test_steady_state_sends_nothing() -> None:
    routes = [Route("192.0.2.53/32", Attributes(med=10)), Route("2001:db8::53/128")]
    assert texts(routes, routes) == []


def test_new_prefix_is_announced_to_every_neighbor_of_its_family() -> None:
    assert texts([Route("192.0.2.53/32")]) == [
        "neighbor 10.0.0.1, neighbor 10.0.1.1 announce route 192.0.2.53/32 next-hop self"
    ]
    assert texts([Route("2001:db8::53/128")]) == [
        "neighbor fd00::1 announce route 2001:db8::53/128 next-hop self"
    ]


def test_prefixes_sharing_attributes_are_packed_into_one_command() -> None:
    routes = [Route(f"192.0.2.{i}/32", Attributes(med=5), ("r1",)) for i in (3, 1, 2)]
    assert texts(routes) == [
        "neighbor 10.0.0.1 announce attributes next-hop self med 5 "
        "nlri 192.0.2.1/32 192.0.2.2/32 192.0.2.3/32"
    ]


def test_removed_prefix_is_withdrawn_only_where_it_was_sent() -> None:
    assert texts([], [Route("192.0.2.53/32", neighbors=("r2",))]) == [
        "neighbor 10.0.1.1 withdraw route 192.0.2.53/32"
    ]


def test_bulk_withdraw_uses_attributes_nlri() -> None:
    sent = [Route("192.0.2.1/32", neighbors=("r1",)), Route("192.0.2.2/32", neighbors=("r1",))]
    assert texts([], sent) == [
        "neighbor 10.0.0.1 withdraw attributes next-hop self nlri 192.0.2.1/32 192.0.2.2/32"
    ]


def test_attribute_change_reannounces_with_all_attributes() -> None:
    before = [Route("192.0.2.53/32", Attributes(med=10), ("r1",))]
    after = [
        Route(
            "192.0.2.53/32",
            Attributes(
                med=100,
                local_preference=50,
                communities=("graceful-shutdown", "65000:100"),
                large_communities=("65000:1:1",),
                as_path_prepend=2,
                next_hop="10.0.0.9",
            ),
            ("r1",),
        )
    ]
    assert texts(after, before) == [
        "neighbor 10.0.0.1 announce route 192.0.2.53/32 next-hop 10.0.0.9 med 100 "
        "local-preference 50 community [65000:100 65535:0] large-community [65000:1:1] "
        "as-path [65001 65001 65001]"
    ]


def test_targeting_moves_a_prefix_between_neighbors() -> None:
    before = [Route("192.0.2.53/32", neighbors=("r1",))]
    after = [Route("192.0.2.53/32", neighbors=("10.0.1.1",))]
    assert texts(after, before) == [
        "neighbor 10.0.0.1 withdraw route 192.0.2.53/32",
        "neighbor 10.0.1.1 announce route 192.0.2.53/32 next-hop self",
    ]


def test_no_neighbors_configured_means_no_selector() -> None:
    settings = BgpSettings(router_id="192.0.2.1", local_as=65001, mode="external")
    desired = resolve([Route("192.0.2.53/32")], settings)
    assert list(desired) == [(ALL_NEIGHBORS, "192.0.2.53/32")]
    assert [c.text for c in diff_rib(desired, {}, 65001)] == [
        "announce route 192.0.2.53/32 next-hop self"
    ]


def test_chunking_bounds_the_nlri_list() -> None:
    routes = [Route(f"10.1.{i // 256}.{i % 256}/32", neighbors=("r1",)) for i in range(1200)]
    commands = diff_rib(resolve(routes, SETTINGS), {}, 65001, chunk=500)
    assert [len(c.changes) for c in commands] == [500, 500, 200]


def test_by_default_1000_prefixes_go_out_as_20_commands_of_50() -> None:
    """ExaBGP handles many short commands faster than few long ones (NLRI_CHUNK)."""
    routes = [Route(f"10.1.{i // 250}.{i % 250 + 1}/32", neighbors=("r1",))
              for i in range(1000)]
    commands = diff_rib(resolve(routes, SETTINGS), {}, 65001)
    assert [len(c.text.split(" nlri ")[1].split()) for c in commands] == [50] * 20


def test_applying_the_plan_reaches_the_desired_rib() -> None:
    sent = resolve([Route("192.0.2.1/32"), Route("192.0.2.2/32", Attributes(med=1))], SETTINGS)
    desired = resolve(
        [Route("192.0.2.2/32", Attributes(med=2)), Route("2001:db8::1/128")], SETTINGS
    )
    rib = dict(sent)
    for command in diff_rib(desired, sent, 65001):
        apply_command(rib, command)
    assert rib == desired


@pytest.mark.parametrize(
    ("route", "message"),
    [
        (Route("192.0.2.53/32", neighbors=("nope",)), "unknown neighbor"),
        (Route("192.0.2.53/32", Attributes(communities=("65536:1",))), "community"),
        (Route("192.0.2.53/32", Attributes(large_communities=("1:2",))), "large community"),
    ],
)
def test_bad_routes_are_rejected_with_a_reason(route: Route, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        resolve([route], SETTINGS)


@pytest.mark.parametrize(
    ("name", "value"),
    # the config had its own list once: it rejected llgr-stale and no-llgr (RFC 9494), and
    # only it knew local-as; a name means the same in a config file and in a Route
    [("llgr-stale", "65535:6"), ("no-llgr", "65535:7"), ("local-as", "65535:65283"),
     ("No-Export", "65535:65281")],
)
def test_a_well_known_community_name_means_the_same_to_the_config_and_the_speaker(
    name: str, value: str
) -> None:
    assert pydantic.TypeAdapter(Community).validate_python(name) == value
    (attrs,) = resolve([Route("192.0.2.53/32", Attributes(communities=(name,)))],
                       BgpSettings(router_id="192.0.2.1", local_as=65001)).values()
    assert attrs.communities == (value,)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [("2001:DB8:0::53/128", "2001:db8::53/128"), ("10.0.0.0/8", "10.0.0.0/8"),
     ("192.0.2.1", "192.0.2.1/32"), ("::/0", "::/0")],
)
def test_prefixes_are_normalised(text: str, canonical: str) -> None:
    assert normalize_prefix(text) == canonical


@pytest.mark.parametrize("bad", ["10.0.0.1/8", "x/3", "10.0.0.0/33", "2001:db8::1/64",
                                 "10.0.0.0/-1", "10.0.0.0/ 8", "10.0.0/8"])
def test_bad_prefixes_are_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match=r"host bits|network|range"):
        normalize_prefix(bad)


def test_host_bits_set_is_rejected() -> None:
    with pytest.raises(ValueError, match="host bits"):
        resolve([Route("192.0.2.53/24")], SETTINGS)


ADJ_RIB_OUT = [
    "neighbor 10.0.0.1 local-ip 10.0.0.2 local-as 65001 peer-as 65000 router-id 192.0.2.1 "
    "family-allowed in-open ipv4 unicast 192.0.2.1/32 next-hop 10.0.0.2 med 100 "
    "community [ 65000:100 65535:0 ] large-community 65000:1:1",
    "neighbor 10.0.0.1 local-ip 10.0.0.2 local-as 65001 peer-as 65000 router-id 192.0.2.1 "
    "family-allowed in-open ipv4 unicast 192.0.2.2/32 next-hop 10.0.0.2 "
    "as-path ( 65001 65001 65001 ) local-preference 200",
    "neighbor fd00::1 local-ip fd00::2 local-as 65001 peer-as 65000 router-id 192.0.2.1 "
    "family-allowed in-open ipv6 unicast 2001:db8::1/128 next-hop fd00::9 med 5",
    "garbage line",
]


def test_adj_rib_out_parses_into_the_same_form_as_desired() -> None:
    desired = resolve(
        [
            Route(
                "192.0.2.1/32",
                Attributes(
                    med=100, communities=("graceful-shutdown", "65000:100"),
                    large_communities=("65000:1:1",),
                ),
                ("r1",),
            ),
            Route("192.0.2.2/32", Attributes(local_preference=200, as_path_prepend=2), ("r1",)),
            Route("2001:db8::1/128", Attributes(med=5, next_hop="fd00::9")),
        ],
        SETTINGS,
    )
    observed = parse_adj_rib_out(ADJ_RIB_OUT, 65001)
    assert observed == desired
    assert diff_rib(desired, observed, 65001) == []


def test_adj_rib_out_difference_is_repaired() -> None:
    observed = parse_adj_rib_out(ADJ_RIB_OUT[:1], 65001)
    desired = resolve([Route("192.0.2.1/32", Attributes(med=7), ("r1",))], SETTINGS)
    assert [c.text for c in diff_rib(desired, observed, 65001)] == [
        "neighbor 10.0.0.1 announce route 192.0.2.1/32 next-hop self med 7"
    ]


def test_config_has_neighbors_relay_process_and_api() -> None:
    settings = BgpSettings(
        router_id="192.0.2.1", local_as=65001, graceful_restart=120,
        neighbors=(
            Neighbor("10.0.0.1", 65000, "10.0.0.2", "r1", 9, "s3cret"),
            Neighbor("fd00::1", 65000, "fd00::2", "r6", families=("ipv6 unicast",)),
        ),
    )
    text = render_config(settings, ["/usr/bin/anycastd-exabgp-relay"], "/run/anycastd/x.sock")
    assert "run /usr/bin/anycastd-exabgp-relay /run/anycastd/x.sock;" in text
    assert "encoder json;" in text
    assert "neighbor 10.0.0.1 {" in text
    assert "    peer-as 65000;" in text
    assert "    hold-time 9;" in text
    assert '    md5-password "s3cret";' in text
    assert "        graceful-restart 120;" in text
    assert text.count("    manual-eor true;") == 2  # End-of-RIB sent by the speaker
    assert "        ipv6 unicast;" in text
    assert text.count("neighbor-changes;") == 2


def test_config_refuses_values_that_would_break_its_syntax() -> None:
    bad = BgpSettings(
        router_id="192.0.2.1", local_as=65001,
        neighbors=(Neighbor("10.0.0.1", 65000, md5_password='a"; }'),),
    )
    with pytest.raises(PlanError, match="md5_password"):
        render_config(bad, ["relay"], "/run/x.sock")


def test_generated_config_passes_exabgp_validate(tmp_path: Path) -> None:
    """Contract: ExaBGP 5 accepts what render_config writes."""
    exabgp = Path(sys.executable).parent / "exabgp"
    settings = BgpSettings(
        router_id="192.0.2.1", local_as=65001, graceful_restart=120,
        neighbors=(
            Neighbor("10.0.0.1", 65000, "10.0.0.2", "r1", 9, "s3cret"),
            Neighbor("fd00::1", 65000, "fd00::2", "r6", families=("ipv6 unicast",)),
        ),
    )
    conf = tmp_path / "exabgp.conf"
    conf.write_text(render_config(settings, ["/bin/cat"], str(tmp_path / "s.sock")))
    proc = subprocess.run([str(exabgp), "validate", str(conf)], capture_output=True, text=True,
                          env={"exabgp_daemon_user": "root", "PATH": "/usr/bin:/bin"},
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    conf.write_text(conf.read_text().replace("peer-as 65000;", "peer-as banana;"))
    proc = subprocess.run([str(exabgp), "validate", str(conf)], capture_output=True, text=True,
                          env={"exabgp_daemon_user": "root", "PATH": "/usr/bin:/bin"},
                          check=False)
    assert proc.returncode == 1


_prefixes = st.sampled_from(
    ["192.0.2.1/32", "192.0.2.2/32", "198.51.100.0/24", "2001:db8::1/128", "2001:db8::/64"]
)
_attrs = st.builds(
    Attributes,
    med=st.none() | st.integers(0, 3),
    communities=st.lists(st.sampled_from(["65000:1", "graceful-shutdown"]), max_size=2).map(
        tuple
    ),
    as_path_prepend=st.integers(0, 2),
)
_routes = st.lists(
    st.builds(Route, prefix=_prefixes, attributes=_attrs,
              neighbors=st.sampled_from([(), ("r1",), ("r2",), ("r1", "r6")])),
    max_size=6,
    unique_by=lambda r: r.prefix,
)


@given(before=_routes, after=_routes)
def test_plan_always_reaches_the_desired_rib_and_then_goes_quiet(
    before: list[Route], after: list[Route]
) -> None:
    sent = resolve(before, SETTINGS)
    desired = resolve(after, SETTINGS)
    rib = dict(sent)
    commands = diff_rib(desired, sent, 65001, chunk=2)
    for command in commands:
        apply_command(rib, command)
    assert rib == desired
    assert diff_rib(desired, rib, 65001) == []
    # every command touches only entries that differ
    touched = {key for c in commands for key, _ in c.changes}
    assert touched == {k for k in sent.keys() | desired.keys() if sent.get(k) != desired.get(k)}
