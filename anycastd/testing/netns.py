"""Moved to :mod:`anycastd.lab.netns`; re-exported until the last importers
(tests/integration/bgp_support.py, tests/integration/test_bgp.py, bench/bench_bgp.py: the
BGP side of issue 12) import the lab directly. Then delete this file."""

from anycastd.lab.netns import PREFIX, Netns, netns, run, stop_process, unique_name, veth, wait_for

__all__ = ["PREFIX", "Netns", "netns", "run", "stop_process", "unique_name", "veth", "wait_for"]
