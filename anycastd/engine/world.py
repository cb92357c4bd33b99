"""The actuators a daemon drives, built from the config: real ones, or a dry run.

``build_world`` opens the real ones: the loopback actuator on ``global.interface``, IPVS
when any service declares it, and the ExaBGP speaker when ``[bgp]`` exists (otherwise a
null speaker that only remembers the route set). ``dry_run_world`` reads the real interface
once and then works on an in-memory copy: anycastd plans and logs every action as it would,
and the node is left untouched (``anycastd run --dry-run``, and the demo).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from anycastd.actuators.ipvs import IpvsActuator, IpvsNetlink
from anycastd.actuators.linkwatch import LinkWatcher
from anycastd.actuators.loopback import LoopbackActuator, NetlinkLoopback
from anycastd.actuators.memory import MemoryIpvs, MemoryLoopback
from anycastd.bgp.protocol import NullSpeaker, PeerState, Speaker
from anycastd.bgp.speaker import ExabgpSpeaker
from anycastd.config import BgpConfig, Config
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

    def close(self) -> None:
        for close in self.closers:
            close()


WorldFactory = Callable[[Config, Callable[[PeerState], None]], World]


def find_exabgp(name: str) -> str:
    """``name`` on PATH, else beside this Python (the venv anycastd runs from: systemd's
    PATH does not include it), else ``name`` unchanged (the speaker reports it missing)."""
    if "/" in name or shutil.which(name):
        return name
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


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
    return World(lo, ipvs, speaker, settings, closers,
                 link_events=lambda: LinkWatcher(g.interface))


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
    return World(lo, ipvs, NullSpeaker(), None, dry_run=True)
