"""Config loading: files, merging, error reporting, defaults, and the public schema."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from ipaddress import IPv4Network, ip_address
from pathlib import Path
from typing import Any

import pydantic
import pytest

import anycastd.config.schema as module
from anycastd.config import (
    Config,
    ConfigError,
    ConfigIssue,
    ConfigNotFound,
    DnsCheck,
    ExecCheck,
    FileCheck,
    HttpsCheck,
    ServiceConfig,
    TcpCheck,
    dump,
    load_config,
    loads,
    summarize,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "configs" / "anycastd.toml"
DATA = Path(__file__).parent / "data" / "config"

BGP = """
[bgp]
router_id = "192.0.2.1"
local_as = 65001
[[bgp.neighbors]]
name = "r1"
address = "198.51.100.1"
peer_as = 65000
local_address = "198.51.100.2"
[[bgp.neighbors]]
name = "r6"
address = "2001:db8:ffff::1"
peer_as = 65000
local_address = "2001:db8:ffff::2"
"""

DNS = """
[services.dns]
prefixes = ["192.0.2.53/32"]
[[services.dns.checks]]
type = "dns"
server = "127.0.0.1"
qname = "example.com"
"""


def write(tmp_path: Path, main: str, dropins: Mapping[str, str] | None = None) -> Path:
    path = tmp_path / "anycastd.toml"
    path.write_text(main)
    if dropins:
        (tmp_path / "conf.d").mkdir()
        for name, text in dropins.items():
            (tmp_path / "conf.d" / name).write_text(text)
    return path


def issues(
    tmp_path: Path, main: str, dropins: Mapping[str, str] | None = None
) -> list[ConfigIssue]:
    path = write(tmp_path, main, dropins)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.issues


def keyed(found: list[ConfigIssue]) -> dict[tuple[str, str], str]:
    """(file name, key) -> message, for exact location assertions."""
    return {(Path(i.file).name, i.key): i.message for i in found}


def only(found: list[ConfigIssue]) -> ConfigIssue:
    assert len(found) == 1, "\n".join(map(str, found))
    return found[0]


# ----------------------------------------------------------------- the shipped example


def test_example_loads_with_its_dropin() -> None:
    config = load_config(EXAMPLE)
    assert config.sources == (EXAMPLE, EXAMPLE.parent / "conf.d" / "10-web.toml")
    assert set(config.services) == {"dns", "web"}
    assert config.service_sources["web"] == EXAMPLE.parent / "conf.d" / "10-web.toml"


def test_example_summary_mentions_every_service_and_neighbor() -> None:
    config = load_config(EXAMPLE)
    text = summarize(config)
    for name, service in config.services.items():
        assert f"  {name}" in text
        for prefix in service.prefixes:
            assert str(prefix) in text
    assert config.bgp is not None
    for neighbor in config.bgp.neighbors:
        assert str(neighbor.address) in text
    assert "ipvs tcp/443 wlc: 2 real servers (dr,nat)" in text
    assert str(EXAMPLE) in text


def _key_paths(value: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            # service names are data, not schema
            name = "*" if prefix in ("services", "service_sources") else key
            path = f"{prefix}.{name}" if prefix else name
            yield path
            yield from _key_paths(item, path)
    elif isinstance(value, list):
        for item in value:
            yield from _key_paths(item, prefix + "[]")


def test_dump_keys_of_the_example_match_the_schema_snapshot() -> None:
    # The config schema is public API: a change here must be deliberate (and documented in
    # docs/configuration.md). Regenerate the snapshot by writing sorted(set(paths)).
    dumped = json.loads(dump(load_config(EXAMPLE)))
    paths = sorted(set(_key_paths(dumped)))
    snapshot = json.loads((DATA / "example_dump_keys.json").read_text())
    assert paths == snapshot


def test_dump_is_json_with_effective_values_and_masked_secrets() -> None:
    dumped = json.loads(dump(load_config(EXAMPLE)))
    dns_tcp = dumped["services"]["dns"]["checks"][1]
    assert dns_tcp["timeout"] == 1.5
    assert dns_tcp["interval"] == 3.0  # no interval anywhere: twice its own timeout
    assert dumped["bgp"]["neighbors"][1]["md5_password"] == "**********"
    assert "change-me" not in dump(load_config(EXAMPLE))


# ----------------------------------------------------------------- files and syntax


def test_missing_main_file_is_config_not_found(tmp_path: Path) -> None:
    with pytest.raises(ConfigNotFound) as info:
        load_config(tmp_path / "nope.toml")
    assert isinstance(info.value, ConfigError)
    assert only(info.value.issues).file == str(tmp_path / "nope.toml")


def test_toml_syntax_error_reports_file_line_and_column(tmp_path: Path) -> None:
    found = issues(tmp_path, DNS, {"20-bad.toml": '[services.x]\nprefixes = ["192.0.2.1/32"\n'})
    issue = only(found)
    assert issue.file == str(tmp_path / "conf.d" / "20-bad.toml")
    assert (issue.line, issue.column) == (2, 27)
    assert str(issue).startswith(f"{tmp_path / 'conf.d' / '20-bad.toml'}:2:27: TOML syntax error")


def test_toml_syntax_error_in_the_middle_of_a_line(tmp_path: Path) -> None:
    issue = only(issues(tmp_path, '[global]\nnode = "a" "b"\n'))
    assert (issue.line, issue.column) == (2, 12)


def test_dropins_merge_in_lexical_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        DNS,
        {
            "20-b.toml": DNS.replace("services.dns", "services.b").replace(".53/", ".54/"),
            "10-a.toml": DNS.replace("services.dns", "services.a").replace(".53/", ".55/"),
            "notes.txt": "ignored",
        },
    )
    config = load_config(path)
    assert [p.name for p in config.sources] == ["anycastd.toml", "10-a.toml", "20-b.toml"]
    assert config.service_sources["a"].name == "10-a.toml"


def test_dropin_may_only_define_services(tmp_path: Path) -> None:
    found = keyed(issues(tmp_path, DNS, {"10-x.toml": '[global]\nnode = "x"\n'}))
    assert list(found) == [("10-x.toml", "global")]
    assert "may only define [services.NAME]" in found["10-x.toml", "global"]


def test_duplicate_service_across_files_names_both(tmp_path: Path) -> None:
    issue = only(issues(tmp_path, DNS, {"10-dup.toml": DNS}))
    assert issue.file == str(tmp_path / "conf.d" / "10-dup.toml")
    assert issue.key == "services.dns"
    assert str(tmp_path / "anycastd.toml") in issue.message


def test_errors_in_two_files_are_reported_together(tmp_path: Path) -> None:
    main = DNS.replace('qname = "example.com"', 'qname = "example.com"\ntimeout = 1')
    dropin = '[services.web]\nprefixes = ["203.0.113.1/24"]\nchecks = [{type="file", path="x"}]\n'
    found = issues(tmp_path, main, {"10-web.toml": dropin})
    assert set(keyed(found)) == {
        ("anycastd.toml", "services.dns.checks[0].timeout"),
        ("10-web.toml", "services.web.prefixes[0]"),
        ("10-web.toml", "services.web.checks[0].path"),
    }
    # main file first, then drop-ins
    assert Path(found[0].file).name == "anycastd.toml"


def test_error_str_renders_one_issue_per_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[global]\nnodee = "x"\nlog_level = "loud"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    assert lines == [
        f'{path}: global.log_level: expected "debug", "info", "warning" or "error", got "loud"',
        f'{path}: global.nodee: unknown key (did you mean "node"?)',
    ]


def test_an_empty_file_is_a_valid_config(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config.services == {}
    assert config.bgp is None
    assert config.api.port == 9180


# ----------------------------------------------------------------- structural errors


def test_unknown_top_level_key_is_suggested(tmp_path: Path) -> None:
    found = keyed(issues(tmp_path, "[servics.x]\n"))
    assert list(found) == [("anycastd.toml", "servics")]
    assert found["anycastd.toml", "servics"].startswith('unknown key (did you mean "services"')


def test_unknown_key_without_a_close_match_lists_valid_keys(tmp_path: Path) -> None:
    found = keyed(issues(tmp_path, "[api]\nzzz = 1\n"))
    assert found["anycastd.toml", "api.zzz"] == (
        "unknown key; valid keys are enabled, listen, socket, socket_group")


def test_unknown_check_option_names_the_types_that_have_it(tmp_path: Path) -> None:
    text = DNS + '[[services.dns.checks]]\ntype = "http"\nurl = "http://127.0.0.1/"\nsni = "a"\n'
    found = keyed(issues(tmp_path, text))
    assert found == {
        (
            "anycastd.toml",
            "services.dns.checks[1].sni",
        ): '"sni" is not an option of http checks (it is an option of: https)'
    }


def test_unknown_check_type(tmp_path: Path) -> None:
    found = keyed(issues(tmp_path, DNS + '[[services.dns.checks]]\ntype = "smtp"\n'))
    message = found["anycastd.toml", "services.dns.checks[1]"]
    assert message.startswith('unknown check type "smtp"; expected one of tcp, http')


def test_missing_required_check_option(tmp_path: Path) -> None:
    found = keyed(issues(tmp_path, DNS + '[[services.dns.checks]]\ntype = "tcp"\nport = 53\n'))
    assert found == {("anycastd.toml", "services.dns.checks[1].host"): "required key is missing"}


def test_bare_number_duration_says_to_write_seconds(tmp_path: Path) -> None:
    found = keyed(issues(tmp_path, DNS.replace("prefixes", "interval = 2\nprefixes")))
    message = found["anycastd.toml", "services.dns.interval"]
    assert 'write "2s"' in message


def test_unknown_duration_unit(tmp_path: Path) -> None:
    found = keyed(issues(tmp_path, '[global]\nreconcile_interval = "5 minutes"\n'))
    assert found["anycastd.toml", "global.reconcile_interval"] == (
        'expected a duration such as "250ms", "2s", "1m", "1h" or "7d", got "5 minutes"'
    )


def test_zero_interval_is_rejected(tmp_path: Path) -> None:
    found = keyed(issues(tmp_path, DNS.replace("prefixes", 'interval = "0s"\nprefixes')))
    assert found["anycastd.toml", "services.dns.interval"] == "must be longer than 0s"


def test_bad_prefix(tmp_path: Path) -> None:
    found = keyed(issues(tmp_path, DNS.replace("192.0.2.53/32", "192.0.2.300/32")))
    assert found["anycastd.toml", "services.dns.prefixes[0]"].startswith(
        '"192.0.2.300/32" is not an IP prefix'
    )


def test_prefix_with_host_bits_suggests_the_network(tmp_path: Path) -> None:
    found = keyed(issues(tmp_path, DNS.replace("192.0.2.53/32", "192.0.2.1/24")))
    assert found["anycastd.toml", "services.dns.prefixes[0]"] == (
        "192.0.2.1/24 has host bits set; did you mean 192.0.2.0/24?"
    )


def test_ipv6_prefix_with_host_bits(tmp_path: Path) -> None:
    found = keyed(issues(tmp_path, DNS.replace("192.0.2.53/32", "2001:db8::1/64")))
    assert found["anycastd.toml", "services.dns.prefixes[0]"] == (
        "2001:db8::1/64 has host bits set; did you mean 2001:db8::/64?"
    )


def test_prefix_needs_a_length(tmp_path: Path) -> None:
    found = keyed(issues(tmp_path, DNS.replace("192.0.2.53/32", "192.0.2.53")))
    assert found["anycastd.toml", "services.dns.prefixes[0]"] == (
        '"192.0.2.53" has no prefix length; write "192.0.2.53/32"'
    )


def test_bad_address(tmp_path: Path) -> None:
    found = keyed(issues(tmp_path, DNS.replace('server = "127.0.0.1"', 'server = "localhost"')))
    assert found["anycastd.toml", "services.dns.checks[0].server"].startswith(
        '"localhost" is not an IPv4 or IPv6 address'
    )


def test_invalid_service_name(tmp_path: Path) -> None:
    found = keyed(issues(tmp_path, DNS.replace("services.dns", "services.DNS")))
    assert ("anycastd.toml", "services.DNS") in found


def test_service_name_with_a_dot_is_quoted_in_key_paths(tmp_path: Path) -> None:
    text = DNS.replace("services.dns", 'services."dns.v2"').replace("type =", "timeout = 3\ntype =")
    found = keyed(issues(tmp_path, text))
    assert ("anycastd.toml", 'services."dns.v2".checks[0].timeout') in found


def test_wrong_types_are_described_in_toml_terms(tmp_path: Path) -> None:
    text = (
        '[global]\nmax_concurrent_checks = "many"\n[api]\nenabled = "yes"\n[metrics]\nenabled = 1\n'
    )
    found = keyed(issues(tmp_path, text))
    assert found == {
        ("anycastd.toml", "global.max_concurrent_checks"): 'expected a whole number, got "many"',
        ("anycastd.toml", "api.enabled"): 'expected true or false, got "yes"',
        ("anycastd.toml", "metrics.enabled"): "expected true or false, got 1",
    }


def test_a_list_with_bad_items_is_not_also_reported_as_too_short(tmp_path: Path) -> None:
    text = (
        DNS
        + '[services.dns.ipvs]\nport = 53\nreal_servers = [{address = "10.0.0.1", weight = -1}]\n'
    )
    found = keyed(issues(tmp_path, text))
    assert list(found) == [("anycastd.toml", "services.dns.ipvs.real_servers[0].weight")]


def test_ospf_area_as_number_or_dotted() -> None:
    ospf = loads(DNS + "[services.dns.ospf]\narea = 1\n").services["dns"].ospf
    assert ospf is not None
    assert (ospf.area, ospf.metric.up, ospf.metric.maintenance) == ("0.0.0.1", 10, 65535)


def test_section_that_is_not_a_table(tmp_path: Path) -> None:
    found = keyed(issues(tmp_path, 'api = "on"\n'))
    assert found == {("anycastd.toml", "api"): 'expected a table, got "on"'}


def test_no_pydantic_jargon_reaches_the_user(tmp_path: Path) -> None:
    text = """
