"""anycastd: health-checked anycast for edge nodes.

Rule: this package imports nothing at import time (the ExaBGP relay, ``anycastd.bgp.relay``,
starts under it and must start fast); ``__version__`` is looked up on first use.
"""

from __future__ import annotations

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    # PEP 562: importlib.metadata costs ~20 ms, which every relay start would pay
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("anycastd")
    except PackageNotFoundError:  # running from a source tree without installation
        found = "0.0.0+source"
    globals()["__version__"] = found
    return found
