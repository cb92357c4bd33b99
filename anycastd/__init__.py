"""anycastd: health-checked anycast for edge nodes.

Rule: this package imports nothing at import time (the ExaBGP relay, ``anycastd.bgp.relay``,
starts under it and must start fast). ``__version__`` is a constant, not looked up in the
installed metadata (``importlib.metadata``: ~25 ms on every start and every CLI call);
tests/unit/test_version.py keeps it equal to pyproject.toml's.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
