"""Real-server health: each IPVS real server's own checks, with rise/fall hysteresis.

A real server is modelled as a small service of the pure health engine (policy ``all`` over
its checks, the owning service's start state, no damping), named ``SERVICE/ADDRESS:PORT`` so
its events read well in logs. It runs in a scheduler of its own, beside the services'. A real
server without checks is taken as healthy: nothing says otherwise, and the operator listed
it. The result is the mapping :func:`anycastd.core.desired.compute` takes.
"""

from __future__ import annotations

from collections.abc import Mapping

from anycastd.config import Config
from anycastd.core.desired import RealServerKey, real_server_key
from anycastd.core.health import (
    CheckParams,
    CheckState,
    Policy,
    ServiceHealth,
    ServiceParams,
    ServiceState,
    carried,
)
from anycastd.engine.probes import check_spec
from anycastd.engine.scheduler import CheckSpec


class Backends:
    """The real servers of a config: their engine parameters, checks and keys."""

    def __init__(self, config: Config) -> None:
        self.params: dict[str, ServiceParams] = {}
        self.specs: list[CheckSpec] = []
        self.keys: dict[str, RealServerKey] = {}
        self.unchecked: set[RealServerKey] = set()
        for svc in config.services.values():
            if svc.ipvs is None or svc.disabled:
                continue
            start = CheckState.UP if svc.start_state == "up" else CheckState.DOWN
            for rs in svc.ipvs.real_servers:
                key = real_server_key(svc, rs)
                if not rs.checks:
                    self.unchecked.add(key)
                    continue
                name = f"{svc.name}/{_hostport(key[1], key[2])}"
                self.keys[name] = key
                self.params[name] = ServiceParams(
                    name=name,
                    checks=tuple(CheckParams(c.name, rise=c.rise, fall=c.fall) for c in rs.checks),
                    policy=Policy.parse("all"),
                    start_state=start,
                )
                self.specs.extend(check_spec(name, c) for c in rs.checks)

    def initial(
        self,
        previous: Mapping[str, ServiceHealth],
        now: float,
        renamed: Mapping[str, str] | None = None,
    ) -> dict[str, ServiceHealth]:
        """Health to start with: carried over by name where the parameters are unchanged.
        ``renamed`` (new service name -> old, from a reload): a renamed service's real
        servers continue the health they had under the old name; reset, they would count
        as unproven and ``min_healthy`` would take the renamed service down."""
        out: dict[str, ServiceHealth] = {}
        for name, params in self.params.items():
            service, address, port = self.keys[name]
            was = f"{(renamed or {}).get(service, service)}/{_hostport(address, port)}"
            old = previous.get(was)
            unchanged = was == name and old is not None and old.params == params
            out[name] = carried(old, params, now, unchanged=unchanged)
        return out

    def up(self, health: Mapping[str, ServiceHealth]) -> dict[RealServerKey, bool]:
        out = dict.fromkeys(self.unchecked, True)
        for name, key in self.keys.items():
            h = health.get(name)
            out[key] = h is not None and h.state is ServiceState.UP
        return out


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
