"""anycastd: health-checked anycast for edge nodes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("anycastd")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
