"""What one controller pass costs at N prefixes: the first pass (everything to add and
announce) and a steady one (nothing to do), with the in-memory actuators and speaker, so
only anycastd's own work is timed (no netlink, no ExaBGP); and ``core.desired.compute``
alone, cold (first call in the process) and warm.

Run from the repo root:  .venv/bin/python bench/bench_pass.py [--prefixes 1000] [--tree DIR]

``--tree DIR``: time the anycastd found in DIR instead (another version, e.g.
``git archive REV anycastd | tar -x -C DIR``): before and after on the same machine.
Each number is the median of ``--runs`` fresh controllers (a new process each time would
measure imports, which bench_startup.py does).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: one service of N /32s on the controller tests' head (tests/unit/configs.py)
SERVICE = """
[services.bulk]
prefixes = [{prefixes}]
start_state = "up"
[[services.bulk.checks]]
type = "file"
path = "/nonexistent"
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prefixes", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--tree", type=Path, default=None,
                        help="a checkout of another anycastd version to time instead")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))  # tests.unit.configs
    sys.path.insert(0, str(args.tree or REPO))

    from anycastd.actuators.memory import MemoryIpvs, MemoryLoopback
    from anycastd.config import loads
    from anycastd.core.desired import compute
    from anycastd.core.health import ServiceState
    from anycastd.engine.controller import Controller
    from anycastd.engine.world import bgp_settings
    from anycastd.observe.logs import configure
    from anycastd.testing.clock import FakeClock
    from anycastd.testing.exabgp import FakeSpeaker
    from tests.unit.configs import CONTROLLER_HEAD

    n = args.prefixes
    quoted = ", ".join(f'"198.18.{i // 250}.{i % 250 + 1}/32"' for i in range(n))
    config = loads(CONTROLLER_HEAD + SERVICE.format(prefixes=quoted))
    assert config.bgp is not None
    states = {"bulk": ServiceState.UP}
    # the daemon's log format, written where it costs what a pipe to journald costs
    configure("logfmt", "info")
    devnull = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(devnull)

    t = time.perf_counter()
    compute(config, states)
    cold = time.perf_counter() - t
    warm: list[float] = []
    for _ in range(args.runs):
        t = time.perf_counter()
        compute(config, states)
        warm.append(time.perf_counter() - t)

    async def passes() -> tuple[list[float], list[float]]:
        first: list[float] = []
        steady: list[float] = []
        for _ in range(args.runs):
            speaker = FakeSpeaker(bgp_settings(config.bgp))
            controller = Controller(
                config, loopback=MemoryLoopback(), ipvs=MemoryIpvs(), speaker=speaker,
                bgp_settings=bgp_settings(config.bgp), states=lambda: states,
                real_servers_up=dict, clock=FakeClock())
            t = time.perf_counter()
            await controller.reconcile()
            first.append(time.perf_counter() - t)
            assert len(speaker.rib) == n, "the first pass announced everything"
            t = time.perf_counter()
            await controller.reconcile()
            steady.append(time.perf_counter() - t)
            controller.close()
        return first, steady

    first, steady = asyncio.run(passes())

    def ms(xs: list[float]) -> str:
        return f"{statistics.median(xs) * 1000:7.1f} ms (min {min(xs) * 1000:.1f})"

    import anycastd

    print(f"anycastd from {Path(anycastd.__file__).parent}, {n} prefixes, medians of "
          f"{args.runs}:")
    print(f"  compute cold     {cold * 1000:7.1f} ms")
    print(f"  compute warm     {ms(warm)}")
    print(f"  first pass       {ms(first)}  (in-memory actuators; includes their own work)")
    print(f"  steady pass      {ms(steady)}")


if __name__ == "__main__":
    main()
