"""The shipped unit: `systemd-analyze verify` accepts it and its offline security exposure is
at most 2.5 and equal to the score docs/operations.md records.

systemd-analyze needs the ExecStart binaries to exist: the test checks a copy of the unit
whose /opt/anycastd/venv paths point at this checkout's virtualenv; nothing else changes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "anycastd.service"
OPERATIONS = ROOT / "docs" / "operations.md"
VENV = "/opt/anycastd/venv"

pytestmark = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    text = UNIT.read_text()
    assert f"ExecStart={VENV}/bin/anycastd run" in text
    copy = tmp_path / "anycastd.service"
    copy.write_text(text.replace(VENV, str(Path(sys.executable).parent.parent)))
    return copy


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_the_unit_verifies_clean(unit: Path) -> None:
    proc = analyze("verify", str(unit))
    assert proc.returncode == 0, proc.stderr
    # warnings (unknown keys, bad values) go to stderr with rc 0
    assert proc.stderr.strip() == "", proc.stderr


def test_security_exposure_is_at_most_2_5_and_documented(unit: Path) -> None:
    proc = analyze("security", "--offline=yes", "--no-pager", str(unit))
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", proc.stdout)
    assert found, proc.stdout + proc.stderr
    score = float(found.group(1))
    assert score <= 2.5, proc.stdout
    documented = re.search(r"exposure level \*\*(\d+\.\d)\*\*", OPERATIONS.read_text())
    assert documented, "docs/operations.md records no security score"
    assert float(documented.group(1)) == score, (
        f"docs/operations.md records {documented.group(1)}, the unit scores {score}")


def test_the_unit_keeps_only_the_capability_the_code_uses() -> None:
    lines = dict(
        line.split("=", 1) for line in UNIT.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert lines["CapabilityBoundingSet"] == "CAP_NET_ADMIN"
    assert lines["AmbientCapabilities"] == "CAP_NET_ADMIN"
    # a crash loop ends: at most 5 starts in 5 minutes
    assert (lines["StartLimitBurst"], lines["StartLimitIntervalSec"]) == ("5", "300")


DROPIN = ROOT / "systemd" / "anycastd-frrvty.conf"


def test_the_frrvty_drop_in_verifies_clean_and_its_score_is_documented(unit: Path) -> None:
    # scripts/install writes it only where the group exists; with it the unit must still
    # verify, and score at most 2.5, as docs/operations.md records
    text = DROPIN.read_text()
    assert "\nSupplementaryGroups=frrvty\n" in text
    assert "SupplementaryGroups" not in UNIT.read_text()  # 216/GROUP where FRR is absent
    merged = unit.parent / "merged" / "anycastd.service"
    merged.parent.mkdir()
    merged.write_text(unit.read_text().replace(
        "[Service]\n", "[Service]\n" + text.split("[Service]\n", 1)[1], 1))
    proc = analyze("verify", str(merged))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr
    out = analyze("security", "--offline=yes", "--no-pager", str(merged)).stdout
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", out)
    assert found, out
    assert float(found.group(1)) <= 2.5, out
    documented = re.search(r"with the `frrvty` drop-in: \*\*(\d+\.\d)\*\*",
                           OPERATIONS.read_text())
    assert documented, "docs/operations.md records no score for the frrvty drop-in"
    assert documented.group(1) == found.group(1)


def test_install_writes_the_drop_in_only_where_the_group_exists() -> None:
    script = (ROOT / "scripts" / "install").read_text()
    guarded = re.search(r"if getent group frrvty >/dev/null; then\n(.*?)\n    elif", script,
                        re.DOTALL)
    assert guarded, "scripts/install does not guard the frrvty drop-in by the group"
    assert "anycastd-frrvty.conf" in guarded.group(1)