api = 3
[global]
node = 5
state_dir = "relative"
[services.a]
prefixes = "x"
checks = [5, {type = 5}, {type = "exec", argv = []}, {type = "file", path = "/x", expect = 1}]
damping = []
[services.a.bgp.up]
med = -1
communities = ["x"]
"""
    found = issues(tmp_path, text)
    assert len(found) >= 9
    for issue in found:
        assert "Input should" not in issue.message
        assert "pydantic" not in issue.message.lower()
        assert "Value error" not in issue.message


# ----------------------------------------------------------------- cross-field rules

RULES = [
    pytest.param(
        DNS.replace("prefixes", 'interval = "1s"\ntimeout = "1s"\nprefixes'),
        "services.dns.timeout",
        "timeout 1s must be less than interval 1s",
        id="timeout-lt-interval",
    ),
    pytest.param(
        DNS.replace("prefixes", 'timeout = "1s"\nprefixes') + 'interval = "500ms"\n',
        "services.dns.checks[0].interval",
        "timeout 1s (inherited from the service) must be less than interval 500ms",
        id="check-timeout-lt-own-interval",
    ),
    pytest.param(
        DNS.replace('qname = "example.com"', 'qname = "example.com"\ntimeout = "3s"').replace(
            "prefixes", 'interval = "2s"\nprefixes'),
        "services.dns.checks[0].timeout",
        "timeout 3s must be less than interval 2s",
        id="check-timeout-lt-inherited-interval",
    ),
    pytest.param(
        DNS.replace("prefixes", 'fast_interval = "3s"\nprefixes'),
        "services.dns.fast_interval",
        "fast_interval 3s must be at most interval 400ms",
        id="fast-interval-le-interval",
    ),
    pytest.param(
        DNS.replace("prefixes", 'jitter = "2s"\nprefixes'),
        "services.dns.jitter",
        "jitter 2s must be less than interval 400ms",
        id="jitter-lt-interval",
    ),
    pytest.param(
        DNS.replace("prefixes", "rise = 0\nprefixes"),
        "services.dns.rise",
        "must be >= 1, got 0",
        id="rise-ge-1",
    ),
    pytest.param(
        DNS.replace('qname = "example.com"', 'qname = "example.com"\nfall = 0'),
        "services.dns.checks[0].fall",
        "must be >= 1, got 0",
        id="check-fall-ge-1",
    ),
    pytest.param(
        DNS.replace("prefixes", 'policy = "at-least 2"\nprefixes'),
        "services.dns.policy",
        '"at-least 2" needs at least 2 checks, the service has 1',
        id="policy-at-least-n",
    ),
    pytest.param(
        DNS.replace("prefixes", 'policy = "most"\nprefixes'),
        "services.dns.policy",
        'expected "all", "any" or "at-least N" (N >= 1), got "most"',
        id="policy-syntax",
    ),
    pytest.param(
        DNS + "[services.dns.damping]\nsuppress = 1000\nreuse = 1000\n",
        "services.dns.damping.reuse",
        "must be less than suppress (1000), got 1000",
        id="damping-reuse-lt-suppress",
    ),
    pytest.param(
        '[services.x]\nprefixes = ["192.0.2.1/32"]\n',
        "services.x.checks",
        "a service needs at least one [[services.NAME.checks]] unless disabled = true",
        id="checks-required-unless-disabled",
    ),
    pytest.param(
        DNS + DNS[DNS.index("[[") :].replace("type", 'name = "dns-0"\ntype'),
        "services.dns.checks[1].name",
        '"dns-0" is also the name of checks[0]; check names must be unique within a service',
        id="check-names-unique",
    ),
    pytest.param(
        DNS.replace('"192.0.2.53/32"', '"192.0.2.53/32", "192.0.2.53/32"'),
        "services.dns.prefixes[1]",
        "192.0.2.53/32 is listed twice",
        id="prefix-twice",
    ),
    pytest.param(
        BGP.replace('local_address = "198.51.100.2"', 'local_address = "2001:db8::2"') + DNS,
        "bgp.neighbors[0].local_address",
        "2001:db8::2 is IPv6 but the neighbor address 198.51.100.1 is IPv4; "
        "they must be the same family",
        id="neighbor-local-address-family",
    ),
    pytest.param(
        BGP.replace('local_address = "2001:db8:ffff::2"\n', "") + DNS,
        "bgp.neighbors[1].local_address",
        'required because bgp.next_hop = "self" (the next hop is the local address)',
        id="next-hop-self-needs-local-address",
    ),
    pytest.param(
        BGP.replace('name = "r6"', 'name = "r1"') + DNS,
        "bgp.neighbors[1].name",
        '"r1" is also the name of neighbors[0]',
        id="neighbor-names-unique",
    ),
    pytest.param(
        BGP.replace('router_id = "192.0.2.1"\n', "") + DNS,
        "bgp.router_id",
        'required when bgp.mode = "managed"',
        id="managed-needs-router-id",
    ),
    pytest.param(
        '[bgp]\nrouter_id = "192.0.2.1"\nlocal_as = 65001\n' + DNS,
        "bgp.neighbors",
        'at least one [[bgp.neighbors]] is required when bgp.mode = "managed"',
        id="managed-needs-neighbors",
    ),
    pytest.param(
        '[bgp]\nrouter_id = "192.0.2.1"\nlocal_as = 65001\n[[bgp.neighbors]]\n'
        'address = "198.51.100.1"\npeer_as = 65000\nhold_time = "2s"\n' + DNS,
        "bgp.neighbors[0].hold_time",
        "must be 0s or 3s..65535s in whole seconds, got 2s",
        id="hold-time-range",
    ),
    pytest.param(
        BGP + DNS + '[services.dns.bgp.draining]\nneighbors = ["r1", "r9"]\n',
        "services.dns.bgp.draining.neighbors[1]",
        'no BGP neighbor named or addressed "r9" (known: r1, r6)',
        id="state-neighbors-exist",
    ),
    pytest.param(
        DNS + '[services.dns.bgp.up]\nneighbors = ["r1"]\n',
        "services.dns.bgp.up.neighbors[0]",
        'no BGP neighbor named or addressed "r1" (there is no [[bgp.neighbors]])',
        id="state-neighbors-without-bgp",
    ),
    pytest.param(
        BGP[: BGP.index('[[bgp.neighbors]]\nname = "r6"')]
        + DNS.replace('"192.0.2.53/32"', '"192.0.2.53/32", "2001:db8::53/128"'),
        "services.dns.prefixes[1]",
        '2001:db8::53/128 cannot be announced: no BGP neighbor has "ipv6 unicast" in its families',
        id="prefix-family-announceable",
    ),
    pytest.param(
        DNS + "[services.dns.ipvs]\nport = 53\nmin_healthy = 2\n"
        '[[services.dns.ipvs.real_servers]]\naddress = "10.1.0.1"\n',
        "services.dns.ipvs.min_healthy",
        "must be at most the number of real servers (1), got 2",
        id="ipvs-min-healthy",
    ),
    pytest.param(
        DNS + '[services.dns.ipvs]\nprotocol = "fwmark"\nport = 53\nfwmark = 7\n'
        '[[services.dns.ipvs.real_servers]]\naddress = "10.1.0.1"\n',
        "services.dns.ipvs.port",
        'not allowed when protocol = "fwmark" (the mark selects the traffic); '
        "set ports on the real servers if they differ",
        id="ipvs-fwmark-forbids-port",
    ),
    pytest.param(
        DNS + '[services.dns.ipvs]\nprotocol = "fwmark"\n'
        '[[services.dns.ipvs.real_servers]]\naddress = "10.1.0.1"\n',
        "services.dns.ipvs.fwmark",
        'required (> 0) when protocol = "fwmark"',
        id="ipvs-fwmark-required",
    ),
    pytest.param(
        DNS + '[services.dns.ipvs]\nprotocol = "udp"\n'
        '[[services.dns.ipvs.real_servers]]\naddress = "10.1.0.1"\n',
        "services.dns.ipvs.port",
        'required when protocol = "udp"',
        id="ipvs-port-required",
    ),
    pytest.param(
        DNS + "[services.dns.ipvs]\nport = 53\nfwmark = 1\n"
        '[[services.dns.ipvs.real_servers]]\naddress = "10.1.0.1"\n',
        "services.dns.ipvs.fwmark",
        'only allowed when protocol = "fwmark", not "tcp"',
        id="ipvs-fwmark-only-with-fwmark",
    ),
    pytest.param(
        DNS + "[services.dns.ipvs]\nport = 53\n"
        '[[services.dns.ipvs.real_servers]]\naddress = "10.1.0.1"\n'
        'port = 5353\nforwarding = "dr"\n',
        "services.dns.ipvs.real_servers[0].port",
        'forwarding = "dr" cannot change the port: must equal the virtual port 53, got 5353',
        id="ipvs-dr-same-port",
    ),
    pytest.param(
        DNS.replace("192.0.2.53/32", "192.0.2.0/24") + "[services.dns.ipvs]\nport = 53\n"
        '[[services.dns.ipvs.real_servers]]\naddress = "10.1.0.1"\n',
        "services.dns.prefixes[0]",
        "192.0.2.0/24 is not a single address; an IPVS service needs /32 or /128 prefixes",
        id="ipvs-host-prefix",
    ),
    pytest.param(
        DNS.replace("prefixes", 'interval = "2s"\nprefixes') + "[services.dns.ipvs]\nport = 53\n"
        '[[services.dns.ipvs.real_servers]]\naddress = "10.1.0.1"\n'
        'checks = [{type = "tcp", host = "10.1.0.1", port = 53, timeout = "5s"}]\n',
        "services.dns.ipvs.real_servers[0].checks[0].timeout",
        "timeout 5s must be less than interval 2s",
        id="real-server-check-timing",
    ),
    pytest.param(
        DNS.replace('"192.0.2.53/32"', '"192.0.2.53/32", "2001:db8::53/128"')
        + "[services.dns.ipvs]\nport = 53\n"
        '[[services.dns.ipvs.real_servers]]\naddress = "10.1.0.1"\n',
        "services.dns.prefixes[1]",
        "no real server can serve 2001:db8::53/128: it needs an IPv6 real server "
        '(or one with forwarding = "tunnel")',
        id="ipvs-prefix-family-needs-real-server",
    ),
    pytest.param(
        DNS + "[services.dns.ipvs]\nport = 53\n"
        '[[services.dns.ipvs.real_servers]]\naddress = "10.1.0.1"\n'
        '[[services.dns.ipvs.real_servers]]\naddress = "2001:db8::1"\nforwarding = "dr"\n',
        "services.dns.ipvs.real_servers[1].address",
        '2001:db8::1 is IPv6 but the service has no IPv6 prefix; forwarding = "dr" works '
        "only within one address family",
        id="ipvs-real-server-family",
    ),
    pytest.param(
        "[api]\nenabled = false\n[metrics]\nenabled = true\n",
        "metrics.enabled",
        "metrics are served on the api listener, but api.enabled = false",
        id="metrics-need-api",
    ),
    pytest.param(
        DNS + '[[services.dns.checks]]\ntype = "https"\nurl = "https://127.0.0.1/"\n'
        'client_key = "/etc/k.pem"\n',
        "services.dns.checks[1].client_key",
        "client_key needs client_cert",
        id="client-key-needs-cert",
    ),
]


@pytest.mark.parametrize(("text", "key", "message"), RULES)
def test_rule_is_reported_at_its_key(tmp_path: Path, text: str, key: str, message: str) -> None:
    found = keyed(issues(tmp_path, text))
    assert found.get(("anycastd.toml", key)) == message, "\n".join(
        f"{k}: {m}" for k, m in found.items()
    )


def test_inherited_violation_is_reported_once_at_the_service(tmp_path: Path) -> None:
    found = issues(tmp_path, DNS.replace("prefixes", 'interval = "2s"\ntimeout = "5s"\nprefixes'))
    assert only(found).key == "services.dns.timeout"


def test_a_timeout_without_an_interval_makes_the_interval_twice_as_long() -> None:
    # a config written for the old 2 s default (timeout 1.5 s, no interval) stays valid
    service = loads(DNS.replace("prefixes", 'timeout = "1500ms"\nprefixes')
                    + '[[services.dns.checks]]\ntype = "file"\npath = "/x"\ntimeout = "5s"\n'
                    + '[[services.dns.checks]]\ntype = "file"\npath = "/y"\n'
                    'timeout = "100ms"\n').services["dns"]
    assert (service.interval, service.timeout, service.fast_interval) == (3, 1.5, 0.1)
    inherited, long, short = service.checks
    assert (inherited.interval, inherited.timeout) == (3, 1.5)
    assert (long.interval, long.timeout) == (10, 5)
    assert (short.interval, short.timeout) == (0.4, 0.1)  # never below the default


def test_shared_prefix_needs_shared_prefixes_in_every_claimant(tmp_path: Path) -> None:
    other = DNS.replace("services.dns", "services.dns2").replace(
        "prefixes", "shared_prefixes = true\nprefixes"
    )
    found = issues(tmp_path, DNS, {"10-dns2.toml": other})
    issue = only(found)
    assert (issue.file, issue.key) == (str(tmp_path / "anycastd.toml"), "services.dns.prefixes[0]")
    assert '192.0.2.53/32 is also claimed by service "dns2"' in issue.message
    assert str(tmp_path / "conf.d" / "10-dns2.toml") in issue.message


def test_shared_prefix_allowed_when_all_share(tmp_path: Path) -> None:
    shared = DNS.replace("prefixes", "shared_prefixes = true\nprefixes")
    path = write(tmp_path, shared, {"10-b.toml": shared.replace("services.dns", "services.b")})
    config = load_config(path)
    assert config.services["dns"].prefixes == config.services["b"].prefixes


def test_service_bgp_attributes_without_bgp_section_are_fine(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, DNS + "[services.dns.bgp.up]\nmed = 5\n"))
    assert config.bgp is None
    assert config.services["dns"].bgp.up.med == 5


# ----------------------------------------------------------------- defaults and model


def test_checks_inherit_service_timing_and_override_it() -> None:
    config = loads(
        DNS.replace("prefixes", 'interval = "10s"\ntimeout = "3s"\nrise = 5\nprefixes')
        + '[[services.dns.checks]]\ntype = "file"\npath = "/x"\n'
        + 'interval = "1s"\ntimeout = "100ms"\n'
        + '[[services.dns.checks]]\ntype = "file"\npath = "/y"\ninterval = "4s"\n'
    )
    inherited, own, derived = config.services["dns"].checks
    assert (inherited.interval, inherited.timeout, inherited.rise, inherited.fall) == (10, 3, 5, 5)
    # a changing check is re-probed every 100 ms whatever the steady interval
    assert (inherited.fast_interval, inherited.jitter) == (0.1, 1)
    assert (own.interval, own.timeout, own.rise) == (1, 0.1, 5)
    # derived defaults follow the check's own interval; explicit service values win
    assert (own.fast_interval, own.jitter) == (0.1, 0.1)
    assert (derived.interval, derived.timeout, derived.fast_interval) == (4, 3, 0.1)


def test_defaults_without_any_timing() -> None:
    service = loads(DNS).services["dns"]
    check = service.checks[0]
    assert isinstance(check, DnsCheck)
    # the defaults of issue 9 (bench/bench_timing.py): 400 ms, re-checks every 100 ms
    # while changing, 5 in a row either way
    assert (service.interval, service.timeout, service.fast_interval, service.jitter) == (
        0.4,
        0.2,
        0.1,
        0.04,
    )
    assert (check.interval, check.timeout, check.fast_interval, check.rise, check.fall,
            check.jitter) == (0.4, 0.2, 0.1, 5, 5, 0.04)
    assert (check.name, check.port, check.qtype, check.rcode, check.transport) == (
        "dns-0",
        53,
        "A",
        "NOERROR",
        "udp",
    )
    assert service.start_state == "down"
    assert service.min_passing == 1


def test_short_interval_derives_a_valid_timeout() -> None:
    service = loads(DNS.replace("prefixes", 'interval = "500ms"\nprefixes')).services["dns"]
    assert (service.timeout, service.checks[0].timeout, service.checks[0].jitter) == (
        0.25,
        0.25,
        0.05,
    )


def test_real_server_defaults() -> None:
    service = loads(
        DNS.replace("prefixes", 'interval = "5s"\nprefixes')
        + '[services.dns.ipvs]\nprotocol = "udp"\nport = 53\n'
        '[[services.dns.ipvs.real_servers]]\naddress = "10.1.0.1"\n'
        'checks = [{type = "tcp", host = "10.1.0.1", port = 53}]\n'
    ).services["dns"]
    assert service.ipvs is not None
    rs = service.ipvs.real_servers[0]
    assert (rs.port, rs.weight, rs.forwarding) == (53, 1, "nat")
    assert rs.address == ip_address("10.1.0.1")
    check = rs.checks[0]
    assert isinstance(check, TcpCheck)
    assert (check.name, check.interval, check.timeout) == ("tcp-0", 5, 1)
    assert (service.ipvs.scheduler, service.ipvs.min_healthy, service.ipvs.on_backend_fail) == (
        "wlc",
        1,
        "weight0",
    )


def test_bgp_defaults() -> None:
    config = loads(
        '[bgp]\nrouter_id = "192.0.2.1"\nlocal_as = 65001\nnext_hop = "2001:db8::9"\n'
        '[[bgp.neighbors]]\naddress = "2001:DB8::1"\npeer_as = 65000\n'
        + DNS.replace("192.0.2.53/32", "2001:db8::53/128")
    )
    assert config.bgp is not None
    neighbor = config.bgp.neighbors[0]
    assert (neighbor.name, neighbor.families, neighbor.hold_time) == (
        "2001:db8::1",
        ("ipv6 unicast",),
        9,
    )
    assert config.bgp.next_hop == ip_address("2001:db8::9")
    assert config.bgp.neighbor("2001:db8:0::1") is neighbor
    assert config.bgp.neighbor("nope") is None


def test_state_attribute_defaults() -> None:
    bgp = (
        loads(
            DNS
            + '[services.dns.bgp.draining]\ncommunities = ["no-export", "65000:1", "65535:65281"]\n'
        )
        .services["dns"]
        .bgp
    )
    assert bgp.up.announce
    assert bgp.draining.announce
    assert not bgp.maintenance.announce
    assert bgp.draining.communities == ("65535:65281", "65000:1", "65535:0")
    assert bgp.up.communities == ()
    assert bgp.for_state("down") is None


def test_check_types_parse_their_options() -> None:
    config = loads(
        DNS
        + '[[services.dns.checks]]\ntype = "exec"\nargv = ["/bin/check", "-v"]\nenv = {A = "1"}\n'
        + '[[services.dns.checks]]\ntype = "https"\nurl = "https://127.0.0.1/"\n'
        'headers = {X = "y"}\nexpect_status = [200, 301]\n'
        + '[[services.dns.checks]]\ntype = "file"\npath = "/run/flag"\n'
        + '[[services.dns.checks]]\ntype = "tls"\nhost = "::1"\nmin_remaining = "14d"\n'
    )
    _, exe, https, file, tls = config.services["dns"].checks
    assert isinstance(exe, ExecCheck)
    assert (exe.argv, dict(exe.env), exe.output_limit) == (("/bin/check", "-v"), {"A": "1"}, 4096)
    assert isinstance(https, HttpsCheck)
    assert (dict(https.headers), https.expect_status, https.verify) == (
        {"X": "y"},
        (200, 301),
        True,
    )
    assert isinstance(file, FileCheck)
    assert (file.path, file.expect) == (Path("/run/flag"), "present")
    assert tls.min_remaining == 14 * 86400


def test_probe_options_are_the_type_options_as_plain_values() -> None:
    config = loads(DNS.replace('qname = "example.com"', 'qname = "example.com"\nexpect = ["x"]'))
    options = config.services["dns"].checks[0].probe_options()
    assert options == {
        "server": "127.0.0.1",
        "port": 53,
        "qname": "example.com",
        "qtype": "A",
        "rcode": "NOERROR",
        "expect": ("x",),
        "transport": "udp",
    }


def test_policy_is_normalized() -> None:
    text = DNS.replace("prefixes", 'policy = "at-least   2"\nprefixes') + DNS[DNS.index("[[") :]
    service = loads(text.replace('type = "dns"', 'name = "b"\ntype = "dns"', 1)).services["dns"]
    assert (service.policy, service.min_passing) == ("at-least 2", 2)


def test_api_listen_host_and_port() -> None:
    assert (loads('[api]\nlisten = "[::1]:9000"\n').api.host, 9000) == ("::1", 9000)
    api = loads('[api]\nlisten = "localhost:80"\n').api
    assert (api.host, api.port) == ("localhost", 80)


def test_unchanged_service_is_equal_across_loads(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        DNS
        + DNS.replace("dns]", "web]")
        .replace("services.dns", "services.web")
        .replace("192.0.2.53", "192.0.2.80"),
    )
    first = load_config(path)
    path.write_text(path.read_text().replace('qname = "example.com"', 'qname = "example.org"', 1))
    second = load_config(path)
    assert first.services["web"] == second.services["web"]
    assert hash(first.services["web"]) == hash(second.services["web"])
    assert first.services["dns"] != second.services["dns"]
    changed = {n for n in first.services if first.services[n] != second.services.get(n)}
    assert changed == {"dns"}
    assert first != second
    assert load_config(path) == second
    assert hash(load_config(path)) == hash(second)


def test_models_are_frozen() -> None:
    service = loads(DNS).services["dns"]
    with pytest.raises(pydantic.ValidationError):
        service.interval = 5  # type: ignore[misc]
    assert isinstance(service.prefixes, tuple)
    assert service.prefixes == (IPv4Network("192.0.2.53/32"),)


def test_models_can_be_built_in_code() -> None:
    service = ServiceConfig.model_validate(
        {
            "name": "x",
            "prefixes": ["192.0.2.1/32"],
            "interval": "4s",
            "checks": [{"type": "file", "path": "/x"}],
        }
    )
    assert service.checks[0].interval == 4
    config = Config.model_validate({"services": {"x": service}})
    assert config.services["x"] is service


def test_fixture_file_with_every_check_type_loads() -> None:
    config = load_config(DATA / "all-checks" / "anycastd.toml")
    types = sorted({c.type for s in config.services.values() for c in s.checks})
    assert types == ["dns", "exec", "file", "http", "https", "tcp", "tls"]


def _all_models() -> list[type[pydantic.BaseModel]]:
    return [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, pydantic.BaseModel)
        and obj.__module__ == module.__name__
        and not obj.__name__.startswith("_")
    ]


def test_every_key_is_documented() -> None:
    doc = (REPO / "docs" / "configuration.md").read_text()
    internal = {"sources", "service_sources"}  # not written by users

    def documented(key: str) -> bool:
        # `key`, `section.key` or [section.key] somewhere in a code span
        return re.search(rf"`[^`\n]*(?<![\w-]){re.escape(key)}(?![\w-])[^`\n]*`", doc) is not None

    missing = {
        f"{model.__name__}.{info.alias or field}"
        for model in _all_models()
        for field, info in model.model_fields.items()
        if (info.alias or field) not in internal and not documented(info.alias or field)
    }
    assert len(_all_models()) > 20
    assert not documented("no_such_key")
    assert missing == set()


def test_a_dropin_that_is_not_a_regular_file_is_an_error_not_skipped(tmp_path: Path) -> None:
    # Skipping it would make a reload silently drop (withdraw) its services.
    main = tmp_path / "anycastd.toml"
    main.write_text("")
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "10-web.toml").symlink_to(tmp_path / "moved-away.toml")
    (tmp_path / "conf.d" / "20-dir.toml").mkdir()
    with pytest.raises(ConfigError) as info:
        load_config(main)
    files = {i.file for i in info.value.issues}
    dropins = tmp_path / "conf.d"
    assert files == {str(dropins / "10-web.toml"), str(dropins / "20-dir.toml")}
    assert all("not a regular file" in i.message for i in info.value.issues)


def test_absurd_durations_are_a_config_error_not_a_crash() -> None:
    with pytest.raises(ConfigError) as info:
        loads('[services.a]\nprefixes = ["192.0.2.1/32"]\ninterval = "' + "9" * 400 + 's"\n'
              '[[services.a.checks]]\ntype = "file"\npath = "/x"\n')
    assert any(i.key == "services.a.interval" for i in info.value.issues)


def test_an_exec_check_with_a_relative_program_needs_cwd() -> None:
    base = '[services.a]\nprefixes = ["192.0.2.1/32"]\n[[services.a.checks]]\ntype = "exec"\n'
    with pytest.raises(ConfigError) as info:
        loads(base + 'argv = ["./check.sh"]\n')
    assert [i.key for i in info.value.issues] == ["services.a.checks[0]"]
    assert "relative" in info.value.issues[0].message
    loads(base + 'argv = ["./check.sh"]\ncwd = "/opt/checks"\n')  # explicit directory: fine
    loads(base + 'argv = ["check-dns"]\n')  # a bare name is looked up on PATH
