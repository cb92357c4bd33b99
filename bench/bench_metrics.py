"""What the per-pass metrics cost at scale: the event loop's share and the scrape's.

    .venv/bin/python bench/bench_metrics.py [--prefixes 10000] [--rounds 20]

No network, no root: a config of N services with one /32 each and one BGP neighbor, every
service up, the desired RIB resolved as the speaker would hold it, every address observed on
``lo``. Per round it measures what ``Controller._export`` adds to a pass on the loop (the RIB
copy and the hand-over, ``Metrics.set_pass``), what computing the samples costs (done by the
first scrape after a pass, in the API's worker thread), and a whole ``Metrics.render``.
Results: bench/README_metrics.md.
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import os
import sys
import time
from pathlib import Path

from anycastd.config import load_config
from anycastd.core.desired import compute
from anycastd.core.health import ServiceState
from anycastd.core.plan import Observed
from anycastd.core.rib import resolve
from anycastd.engine.exports import pass_samples
from anycastd.engine.world import bgp_settings
from anycastd.model import Address, LoopbackObserved
from anycastd.observe.metrics import Metrics

HEAD = """[global]
node = "bench"
[bgp]
router_id = "192.0.2.1"
local_as = 65001
[[bgp.neighbors]]
address = "127.0.0.2"
peer_as = 65000
local_address = "127.0.0.1"
"""


REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO))  # the repo root, for bench.common (run as a script)
    from bench.common import bench_run, summary

    parser = argparse.ArgumentParser()
    parser.add_argument("--prefixes", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    with bench_run("metrics", args.out) as (work, results):
        lines = [HEAD]
        for i in range(args.prefixes):
            ip = ipaddress.ip_address("10.0.0.0") + i
            lines.append(f'[services.s{i}]\nprefixes = ["{ip}/32"]\n'
                         f'[[services.s{i}.checks]]\ntype = "file"\npath = "/nonexistent"\n')
        (work / "anycastd.toml").write_text("".join(lines))
        config = load_config(work / "anycastd.toml")
        assert config.bgp is not None
        desired = compute(config, dict.fromkeys(config.services, ServiceState.UP), {})
        settings = bgp_settings(config.bgp)
        rib = resolve(desired.routes, settings)
        lo = LoopbackObserved("lo", frozenset(
            Address(ipaddress.ip_interface(p.prefix).ip, 32, owned=True)
            for p in desired.prefixes))  # fmt: skip
        observed = Observed(loopback=lo)
        metrics = Metrics()
        loop, scrape, render = [], [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            copy = dict(rib)  # what Controller._export does on the loop
            metrics.set_pass(functools.partial(
                pass_samples, config, desired, observed, copy, settings))
            t1 = time.perf_counter()
            pass_samples(config, desired, observed, copy, settings)
            t2 = time.perf_counter()
            body = metrics.render()
            t3 = time.perf_counter()
            loop.append(t1 - t0)
            scrape.append(t2 - t1)
            render.append(t3 - t2)
        print(f"{args.prefixes} prefixes, 1 neighbor, {args.rounds} rounds; "
              f"load before {os.getloadavg()[0]:.2f}; scrape {len(body)} bytes")
        results["loop_per_pass"] = summary("on the loop, per pass (copy + set_pass)", loop)
        results["samples"] = summary("samples of one pass (scrape thread)", scrape)
        results["render"] = summary("whole render incl. the samples", render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
