"""The actuator exception taxonomy.

Every actuator translates the errors of its external system (netlink errno, an ExaBGP
``error`` answer, a failed subprocess) into one of these at its boundary, so the controller
decides with one rule: retry a TransientError with backoff, report a PermanentError and leave
the drift for an operator (the next reconcile pass will try again, but not in a tight loop).
"""

from __future__ import annotations


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
