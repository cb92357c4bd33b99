"""Duration strings as written in the config: "250ms", "2s", "1m", "1h", "7d", "1m30s".

Rule: a duration is always a string with a unit. A bare number is rejected because "2"
could mean seconds or milliseconds depending on who wrote it; the message says to write "2s".
Parsed values are float seconds.
"""

from __future__ import annotations

import re

__all__ = ["DurationError", "format_duration", "parse_duration"]

_UNITS: dict[str, float] = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")


class DurationError(ValueError):
    """The value is not a duration; str() is a message fit for a person."""


#: No interval, timeout or drain is longer than a year; bigger numbers are typos.
MAX_DURATION = 365 * 86400.0

def parse_duration(value: object) -> float:
    """Return the duration in seconds, or raise DurationError saying what is expected."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise DurationError(f'expected a duration such as "2s" or "250ms", got {_type_name(value)}')
    if isinstance(value, int | float):
        raise DurationError(
            f"expected a duration with a unit, got the bare number {value!r}; "
            f'write "{value}s" for seconds or "{value}ms" for milliseconds'
        )
    text = value.strip()
    if not _WHOLE.fullmatch(text):
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            raise DurationError(
                f'expected a duration with a unit, got "{value}"; write "{text}s" for seconds'
            )
        raise DurationError(
            f'expected a duration such as "250ms", "2s", "1m", "1h" or "7d", got "{value}"'
        )
    seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))
    if not seconds <= MAX_DURATION:  # also catches inf and nan from absurd digit strings
        raise DurationError(f'"{value}" is longer than anything anycastd waits for (max 1y)')
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest exact unit form of *seconds* ("250ms", "2s", "10m", "7d")."""
    if seconds == 0:
        return "0s"
    for unit in ("d", "h", "m", "s"):
        count = seconds / _UNITS[unit]
        if count >= 1 and abs(count - round(count)) < 1e-9:
            return f"{round(count)}{unit}"
    ms = seconds * 1000
    if abs(ms - round(ms)) < 1e-6:
        return f"{round(ms)}ms"
    return f"{seconds:g}s"


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__
