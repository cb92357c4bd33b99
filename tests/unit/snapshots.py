"""Snapshot files of the public API (metric names, the status JSON's keys) in data/snapshots/.

Update a snapshot after an intended change with ``ANYCASTD_UPDATE_SNAPSHOTS=1 pytest``.
"""

from __future__ import annotations

import os
from pathlib import Path

SNAPSHOTS = Path(__file__).parent / "data" / "snapshots"


def check_snapshot(name: str, text: str, *, why: str) -> None:
    """``text`` equals the snapshot ``name``; else fail with "``name`` changed: ``why``"
    (``why`` says what the file pins and how to regenerate it)."""
    path = SNAPSHOTS / name
    if os.environ.get("ANYCASTD_UPDATE_SNAPSHOTS") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing snapshot {path}; run with ANYCASTD_UPDATE_SNAPSHOTS=1"
    assert text == path.read_text(), f"{name} changed: {why}"
