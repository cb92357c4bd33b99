"""docs/metrics.md documents every metric the daemon exports, with its type and labels, and
nothing it does not export."""

from __future__ import annotations

import re
from pathlib import Path

from tests.unit.snapshots import SNAPSHOTS

DOC = Path(__file__).parents[2] / "docs" / "metrics.md"
ROW = re.compile(r"^\| `(anycastd_[a-z_]+)` \| (\w+) \| ([^|]+) \| .+ \|$")


def documented() -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for line in DOC.read_text().splitlines():
        m = ROW.match(line)
        if m:
            name, kind, labels = m.groups()
            names = sorted(re.findall(r"`([a-z_]+)`", labels))
            assert name not in out, f"{name} documented twice"
            out[name] = (kind, ",".join(names) or "-")
    return out


def exported() -> dict[str, tuple[str, str]]:
    """From the snapshot, which the metrics tests keep equal to the registry's families."""
    out: dict[str, tuple[str, str]] = {}
    for line in (SNAPSHOTS / "metrics.txt").read_text().splitlines():
        name, kind, labels = line.split()
        out[name] = (kind, labels)
    return out


def test_every_exported_metric_is_documented_with_its_type_and_labels() -> None:
    assert documented() == exported()


def test_the_process_collectors_are_documented() -> None:
    text = DOC.read_text()
    for name in ("process_start_time_seconds", "process_resident_memory_bytes",
                 "process_open_fds", "python_info"):
        assert f"`{name}`" in text
