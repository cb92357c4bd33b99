"""Process-level errors the CLI maps to exit codes (kept import-light for a fast CLI)."""

from __future__ import annotations


class StartupError(Exception):
    """The daemon cannot start (e.g. the API port is taken): exit 69, EX_UNAVAILABLE."""
