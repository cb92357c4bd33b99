"""docs/reliability.md cannot drift (issue 13): it is the rendering of docs/reliability.json,
which holds a row for exactly the faults the suite registers, each injected by a test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.integration.fault_support import FAULTS

REPO = Path(__file__).resolve().parents[2]
DATA = json.loads((REPO / "docs" / "reliability.json").read_text())
SUITES = [REPO / "tests" / "integration" / "test_faults.py",
          REPO / "tests" / "integration" / "test_relay_deadman.py"]


def test_the_document_is_the_rendering_of_the_recorded_numbers() -> None:
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "render-reliability"),
                           "--check"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr


def test_every_registered_fault_was_recorded_and_nothing_else() -> None:
    assert set(DATA["faults"]) == set(FAULTS)


def test_every_registered_fault_is_injected_by_a_test() -> None:
    source = "".join(p.read_text() for p in SUITES)
    missing = [fid for fid in FAULTS if f'"{fid}"' not in source]
    assert missing == []


def test_the_recorded_invariants_hold() -> None:
    for fid, row in DATA["faults"].items():
        if row.get("not_run"):
            continue
        assert row["stale_routes"] == 0, fid
        if fid != "address-removed":  # there the fault itself removes the address
            assert row["announced_without_address_ms"] == 0, fid
        assert row["anycastd_running"] or fid.startswith("anycastd-sigkill"), fid


def test_the_fuzz_counts_are_recorded() -> None:
    assert len(DATA["fuzz"]) >= 7
