"""BGP actuator: announcements through ExaBGP (public surface; implementation in anycastd.bgp).

The controller builds a :class:`BgpSettings` from the config, runs ``ExabgpSpeaker.run()`` as a
task, and calls ``set_routes()`` with the routes the current health verdicts want announced.
"""

from __future__ import annotations

from anycastd.bgp.client import CommandError
from anycastd.bgp.model import (
    GRACEFUL_SHUTDOWN,
    WELL_KNOWN_COMMUNITIES,
    Attributes,
    BgpSettings,
    Neighbor,
    Route,
)
from anycastd.bgp.plan import PlanError, ResolvedAttributes, render_config
from anycastd.bgp.speaker import ExabgpSpeaker, PeerState, Speaker, default_relay_argv

__all__ = [
    "GRACEFUL_SHUTDOWN",
    "WELL_KNOWN_COMMUNITIES",
    "Attributes",
    "BgpSettings",
    "CommandError",
    "ExabgpSpeaker",
    "Neighbor",
    "PeerState",
    "PlanError",
    "ResolvedAttributes",
    "Route",
    "Speaker",
    "default_relay_argv",
    "render_config",
]
