"""What the end-to-end benchmarks share: percentiles, the summary line, the machine line.

Imported by the bench scripts (run as ``python bench/NAME.py`` from the repo root, which
puts the repo root on sys.path first)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile of ``values`` (not interpolated)."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(name: str, values: list[float], target_ms: float | None = None) -> dict[str, float]:
    """Print and return p50/p90/p99/min/max in ms of ``values`` (seconds); with a target,
    say whether p99 met it."""
    ms = [v * 1000 for v in values]
    row = {"p50_ms": statistics.median(ms), "p90_ms": percentile(ms, 90),
           "p99_ms": percentile(ms, 99), "min_ms": min(ms), "max_ms": max(ms), "n": len(ms)}
    verdict = ""
    if target_ms is not None:
        verdict = f"  target p99 <= {target_ms:.0f} ms: " + (
            "ok" if row["p99_ms"] <= target_ms else "MISSED")
    print(f"{name:46s} p50 {row['p50_ms']:7.1f}  p90 {row['p90_ms']:7.1f}  "
          f"p99 {row['p99_ms']:7.1f}  min {row['min_ms']:7.1f}  max {row['max_ms']:7.1f} ms"
          f"  (n={len(ms)}){verdict}")
    return row


def machine() -> str:
    return (f"{platform.node()} {platform.processor() or platform.machine()} "
            f"{os.cpu_count()} cpus, Linux {platform.release()}, "
            f"Python {platform.python_version()}")


@contextlib.contextmanager
def bench_run(name: str, out: Path | None) -> Iterator[tuple[Path, dict[str, Any]]]:
    """A work directory and the results document (machine, command, load before). On
    success the results go to ``out`` (JSON) and the directory is removed; on failure the
    directory is kept, with its logs, and named."""
    work = Path(tempfile.mkdtemp(prefix=f"anycastd-bench-{name}-"))
    results: dict[str, Any] = {
        "machine": machine(),
        "command": " ".join(["python", *sys.argv]),
        "loadavg_before": os.getloadavg(),
    }
    try:
        yield work, results
    except BaseException:
        print(f"logs kept in {work}", file=sys.stderr)
        raise
    if out is not None:
        out.write_text(json.dumps(results, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
