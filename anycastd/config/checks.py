"""Cross-field and cross-section rules over already validated pieces: what one model cannot
see alone (timeout < interval, neighbors that exist, one owner per prefix, IPVS families)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from anycastd.config.errors import ConfigIssue, _fmt
from anycastd.config.lvs import (
    check_director,
    check_policy_routing,
    check_real_server,
    check_roles,
)
from anycastd.config.schema import (
    ApiConfig,
    BgpConfig,
    HttpsCheck,
    MetricsConfig,
    ServiceConfig,
    _CheckBase,
)
from anycastd.durations import format_duration


class _Rules:
    """Cross-field and cross-section rules over already validated pieces."""

    def __init__(self, main_file: str, owners: Mapping[str, str]) -> None:
        self.main_file = main_file
        self.owners = owners
        self.issues: list[ConfigIssue] = []

    def add(self, file: str, key: list[str | int], message: str) -> None:
        self.issues.append(ConfigIssue(file, _fmt(key), message))

    def check_sections(self, doc: Mapping[str, Any], sections: Mapping[str, Any]) -> None:
        api, metrics = sections.get("api"), sections.get("metrics")
        if (
            isinstance(api, ApiConfig)
            and not api.enabled
            and isinstance(metrics, MetricsConfig)
            and "enabled" in doc.get("metrics", {})
            and metrics.enabled
        ):
            self.add(
                self.main_file,
                ["metrics", "enabled"],
                "metrics are served on the api listener, but api.enabled = false",
            )
        bgp = sections.get("bgp")
        if isinstance(bgp, BgpConfig):
            self._check_bgp(bgp)

    def _check_bgp(self, bgp: BgpConfig) -> None:
        f = self.main_file
        if bgp.mode == "managed":
            for field in ("router_id", "local_as"):
                if getattr(bgp, field) is None:
                    self.add(f, ["bgp", field], 'required when bgp.mode = "managed"')
            if not bgp.neighbors:
                self.add(
                    f,
                    ["bgp", "neighbors"],
                    'at least one [[bgp.neighbors]] is required when bgp.mode = "managed"',
                )
        names: dict[str, int] = {}
        addresses: dict[IPv4Address | IPv6Address, int] = {}
        for i, n in enumerate(bgp.neighbors):
            key: list[str | int] = ["bgp", "neighbors", i]
            if n.name in names:
                self.add(
                    f, [*key, "name"], f'"{n.name}" is also the name of neighbors[{names[n.name]}]'
                )
            names.setdefault(n.name, i)
            if n.address in addresses:
                self.add(
                    f,
                    [*key, "address"],
                    f"{n.address} is also the address of neighbors[{addresses[n.address]}]",
                )
            addresses.setdefault(n.address, i)
            if n.local_address is not None and n.local_address.version != n.address.version:
                self.add(
                    f,
                    [*key, "local_address"],
                    f"{n.local_address} is IPv{n.local_address.version} but the neighbor "
                    f"address {n.address} is IPv{n.address.version}; they must be the same family",
                )
            if bgp.next_hop == "self" and n.local_address is None:
                self.add(
                    f,
                    [*key, "local_address"],
                    'required because bgp.next_hop = "self" (the next hop is the local address)',
                )

    def check_service(
        self, service: ServiceConfig, raw: Mapping[str, Any], bgp: BgpConfig | None
    ) -> None:
        file = self.owners[service.name]
        base: list[str | int] = ["services", service.name]
        self._check_timing(file, base, service, raw, None)
        for i, check in enumerate(service.checks):
            self._check_timing(file, [*base, "checks", i], check, _raw_at(raw, "checks", i), raw)
            self._check_options(file, [*base, "checks", i], check)
        self._check_check_names(file, [*base, "checks"], service.checks)

        if not service.checks and not service.disabled:
            self.add(
                file,
                [*base, "checks"],
                "a service needs at least one [[services.NAME.checks]] unless disabled = true",
            )
        if service.policy.startswith("at-least") and service.min_passing > len(service.checks):
            self.add(
                file,
                [*base, "policy"],
                f'"{service.policy}" needs at least {service.min_passing} checks, '
                f"the service has {len(service.checks)}",
            )
        seen: dict[IPv4Network | IPv6Network, int] = {}
        for i, prefix in enumerate(service.prefixes):
            if prefix in seen:
                self.add(file, [*base, "prefixes", i], f"{prefix} is listed twice")
            seen.setdefault(prefix, i)
        if service.damping is not None and service.damping.reuse >= service.damping.suppress:
            self.add(
                file,
                [*base, "damping", "reuse"],
                f"must be less than suppress ({service.damping.suppress}), "
                f"got {service.damping.reuse}",
            )
        if service.ipvs is not None:
            self._check_ipvs(file, [*base, "ipvs"], service, _raw_at(raw, "ipvs"), raw)
        check_real_server(self.add, file, base, service)
        check_director(self.add, file, base, service)
        check_policy_routing(self.add, file, base, service)
        self._check_service_bgp(file, base, service, bgp)
        self._check_service_ospf(file, base, service)

    def _check_service_ospf(
        self, file: str, base: list[str | int], service: ServiceConfig
    ) -> None:
        """OSPFv2 (ospfd) carries IPv4 only: an IPv6 prefix would be planned on every pass
        and never published."""
        if service.ospf is None:
            return
        for i, prefix in enumerate(service.prefixes):
            if prefix.version == 6:
                self.add(
                    file,
                    [*base, "prefixes", i],
                    f"{prefix} cannot be published over OSPF: anycastd publishes through "
                    "ospfd (OSPFv2, IPv4 only); give this service IPv4 prefixes only, or "
                    "publish it over BGP",
                )

    def _check_timing(
        self,
        file: str,
        key: list[str | int],
        item: _CheckBase | ServiceConfig,
        raw: Mapping[str, Any],
        service_raw: Mapping[str, Any] | None,
    ) -> None:
        """timeout < interval, fast_interval <= interval, jitter < interval.

        For a check, a violation is reported only where the check sets one of the two
        values itself; otherwise it is the service's values and reported there once.
        """
        interval = item.interval
        for field, bad, relation in (
            ("timeout", item.timeout >= interval, "less than"),
            ("fast_interval", item.fast_interval > interval, "at most"),
            ("jitter", item.jitter >= interval, "less than"),
        ):
            if not bad:
                continue
            if service_raw is not None and field not in raw and "interval" not in raw:
                continue
            where = field if field in raw or "interval" not in raw else "interval"
            value = format_duration(getattr(item, field))
            origin = "" if field in raw or service_raw is None else " (inherited from the service)"
            self.add(
                file,
                [*key, where],
                f"{field} {value}{origin} must be {relation} interval {format_duration(interval)}",
            )

    def _check_check_names(self, file: str, key: list[str | int], checks: Iterable[Any]) -> None:
        seen: dict[str, int] = {}
        for i, check in enumerate(checks):
            if check.name in seen:
                self.add(
                    file,
                    [*key, i, "name"],
                    f'"{check.name}" is also the name of checks[{seen[check.name]}]; '
                    "check names must be unique within a service",
                )
            seen.setdefault(check.name, i)

    def _check_options(self, file: str, key: list[str | int], check: _CheckBase) -> None:
        if isinstance(check, HttpsCheck) and check.client_key and not check.client_cert:
            self.add(file, [*key, "client_key"], "client_key needs client_cert")

    def _check_ipvs(
        self,
        file: str,
        key: list[str | int],
        service: ServiceConfig,
        raw: Mapping[str, Any],
        service_raw: Mapping[str, Any],
    ) -> None:
        ipvs = service.ipvs
        assert ipvs is not None  # noqa: S101 -- narrowed by the caller
        if ipvs.protocol == "fwmark":
            if ipvs.fwmark is None:
                self.add(file, [*key, "fwmark"], 'required (> 0) when protocol = "fwmark"')
            if ipvs.port is not None:
                self.add(
                    file,
                    [*key, "port"],
                    'not allowed when protocol = "fwmark" (the mark selects the traffic); '
                    "set ports on the real servers if they differ",
                )
        else:
            if ipvs.port is None:
                self.add(file, [*key, "port"], f'required when protocol = "{ipvs.protocol}"')
            if ipvs.fwmark is not None:
                self.add(
                    file,
                    [*key, "fwmark"],
                    f'only allowed when protocol = "fwmark", not "{ipvs.protocol}"',
                )
        if ipvs.min_healthy > len(ipvs.real_servers):
            self.add(
                file,
                [*key, "min_healthy"],
                f"must be at most the number of real servers ({len(ipvs.real_servers)}), "
                f"got {ipvs.min_healthy}",
            )
        for i, prefix in enumerate(service.prefixes):
            if prefix.prefixlen != prefix.max_prefixlen:
                self.add(
                    file,
                    ["services", service.name, "prefixes", i],
                    f"{prefix} is not a single address; an IPVS service needs /32 or /128 prefixes",
                )
        families = {p.version for p in service.prefixes}
        for i, prefix in enumerate(service.prefixes):
            if not any(
                rs.address.version == prefix.version or rs.forwarding == "tunnel"
                for rs in ipvs.real_servers
            ):
                self.add(
                    file,
                    ["services", service.name, "prefixes", i],
                    f"no real server can serve {prefix}: it needs an IPv{prefix.version} real "
                    'server (or one with forwarding = "tunnel")',
                )
        seen: dict[tuple[object, object], int] = {}
        for i, rs in enumerate(ipvs.real_servers):
            if rs.forwarding != "tunnel" and rs.address.version not in families:
                self.add(
                    file,
                    [*key, "real_servers", i, "address"],
                    f"{rs.address} is IPv{rs.address.version} but the service has no "
                    f'IPv{rs.address.version} prefix; forwarding = "{rs.forwarding}" works '
                    "only within one address family",
                )
            rs_key: list[str | int] = [*key, "real_servers", i]
            ident = (rs.address, rs.port)
            if ident in seen:
                self.add(file, rs_key, f"same address and port as real_servers[{seen[ident]}]")
            seen.setdefault(ident, i)
            if (
                rs.forwarding in ("dr", "tunnel")
                and ipvs.port is not None
                and rs.port is not None
                and rs.port != ipvs.port
            ):
                self.add(
                    file,
                    [*rs_key, "port"],
                    f'forwarding = "{rs.forwarding}" cannot change the port: must equal the '
                    f"virtual port {ipvs.port}, got {rs.port}",
                )
            rs_raw = _raw_at(raw, "real_servers", i)
            for j, check in enumerate(rs.checks):
                self._check_timing(
                    file, [*rs_key, "checks", j], check, _raw_at(rs_raw, "checks", j), service_raw
                )
                self._check_options(file, [*rs_key, "checks", j], check)
            self._check_check_names(file, [*rs_key, "checks"], rs.checks)

    def _check_service_bgp(
        self, file: str, base: list[str | int], service: ServiceConfig, bgp: BgpConfig | None
    ) -> None:
        for state in ("up", "draining", "maintenance"):
            attrs = service.bgp.for_state(state)
            if attrs is None or attrs.neighbors is None:
                continue
            for i, ref in enumerate(attrs.neighbors):
                if bgp is None or bgp.neighbor(ref) is None:
                    known = ", ".join(n.name for n in bgp.neighbors) if bgp else ""
                    hint = f" (known: {known})" if known else " (there is no [[bgp.neighbors]])"
                    self.add(
                        file,
                        [*base, "bgp", state, "neighbors", i],
                        f'no BGP neighbor named or addressed "{ref}"{hint}',
                    )
        if bgp is None or not bgp.neighbors:
            return
        families = {fam for n in bgp.neighbors for fam in n.families}
        for i, prefix in enumerate(service.prefixes):
            family = f"ipv{prefix.version} unicast"
            if family not in families:
                self.add(
                    file,
                    [*base, "prefixes", i],
                    f'{prefix} cannot be announced: no BGP neighbor has "{family}" in its families',
                )

    def check_shared_prefixes(self, services: Mapping[str, ServiceConfig]) -> None:
        check_roles(self.add, self.owners, services)
        claims: dict[IPv4Network | IPv6Network, list[tuple[str, int]]] = {}
        for name, service in services.items():
            for i, prefix in enumerate(dict.fromkeys(service.prefixes)):
                claims.setdefault(prefix, []).append((name, i))
        for prefix, claimants in claims.items():
            if len(claimants) < 2:
                continue
            for name, i in claimants:
                if services[name].shared_prefixes:
                    continue
                others = ", ".join(
                    f'"{other}" ({self.owners[other]})' for other, _ in claimants if other != name
                )
                self.add(
                    self.owners[name],
                    ["services", name, "prefixes", i],
                    f"{prefix} is also claimed by service {others}; a prefix may be in several "
                    "services only if all of them set shared_prefixes = true",
                )


def _raw_at(raw: object, *path: str | int) -> Mapping[str, Any]:
    for part in path:
        if isinstance(part, int):
            raw = raw[part] if isinstance(raw, list) and part < len(raw) else {}
        else:
            raw = raw.get(part, {}) if isinstance(raw, dict) else {}
    return raw if isinstance(raw, dict) else {}
