"""The actuators a daemon drives, built from the config: real ones, or a dry run.

``build_world`` opens the real ones: the loopback actuator on ``global.interface``, IPVS
when any service declares it, the ExaBGP speaker when ``[bgp]`` exists (otherwise a
null speaker that only remembers the route set), and the OSPF actuator (FRR's vtysh, or the
render file) when a service has ``[ospf]``. ``dry_run_world`` reads the real interface
once and then works on an in-memory copy: anycastd plans and logs every action as it would,
and the node is left untouched (``anycastd run --dry-run``, and the demo).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from anycastd.actuators.frr import FrrOspf, OspfActuator, OspfSettings
from anycastd.actuators.ipvs import IpvsActuator, IpvsNetlink
from anycastd.actuators.linkwatch import LinkWatcher
from anycastd.actuators.loopback import LoopbackActuator, NetlinkLoopback
from anycastd.actuators.memory import MemoryIpvs, MemoryLoopback, MemoryOspf
from anycastd.actuators.policyroute import (
    MemoryPolicyRoute,
    NetlinkPolicyRoute,
    PolicyRouteActuator,
)
from anycastd.actuators.realserver import KernelRealServer, MemoryRealServer, RealServerActuator
from anycastd.bgp.protocol import NullSpeaker, PeerState, Speaker
from anycastd.bgp.speaker import ExabgpSpeaker
from anycastd.bgp.standby import find_exabgp
from anycastd.config import BgpConfig, Config, OspfGlobal
from anycastd.core.realserver import NodeObserved
from anycastd.core.realserver import needs as real_server_needs
from anycastd.errors import ActuatorError, PermanentError, StartupError
from anycastd.model import BgpSettings, Neighbor


@dataclass
class World:
    loopback: LoopbackActuator
    ipvs: IpvsActuator | None
    speaker: Speaker
    bgp_settings: BgpSettings | None
    closers: list[Callable[[], None]] = field(default_factory=list)
    dry_run: bool = False  # in-memory copies: the node itself is never written
    #: opens a watcher of the interface's address and link events (None: no kernel to
    #: watch, e.g. a dry run); a factory, so a watcher whose socket failed can be replaced
    link_events: Callable[[], LinkWatcher] | None = None
    #: the real-server role's links and sysctls (None: no service has [real_server])
    node: RealServerActuator | None = None
    #: policy rules and routes (None: no service has [policy_routing])
    policy: PolicyRouteActuator | None = None
    #: the OSPF actuator when a service has [ospf] (None: no OSPF)
    ospf: OspfActuator | None = None

    def close(self) -> None:
        for close in self.closers:
            close()


WorldFactory = Callable[[Config, Callable[[PeerState], None]], World]


def bgp_settings(bgp: BgpConfig) -> BgpSettings:
    """The speaker's input from the validated ``[bgp]`` section."""
    return BgpSettings(
        router_id=str(bgp.router_id) if bgp.router_id is not None else "",
        local_as=int(bgp.local_as or 0),
        mode=bgp.mode,
        exabgp=find_exabgp(bgp.exabgp),
        next_hop=str(bgp.next_hop),
        graceful_restart=int(bgp.graceful_restart),
        relay_hold=float(bgp.relay_hold),
        neighbors=tuple(
            Neighbor(
                address=str(n.address),
                peer_as=n.peer_as,
                local_address=str(n.local_address) if n.local_address is not None else None,
                name=n.name,
                hold_time=int(n.hold_time),
                md5_password=n.md5_password.get_secret_value() if n.md5_password else None,
                families=tuple(n.families),
            )
            for n in bgp.neighbors
        ),
    )


def _needs_real_server(config: Config) -> bool:
    return any(s.real_server is not None for s in config.services.values())


def _needs_policy(config: Config) -> bool:
    return any(s.policy_routing is not None for s in config.services.values())


