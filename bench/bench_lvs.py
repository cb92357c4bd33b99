"""LVS traffic bench: connections/s through an anycastd-run IPVS director per forwarding
method, and the time from a real server's check failing to it getting no new connections.

The numbers come from the kernel suite's LVS traffic tests (tests/kernel/test_lvs_traffic.py),
which run inside the User-Mode-Linux guest and write ``lvs-numbers.json`` beside their
report. This script boots the guest ``--runs`` times (one test run each) and summarises:

    .venv/bin/python bench/bench_lvs.py --runs 3 [--out bench/results/lvs.json]

Connections are sequential (connect, one line each way, close) from one Python client in
the guest, so connections/s measure the guest (one UML CPU) more than IPVS: compare each
method with the ``direct`` line (the same client straight to a real server, no IPVS).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUMBERS = ROOT / "build" / "kernel-tests" / "lvs-numbers.json"
METHODS = ("direct", "nat", "dr", "tunnel")


def one_run() -> dict[str, dict[str, object]]:
    NUMBERS.unlink(missing_ok=True)
    proc = subprocess.run(
        [str(ROOT / "tests" / "kernel" / "run-in-uml.sh"), "--", "-k", "lvs_traffic"],
        capture_output=True, text=True, check=False, timeout=600, cwd=ROOT,
    )
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-2000:], file=sys.stderr)
        raise SystemExit(f"the LVS kernel tests failed (rc {proc.returncode})")
    data: dict[str, dict[str, object]] = json.loads(NUMBERS.read_text())
    return data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))  # the repo root (run as a script)
    from bench.common import bench_run

    with bench_run("lvs", args.out) as (_work, results):
        runs = []
        for i in range(args.runs):
            runs.append(one_run())
            print(f"run {i + 1}: {json.dumps(runs[-1], sort_keys=True)}", flush=True)
        results["runs"] = runs
        print(f"{'method':8s} {'conn/s (runs)':28s} {'fail->weight0 ms':24s} "
              f"{'fail->last new conn ms':24s}")
        for method in METHODS:
            rows = [r.get(method, {}) for r in runs]

            def col(key: str, rows: list[dict[str, object]] = rows) -> str:
                values = [float(str(r[key])) for r in rows if key in r]
                if not values:
                    return "-"
                return (f"{statistics.median(values):7.1f} "
                        f"({', '.join(f'{v:.0f}' for v in values)})")

            print(f"{method:8s} {col('connections_per_second'):28s} "
                  f"{col('check_fail_to_weight0_ms'):24s} "
                  f"{col('check_fail_to_last_new_connection_ms'):24s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
