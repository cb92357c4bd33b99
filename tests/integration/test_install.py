"""scripts/install, the runtime install, into a temporary prefix (--no-systemd): a virtualenv
with anycastd, ExaBGP and the relay that validates the shipped example; configs 0640; an
operator's existing config kept; and nothing in the script that touches a service or a
package (on a router an install must not be an outage).

The install is offline, as on an air-gapped node: `--wheelhouse .venv/wheelhouse` (the
runtime wheels scripts/bootstrap downloads), run inside a fresh network namespace that has
only `lo`, so no test traffic can leave the machine and a hidden index access would fail.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from anycastd.lab.netns import netns

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "scripts" / "install"
WHEELHOUSE = Path(sys.executable).parent.parent / "wheelhouse"

MINE = """
[global]
node = "kept"
[api]
listen = "127.0.0.1:9181"
"""


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.integration
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a network namespace)")
def test_install_into_a_prefix_validates_the_shipped_example(tmp_path: Path) -> None:
    assert (WHEELHOUSE / ".stamp").exists(), f"no {WHEELHOUSE}: run scripts/bootstrap"
    prefix, etc = tmp_path / "opt", tmp_path / "etc"
    etc.mkdir()
    (etc / "anycastd.toml").write_text(MINE)  # an operator's config: an upgrade keeps it
    with netns("inst") as ns:  # only lo: offline
        proc = subprocess.run(
            ns.argv([str(INSTALL), "--prefix", str(prefix), "--etc", str(etc),
                     "--wheelhouse", str(WHEELHOUSE), "--no-systemd"]),
            capture_output=True, text=True, timeout=600, check=False,
        )
    log = prefix / "install.log"
    assert proc.returncode == 0, proc.stderr + (log.read_text() if log.exists() else "")
    venv = prefix / "venv" / "bin"
    for tool in ("anycastd", "anycastd-exabgp-relay", "exabgp"):
        assert (venv / tool).is_file(), tool
    assert (etc / "anycastd.toml").read_text() == MINE
    examples = prefix / "share" / "examples"
    shipped = [examples / "anycastd.toml", examples / "exabgp-external.conf",
               *sorted((examples / "conf.d").glob("*.toml"))]
    assert all(mode(p) == 0o640 for p in shipped), {str(p): oct(mode(p)) for p in shipped}
    assert mode(etc) == 0o750
    # the installed anycastd, not the checkout's, validates the example
    check = subprocess.run(
        [str(venv / "anycastd"), "check-config", "-c", str(examples / "anycastd.toml")],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )
    assert check.returncode == 0, check.stderr
    assert "neighbor" in check.stdout
    assert str(ROOT) not in (venv / "anycastd").read_text()  # not an editable install


def test_install_touches_no_service_and_no_package() -> None:
    # the script's commands: comments, quoted messages and the here-document left out
    text = INSTALL.read_text()
    text = re.sub(r"<<EOF\n.*?\nEOF\n", "", text, flags=re.S)
    commands = [re.sub(r'"[^"]*"', '""', line) for line in text.splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    systemctl = [c for c in commands if re.search(r"\bsystemctl\b", c)]
    assert systemctl == ["    if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi"]
    assert not [c for c in commands
                if re.search(r"(?<![\w./-])(apt-get|apt|dpkg|service|invoke-rc\.d|vtysh|"
                             r"frr)(?![\w.-])", c)]


def test_install_with_a_bad_argument_is_a_usage_error() -> None:
    proc = subprocess.run([str(INSTALL), "--bogus"], capture_output=True, text=True,
                          timeout=30, check=False)
    assert proc.returncode == 64
    assert "--prefix" in proc.stderr