def ospf_settings(config: Config) -> OspfSettings | None:
    """The OSPF actuator's input: ``[ospf]`` (or its defaults) when a service has [ospf]."""
    services = [s for s in config.services.values() if s.ospf is not None]
    if not services:
        return None
    g = config.ospf or OspfGlobal()
    metrics = sorted({m for s in services if s.ospf is not None
                      for m in (s.ospf.metric.up, s.ospf.metric.draining,
                                s.ospf.metric.maintenance)})
    return OspfSettings(
        name=g.name, metrics=tuple(metrics), metric_type=g.metric_type, dialect=g.dialect,
        mode=g.mode, render_file=g.render_file, vtysh=g.vtysh, pathspace=g.pathspace,
        instance=g.instance, timeout=g.timeout, withdraw_wait=g.withdraw_wait,
        vty_dir=g.vty_dir,
    )


def _needs_ipvs(config: Config) -> bool:
    return any(s.ipvs is not None for s in config.services.values())


def build_world(config: Config, on_peer_change: Callable[[PeerState], None]) -> World:
    g = config.global_
    closers: list[Callable[[], None]] = []
    try:
        lo = NetlinkLoopback(g.interface)
    except ActuatorError as exc:
        raise StartupError(f"global.interface {g.interface!r}: {exc.message}") from None
    closers.append(lo.close)
    ipvs: IpvsNetlink | None = None
    if _needs_ipvs(config):
        # Opened lazily, on the controller's netlink thread: pyroute2's synchronous IPVS
        # runs an event loop of its own and cannot start inside the daemon's running loop.
        # The controller checks that IPVS is usable before anything else (check_ipvs).
        ipvs = IpvsNetlink(Path(g.state_dir))
        closers.append(ipvs.close)
    settings = bgp_settings(config.bgp) if config.bgp is not None else None
    speaker: Speaker
    if settings is not None:
        speaker = ExabgpSpeaker(settings, Path(g.runtime_dir), on_peer_change=on_peer_change)
    else:
        speaker = NullSpeaker()
    node: KernelRealServer | None = None
    if _needs_real_server(config):
        node = KernelRealServer()
        closers.append(node.close)
    policy: NetlinkPolicyRoute | None = None
    if _needs_policy(config):
        policy = NetlinkPolicyRoute()  # opened on the controller's netlink thread
        closers.append(policy.close)
    ospf_conf = ospf_settings(config)
    return World(lo, ipvs, speaker, settings, closers,
                 link_events=lambda: LinkWatcher(g.interface), node=node, policy=policy,
                 ospf=FrrOspf(ospf_conf) if ospf_conf is not None else None)


def dry_run_world(config: Config, on_peer_change: Callable[[PeerState], None]) -> World:
    del on_peer_change  # no sessions in a dry run
    seen = None
    try:
        with NetlinkLoopback(config.global_.interface) as real:
            seen = real.observe()
    except (ActuatorError, OSError, PermanentError):
        seen = None  # no such interface or no netlink: start from an empty one
    lo = MemoryLoopback(config.global_.interface, seen.addresses if seen else ())
    ipvs = MemoryIpvs() if _needs_ipvs(config) else None
    node = None
    if _needs_real_server(config):  # read once, like the interface; then in memory only
        kernel = KernelRealServer()
        try:
            found = kernel.observe(real_server_needs(config))
        except ActuatorError:
            found = NodeObserved()
        finally:
            kernel.close()
        node = MemoryRealServer(
            {k: v for k, v in found.links.items() if v is not None},
            {k: v for k, v in found.sysctls.items() if v is not None},
        )
    policy = MemoryPolicyRoute() if _needs_policy(config) else None
    ospf_conf = ospf_settings(config)
    return World(lo, ipvs, NullSpeaker(), None, dry_run=True, node=node, policy=policy,
                 ospf=MemoryOspf(ospf_conf) if ospf_conf is not None else None)
