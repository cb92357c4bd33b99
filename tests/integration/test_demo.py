"""``anycastd demo`` (the README's first command), run as a user runs it: a subprocess.

The demo tells its story on stdout; these tests hold it to that story (announce, withdraw
from the router, back, in that order) and to its clean-up promise: after it exits, whether
it finished or was interrupted, none of its namespaces and none of its processes remain.

Every process the demo starts carries its work dir in its argv (configs, sockets, a marker
argument), and the work dir is made under the TMPDIR given here, so "a process of this run"
is "a process whose command line contains this directory".
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from anycastd.lab.netns import run

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces)"),
]

ANYCASTD = str(Path(sys.executable).parent / "anycastd")
STORY = [
    "edge1 and edge2 announce 198.51.100.10/32",
    "client: GET http://198.51.100.10:8080/ -> 'hello from edge1'",
    "stopping the web service on edge1",
    "router: 198.51.100.10/32 is now via edge2 only",
    "client: GET http://198.51.100.10:8080/ -> 'hello from edge2'",
    "the client now reaches edge2",
    "stopping the web service on edge2 as well",
    "198.51.100.10/32 is gone from the router's table",
    "starting both web services again",
    "back: 198.51.100.10/32 via edge1 (best) and edge2",
    "client: GET http://198.51.100.10:8080/ -> 'hello from edge1'",
    "done: the prefix followed the service's health",
]


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    # unix socket paths (bgpd's vty, the ExaBGP relay) must stay under 108 bytes: pytest's
    # tmp_path is too long for them
    path = Path(tempfile.mkdtemp(prefix="acdt-demo-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class DemoRun:
    """The demo as a subprocess; its stdout collected line by line as it comes."""

    tmp: Path
    proc: subprocess.Popen[str] = field(init=False)
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.proc = subprocess.Popen(
            [ANYCASTD, "demo"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "TMPDIR": str(self.tmp)},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"{text!r} not printed; output:\n{self.output}")
            time.sleep(0.1)

    def wait(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            self.proc.send_signal(signal.SIGTERM)  # the demo's own clean-up, then give up
            self.proc.wait(timeout=60)
            raise AssertionError(f"demo still running after {timeout}s:\n{self.output}") from exc
        self._reader.join(timeout=5)
        return rc

    def namespaces(self) -> list[str]:
        for line in self.lines:
            if "namespaces: " in line:
                return line.split("namespaces: ", 1)[1].split(", ")
        return []


def demo_namespaces_left(pid: int) -> list[str]:
    pattern = re.compile(rf"^acdt-dm\w+-{pid % 100000}-")
    return [line.split()[0] for line in run(["ip", "netns", "list"]).splitlines()
            if pattern.match(line)]


def processes_mentioning(marker: Path) -> list[str]:
    """Live processes whose argv mentions ``marker`` (zombies have an empty cmdline)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(marker) in argv:
            found.append(f"{entry.name}: {argv[:200]}")
    return found


def assert_cleaned_up(demo: DemoRun) -> None:
    names = demo.namespaces()
    assert len(names) == 4, demo.output  # router, client, edge1, edge2
    listed = run(["ip", "netns", "list"])
    assert [n for n in names if n in listed] == []
    assert demo_namespaces_left(demo.proc.pid) == []
    # processes may take a moment to vanish after the demo's last wait: give them 2 s
    deadline = time.monotonic() + 2
    while processes_mentioning(demo.tmp) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_mentioning(demo.tmp) == []


def test_demo_tells_the_story_in_order_and_cleans_up(short_tmp: Path) -> None:
    demo = DemoRun(short_tmp)
    rc = demo.wait(timeout=180)
    assert rc == 0, demo.output
    position = 0
    for expected in STORY:
        for index in range(position, len(demo.lines)):
            if expected in demo.lines[index]:
                position = index + 1
                break
        else:
            raise AssertionError(f"{expected!r} missing or out of order:\n{demo.output}")
    assert "Traceback" not in demo.output
    assert_cleaned_up(demo)
    assert list(short_tmp.iterdir()) == []  # the work dir is removed after a good run


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_in_the_middle_stops_the_demo_and_cleans_up(
    short_tmp: Path, sig: signal.Signals, status: int
) -> None:
    demo = DemoRun(short_tmp)
    demo.wait_for_line("edge1 and edge2 announce", timeout=60)
    assert processes_mentioning(short_tmp) != []  # the demo's processes run now
    demo.proc.send_signal(sig)
    rc = demo.wait(timeout=60)
    assert rc == status, demo.output
    assert f"{sig.name}: stopping and cleaning up" in demo.output
    assert "Traceback" not in demo.output
    assert_cleaned_up(demo)


def test_not_root_is_a_clear_error_and_nothing_is_created(short_tmp: Path) -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", ANYCASTD, "demo"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "TMPDIR": str(short_tmp)},
    )
    assert proc.returncode == 77, proc.stdout + proc.stderr
    assert "must run as root" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(short_tmp.iterdir()) == []


def test_missing_tools_are_a_clear_error_and_nothing_is_created(short_tmp: Path) -> None:
    # without a PATH neither FRR's vtysh nor iproute2 can be found
    proc = subprocess.run(
        [ANYCASTD, "demo"], capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PATH": str(short_tmp), "TMPDIR": str(short_tmp)},
    )
    assert proc.returncode == 69, proc.stdout + proc.stderr
    assert "missing: FRR's vtysh, iproute2 (ip), procps (sysctl)" in proc.stderr
    assert "scripts/bootstrap installs them" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(short_tmp.iterdir()) == []
