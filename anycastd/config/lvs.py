"""Config rules for LVS roles that one model cannot see alone (docs/lvs.md).

A service is a director's (``[ipvs]``) or a backend's (``[real_server]``) on a node, never
both; a backend's VIPs are single addresses and are never announced (no ``[ospf]``); a
tunnelling backend names the encapsulation its director uses. The director's own rules
(families, a port change under ``dr``/``tunnel``) are in ``checks.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from anycastd.config.schema import ServiceConfig

Add = Callable[[str, list[str | int], str], None]


def check_director(add: Add, file: str, base: list[str | int], service: ServiceConfig) -> None:
    """What ``checks.py`` cannot see for a fwmark service: DR and TUN keep the client's
    destination port, so a real server port there would silently be ignored."""
    ipvs = service.ipvs
    if ipvs is None or ipvs.protocol != "fwmark":
        return
    for i, rs in enumerate(ipvs.real_servers):
        if rs.forwarding in ("dr", "tunnel") and rs.port:
            add(file, [*base, "ipvs", "real_servers", i, "port"],
                f'forwarding = "{rs.forwarding}" cannot change the port: a fwmark service '
                "keeps each connection's own port; remove port")


def check_roles(add: Add, owners: Mapping[str, str], services: Mapping[str, ServiceConfig]) -> None:
    """A VIP is this node's as a director's ([ipvs]) or as a backend's ([real_server]), never
    both: the backend's arp_ignore would hide the director's VIP, and traffic IPVS hands to
    this node's own address would loop."""
    directors = {p: n for n, s in services.items() if s.ipvs is not None for p in s.prefixes}
    for name, svc in services.items():
        if svc.real_server is None:
            continue
        for i, prefix in enumerate(svc.prefixes):
            other = directors.get(prefix)
            if other is not None:
                add(owners[name], ["services", name, "prefixes", i],
                    f'{prefix} is also a VIP of the IPVS service "{other}" ({owners[other]}) '
                    "on this node: a node is a prefix's director or its backend, not both")


def check_real_server(add: Add, file: str, base: list[str | int], service: ServiceConfig) -> None:
    role = service.real_server
    if role is None:
        return
    key: list[str | int] = [*base, "real_server"]
    if service.ipvs is not None:
        add(file, key, "a service is either an IPVS director's ([ipvs]) or a backend's "
            "([real_server]) on one node, not both: split it into two services")
    if service.ospf is not None:
        add(file, [*base, "ospf"], "a [real_server] service is never announced (the director "
            "announces the VIP): remove [ospf]")
    if role.forwarding == "tunnel" and role.tunnel is None:
        add(file, [*key, "tunnel"], 'required when forwarding = "tunnel": the encapsulation '
            'the director uses ("ipip", IPVS\'s default, or "gre")')
    if role.forwarding != "tunnel" and role.tunnel is not None:
        add(file, [*key, "tunnel"], f'only allowed with forwarding = "tunnel", not '
            f'"{role.forwarding}"')
    for i, prefix in enumerate(service.prefixes):
        if prefix.prefixlen != prefix.max_prefixlen:
            add(file, [*base, "prefixes", i], f"{prefix} is not a single address; a "
                "[real_server] service accepts VIPs (/32 or /128)")


def check_policy_routing(
    add: Add, file: str, base: list[str | int], service: ServiceConfig
) -> None:
    policy = service.policy_routing
    if policy is None:
        return
    key: list[str | int] = [*base, "policy_routing"]
    if policy.table in (253, 254, 255):
        name = {253: "default", 254: "main", 255: "local"}[policy.table]
        add(file, [*key, "table"], f"table {policy.table} is the kernel's {name} table; give "
            "the service a table of its own (1..252 or above 255)")
    if not policy.from_prefixes and policy.fwmark is None:
        add(file, [*key, "from_prefixes"], "with from_prefixes = false and no fwmark, no rule "
            "would use the table")
    families = {p.version for p in service.prefixes}
    for i, route in enumerate(policy.routes):
        rkey: list[str | int] = [*key, "routes", i]
        if route.via is None and route.dev is None:
            add(file, rkey, "a route needs via, dev or both")
        if route.via is not None and route.via.version != route.to.version:
            add(file, [*rkey, "via"], f"{route.via} is IPv{route.via.version} but to = "
                f"{route.to} is IPv{route.to.version}")
        if route.to.version not in families:
            add(file, [*rkey, "to"], f"{route.to} is IPv{route.to.version} but the service has "
                f"no IPv{route.to.version} prefix: no rule would lead to it")
