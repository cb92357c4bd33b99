"""observe.status: the status JSON schema (snapshot of its keys) and the text for people.

Update the snapshot after an intended change with ``ANYCASTD_UPDATE_SNAPSHOTS=1 pytest``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from anycastd.core.health import (
    CheckParams,
    CheckState,
    DampingParams,
    Policy,
    ServiceHealth,
    ServiceParams,
)
from anycastd.observe.status import (
    SCHEMA_VERSION,
    PeerTracker,
    build_status,
    format_age,
    render_text,
)
from tests.unit.snapshots import check_snapshot

WALL = 1_764_354_823.0  # 2025-11-28 18:33:43 UTC


#: what a changed snapshot means, and how to regenerate it
STATUS_CHANGED = (
    "the status JSON is public API. If intended, regenerate with "
    "ANYCASTD_UPDATE_SNAPSHOTS=1 (and bump SCHEMA_VERSION for an incompatible change)."
)


def key_paths(value: Any, prefix: str = "") -> set[str]:
    """Every key path of a document; dynamic keys (service/peer names) become ``*``,
    list items ``[]``."""
    out: set[str] = set()
    if isinstance(value, dict):
        dynamic = prefix.endswith((".services", ".peers"))
        for k, v in value.items():
            path = f"{prefix}.{'*' if dynamic else k}"
            out.add(path)
            out |= key_paths(v, path)
    elif isinstance(value, list):
        for item in value:
            out |= key_paths(item, prefix + "[]")
    return out


@dataclass(frozen=True)
class Peer:
    address: str
    name: str
    up: bool
    state: str = "up"
    reason: str = ""


def services() -> dict[str, ServiceHealth]:
    """dns: up (t=10); web: down, damped; ntp: maintenance (t=20). All built at t=0."""
    dns = ServiceHealth.initial(
        ServiceParams("dns", (CheckParams("udp", rise=1), CheckParams("tcp", rise=1))), 0.0
    )
    dns = dns.feed("udp", True, "", 5.0).health
    dns = dns.feed("tcp", True, "", 10.0).health
    web = ServiceHealth.initial(
        ServiceParams(
            "web",
            (CheckParams("http", rise=1, fall=1),),
            policy=Policy.parse("any"),
            start_state=CheckState.UP,
            damping=DampingParams(penalty=1000, suppress=900, reuse=500, half_life=60),
        ),
        0.0,
    )
    web = web.feed("http", False, "status 503", 30.0).health
    ntp = ServiceHealth.initial(ServiceParams("ntp", (CheckParams("udp"),)), 0.0)
    ntp = ntp.set_maintenance(True, 20.0, "maintenance file present").health
    return {"web": web, "dns": dns, "ntp": ntp}


def doc(**kw: Any) -> dict[str, Any]:
    peers = PeerTracker()
    peers.update(Peer("10.0.0.1", "r1", up=True), now=40.0)
    peers.update(Peer("10.0.0.2", "", up=False, state="connect", reason="refused"), now=None)
    extra: dict[str, object] = {"bgp": peers.section(100.0)}
    extra.update(kw.pop("extra", {}))
    return build_status(
        "edge1",
        WALL,
        services(),
        100.0,
        extra,
        announced={"dns": ("2001:db8::53/128", "192.0.2.53/32")},
        version="1.2.3",
        **kw,
    )


# ---------------------------------------------------------------- schema


def test_status_keys_match_snapshot() -> None:
    paths = key_paths(doc())
    check_snapshot("status_keys.txt", "\n".join(sorted(paths)) + "\n", why=STATUS_CHANGED)


def test_document_is_json_ready_and_round_trips() -> None:
    d = doc()
    assert json.loads(json.dumps(d, allow_nan=False)) == d


def test_top_level_fields() -> None:
    d = doc()
    assert d["schema"] == SCHEMA_VERSION
    assert (d["node"], d["version"], d["time"]) == ("edge1", "1.2.3", WALL)
    assert d["summary"] == {"up": 1, "down": 1, "draining": 0, "maintenance": 1, "disabled": 0}
    assert list(d["services"]) == ["dns", "ntp", "web"]  # sorted: a stable order


def test_times_are_ages_not_monotonic_stamps() -> None:
    d = doc()
    dns = d["services"]["dns"]
    assert dns["state"] == "up"
    assert dns["since_seconds"] == 90.0  # up since t=10, now t=100
    assert [c["since_seconds"] for c in dns["checks"]] == [95.0, 90.0]
    assert d["services"]["ntp"]["since_seconds"] == 80.0
    assert d["bgp"]["peers"]["r1"]["since_seconds"] == 60.0


def test_service_record_fields() -> None:
    d = doc()
    ntp = d["services"]["ntp"]
    assert ntp["state"] == "maintenance"
    assert ntp["reason"] == "maintenance file present"
    assert ntp["maintenance"] is True
    assert ntp["draining"] is False
    assert ntp["damping"] is None
    assert ntp["announced"] is None  # not known for ntp
    assert d["services"]["dns"]["announced"] == ["192.0.2.53/32", "2001:db8::53/128"]
    udp = d["services"]["dns"]["checks"][0]
    assert udp == {
        "name": "udp",
        "state": "up",
        "changing": False,
        "last_ok": True,
        "streak": 1,
        "reason": "",
        "since_seconds": 95.0,
    }


def test_damping_section_shows_suppression_remaining() -> None:
    # web flapped at t=30 with penalty 1000 >= suppress 900: suppressed until the penalty
    # decays to reuse 500, one half-life (60 s) later: t=90
    d60 = build_status("edge1", WALL, services(), 60.0)["services"]["web"]
    assert d60["state"] == "down"
    assert d60["damping"] == {
        "penalty": pytest.approx(707.107, abs=1e-3),
        "suppressed": True,
        "suppressed_for_seconds": 30.0,
    }
    d100 = doc()["services"]["web"]["damping"]
    assert d100["suppressed"] is False
    assert d100["suppressed_for_seconds"] is None


def test_bgp_is_null_without_peers_information() -> None:
    d = build_status("edge1", WALL, services(), 100.0)
    assert d["bgp"] is None


def test_peer_since_is_kept_while_the_state_stays_and_reset_on_change() -> None:
    t = PeerTracker()
    t.update(Peer("10.0.0.1", "r1", up=True), now=10.0)
    t.update(Peer("10.0.0.1", "r1", up=True, reason="replayed"), now=50.0)
    assert t.section(60.0)["peers"]["r1"]["since_seconds"] == 50.0
    t.update(Peer("10.0.0.1", "r1", up=False, state="idle"), now=55.0)
    assert t.section(60.0)["peers"]["r1"] == {
        "address": "10.0.0.1",
        "up": False,
        "state": "idle",
        "reason": "",
        "since_seconds": 5.0,
    }
    t.forget("r1")
    assert t.section(60.0) == {"peers": {}}


def test_extra_sections_are_deep_copied_to_plain_json() -> None:
    addresses = {"lo": ("192.0.2.53/32",), "set": frozenset({"b", "a"})}
    d = doc(extra={"addresses": addresses})
    assert d["addresses"] == {"lo": ["192.0.2.53/32"], "set": ["a", "b"]}


def test_extra_may_not_replace_core_keys() -> None:
    with pytest.raises(ValueError, match="services"):
        build_status("edge1", WALL, {}, 0.0, {"services": {}})


def test_extra_must_be_json_ready() -> None:
    with pytest.raises(TypeError, match=r"ipvs\.x"):
        build_status("edge1", WALL, {}, 0.0, {"ipvs": {"x": object()}})
    with pytest.raises(ValueError, match="not a JSON number"):
        build_status("edge1", WALL, {}, 0.0, {"ipvs": {"x": float("nan")}})


def test_document_does_not_share_state_with_inputs() -> None:
    extra: dict[str, object] = {"ipvs": {"services": ["a"]}}
    d = build_status("edge1", WALL, {}, 0.0, extra)
    extra["ipvs"] = {"services": ["changed"]}
    assert d["ipvs"] == {"services": ["a"]}


# ---------------------------------------------------------------- text


def test_render_text_lists_every_service_with_state_since_and_reason() -> None:
    text = render_text(doc())
    lines = text.splitlines()
    assert lines[0] == "node edge1  anycastd 1.2.3  2025-11-28 18:33:43Z"
    row = {ln.split()[0]: ln for ln in lines if ln.split() and ln.split()[0] in services()}
    assert row["dns"].split()[:3] == ["dns", "up", "1m30s"]
    assert "all 2 checks up" in row["dns"]
    assert row["ntp"].split()[:3] == ["ntp", "maintenance", "1m20s"]
    assert "maintenance file present" in row["ntp"]
    assert row["web"].split()[:2] == ["web", "down"]


def test_render_text_columns_line_up() -> None:
    lines = [ln for ln in render_text(doc()).splitlines() if ln.startswith(("SERVICE", "dns"))]
    header, dns = lines
    assert header.index("STATE") == dns.index("up")
    assert header.index("REASON") == dns.index("all 2 checks up")


def test_render_text_shows_peers() -> None:
    text = render_text(doc())
    peer_rows = {ln.split()[0]: ln for ln in text.splitlines() if ln.startswith("10.0.0.2")}
    assert "PEER" in text
    assert any(ln.split()[:4] == ["r1", "10.0.0.1", "up", "1m00s"] for ln in text.splitlines())
    assert "down (connect)" in peer_rows["10.0.0.2"]
    assert peer_rows["10.0.0.2"].endswith("refused")


def test_render_text_flags_a_drain_hidden_by_maintenance() -> None:
    svc = services()
    svc["ntp"] = svc["ntp"].set_draining(True, 30.0).health
    text = render_text(build_status("edge1", WALL, svc, 100.0))
    assert "[drain]" in text


def test_render_text_with_checks_adds_a_row_per_check() -> None:
    text = render_text(doc(), checks=True)
    assert any(ln.split()[:2] == ["udp", "up"] for ln in text.splitlines())
    assert "ok x1" in text
    assert "failed x1: status 503" in text
    assert "no result yet" in text


def test_render_text_tolerates_a_foreign_document() -> None:
    text = render_text({"services": {"x": {"state": "up"}}})
    assert "x" in text
    assert "node ?" in text
    assert "no services" in render_text({})


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (192, "3m12s"), (7500, "2h05m"), (273600, "3d4h"),
     (None, "-"), (-1, "-"), (True, "-")],
)  # fmt: skip
def test_format_age(seconds: object, text: str) -> None:
    assert format_age(seconds) == text


def test_render_shows_what_is_announced_real_servers_and_sysctl_drift() -> None:
    document = doc()
    document["services"]["dns"]["announced"] = ["192.0.2.53/32"]
    document["real_servers"] = {"web/10.1.0.10:80": "down"}
    document["sysctls"] = {"net.ipv4.ip_forward": {"want": "1", "have": "0"}}
    text = render_text(document)
    dns_line = next(ln for ln in text.splitlines() if ln.startswith("dns"))
    assert "192.0.2.53/32" in dns_line
    assert "web/10.1.0.10:80  down" in text
    assert "net.ipv4.ip_forward" in text


def test_each_service_says_how_its_prefixes_are_published() -> None:
    d = doc(published={"dns": "bgp", "web": "none"})
    assert d["services"]["dns"]["published"] == "bgp"
    assert d["services"]["web"]["published"] == "none"
    assert d["services"]["ntp"]["published"] is None  # not known


def test_render_text_without_bgp_shows_nothing_announced_and_how_it_is_published() -> None:
    # no [bgp]: nothing is announced, and the table says so instead of listing prefixes
    document = build_status(
        "edge1", WALL, services(), 100.0,
        announced=dict.fromkeys(services(), ()), published=dict.fromkeys(services(), "none"),
    )
    lines = render_text(document).splitlines()
    header = next(ln for ln in lines if ln.startswith("SERVICE"))
    dns = next(ln for ln in lines if ln.startswith("dns"))
    assert header.split()[:5] == ["SERVICE", "STATE", "SINCE", "PUBLISHED", "ANNOUNCED"]
    assert dns.split()[:5] == ["dns", "up", "1m30s", "none", "-"]
