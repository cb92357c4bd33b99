"""BGP actuator: announcements through ExaBGP (public surface; implementation in anycastd.bgp).

The controller builds a :class:`BgpSettings` from the config, runs ``ExabgpSpeaker.run()`` as a
task, and calls ``set_routes()`` with the routes the current health verdicts want announced.
"""

from __future__ import annotations

from anycastd.bgp.client import CommandError
from anycastd.bgp.commands import render_config
from anycastd.bgp.speaker import ExabgpSpeaker, PeerState, Speaker, default_relay_argv
from anycastd.core.rib import PlanError
from anycastd.model import (
    GRACEFUL_SHUTDOWN,
    WELL_KNOWN_COMMUNITIES,
    Attributes,
    BgpSettings,
    Neighbor,
    ResolvedAttributes,
    Route,
)

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
