"""Moved to :mod:`anycastd.lab.frr`; re-exported until the last importers
(tests/integration/test_bgp.py, bench/bench_bgp.py: the BGP side of issue 12) import the lab
directly. Then delete this file."""

from anycastd.lab.frr import BGPD, FrrPeer

__all__ = ["BGPD", "FrrPeer"]
