"""The error taxonomy every layer shares (stdlib only, import-light for a fast CLI).

``StartupError``: the daemon cannot start; the CLI maps it to an exit code. The actuator
errors: every actuator (addresses, IPVS, BGP, sysctls) translates the errors of its external
system (netlink errno, an ExaBGP ``error`` answer, a failed subprocess) into one of these at
its boundary, so the controller decides with one rule: retry a TransientError with backoff,
report a PermanentError and leave the drift for an operator (the next reconcile pass will try
again, but not in a tight loop). Observers (metrics) count them by kind.
"""

from __future__ import annotations


class StartupError(Exception):
    """The daemon cannot start (e.g. the API port is taken): exit 69, EX_UNAVAILABLE."""


class ActuatorError(Exception):
    """An actuator could not make a change. ``actuator`` names the external system."""

    transient: bool = False

    def __init__(self, actuator: str, message: str) -> None:
        super().__init__(f"{actuator}: {message}")
        self.actuator = actuator
        self.message = message


class TransientError(ActuatorError):
    """Worth retrying: the system is busy, restarting, or the session is not up yet."""

    transient = True


class PermanentError(ActuatorError):
    """Retrying the same change will fail the same way (bad argument, missing support)."""

    transient = False
