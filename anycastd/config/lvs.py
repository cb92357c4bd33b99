"""Config rules for LVS roles that one model cannot see alone (docs/lvs.md).

A service is a director's (``[ipvs]``) or a backend's (``[real_server]``) on a node, never
both; a backend's VIPs are single addresses and are never announced (no ``[ospf]``); a
tunnelling backend names the encapsulation its director uses. The director's own rules
(families, a port change under ``dr``/``tunnel``) are in ``checks.py``.
"""

from __future__ import annotations

from collections.abc import Callable

from anycastd.config.schema import ServiceConfig

Add = Callable[[str, list[str | int], str], None]


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
