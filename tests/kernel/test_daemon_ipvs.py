"""The whole daemon with an [ipvs] service against a real kernel (UML guest).

Pins a bug that unit tests with FakeIpvs cannot see: pyroute2's synchronous IPVS must not
be opened inside the daemon's running event loop.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.kernel


def _ipvsadm() -> str:
    return subprocess.run(
        ["ipvsadm", "-Ln"], capture_output=True, text=True, check=True, timeout=30
    ).stdout


def test_run_programs_the_virtual_service_of_an_ipvs_service(tmp_path: Path) -> None:
    subprocess.run(["ipvsadm", "-C"], check=True, timeout=30)
    listener = subprocess.Popen(
        [sys.executable, "-c", "import socket,time\n"
         "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
         "s.bind(('127.0.0.1', 18080)); s.listen(); time.sleep(120)"],
    )
    cfg = tmp_path / "anycastd.toml"
    cfg.write_text(textwrap.dedent(f"""
        [global]
        log_format = "logfmt"
        state_dir = "{tmp_path}/state"
        runtime_dir = "{tmp_path}/run"
        [api]
        enabled = false
        [metrics]
        enabled = false
        [services.web]
        prefixes = ["192.0.2.80/32"]
        interval = "300ms"
        rise = 1
        shutdown = "withdraw"
        [[services.web.checks]]
        type = "tcp"
        host = "127.0.0.1"
        port = 18080
        [services.web.ipvs]
        protocol = "tcp"
        port = 80
        [[services.web.ipvs.real_servers]]
        address = "127.0.0.1"
        port = 18080
        forwarding = "nat"
    """))
    log = tmp_path / "anycastd.log"
    with log.open("w") as out:
        daemon = subprocess.Popen(
            [str(Path(sys.executable).parent / "anycastd"), "run", "-c", str(cfg)],
            stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        table = ""
        while time.monotonic() < deadline and daemon.poll() is None:
            table = _ipvsadm()
            if "TCP  192.0.2.80:80" in table and "127.0.0.1:18080" in table:
                break
            time.sleep(0.2)
        assert daemon.poll() is None, log.read_text()
        assert "TCP  192.0.2.80:80" in table, log.read_text()
        assert "127.0.0.1:18080" in table
        daemon.terminate()
        assert daemon.wait(timeout=60) == 0, log.read_text()
        # shutdown = withdraw: the owned virtual service is gone after the stop
        assert "192.0.2.80:80" not in _ipvsadm()
    finally:
        for proc in (daemon, listener):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert "Traceback" not in log.read_text()
