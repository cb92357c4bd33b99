"""The managed ExaBGP's restart schedule (pure) and its settings."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from anycastd.bgp import standby
from anycastd.bgp.speaker import ExabgpSpeaker
from anycastd.bgp.supervisor import ExabgpSupervisor, restart_delay
from anycastd.errors import PermanentError
from anycastd.model import BgpSettings, Neighbor


@pytest.mark.parametrize(
    ("failures", "delay"),
    [
        (0, 0.0),  # never exited yet
        (1, 0.0),  # the first exit (or the first after a stable run): restart at once
        (2, 0.5),  # a second exit in a row: back off
        (3, 1.0),
        (4, 2.0),
        (8, 30.0),  # capped
        (50, 30.0),
    ],
)
def test_the_first_exit_restarts_at_once_and_a_crash_loop_backs_off(
    failures: int, delay: float
) -> None:
    assert restart_delay(failures, (0.5, 30.0)) == delay


async def test_a_config_exabgp_rejects_at_start_ends_run_with_its_message(
    tmp_path: Path,
) -> None:
    """No `exabgp validate` runs before the start; a config the first ExaBGP rejects is still
    a start-up error that carries ExaBGP's own message (no restart loop)."""
    exabgp = str(Path(sys.executable).parent / "exabgp")
    bad = BgpSettings(router_id="192.0.2.1", local_as=65001, exabgp=exabgp,
                      neighbors=(Neighbor("10.0.0.1", 65000, "10.0.0.2", hold_time=1),))
    speaker = ExabgpSpeaker(bad, tmp_path, relay_argv=["/bin/cat"])
    async with asyncio.timeout(30):
        with pytest.raises(PermanentError, match="holdtime must be zero or at least 3"):
            await speaker.run()
    assert speaker.exabgp_starts == 1
    assert stat.S_IMODE(speaker.config_path.stat().st_mode) == 0o600  # md5 passwords


def test_install_writes_the_live_config_private(tmp_path: Path) -> None:
    supervisor = ExabgpSupervisor("exabgp", tmp_path / "run" / "exabgp.conf")
    supervisor.install("# text\n")
    assert supervisor.config_path.read_text() == "# text\n"
    assert stat.S_IMODE(supervisor.config_path.stat().st_mode) == 0o600
    assert not supervisor.config_path.with_suffix(".new").exists()


def test_the_standby_runs_under_the_interpreter_of_exabgps_console_script(
    tmp_path: Path,
) -> None:
    script = tmp_path / "exabgp"
    script.write_text(f"#!{sys.executable}\nimport sys\n"
                      "from exabgp.application.main import main\nsys.exit(main())\n")
    script.chmod(0o755)
    assert standby.interpreter(str(script)) == sys.executable
    wrapper = tmp_path / "exabgp-wrapper"
    wrapper.write_text("#!/bin/sh\nexec /usr/bin/exabgp \"$@\"\n")
    wrapper.chmod(0o755)
    assert standby.interpreter(str(wrapper)) is None  # anything else: cold restarts only
    assert standby.interpreter(str(tmp_path / "missing")) is None


def test_a_warm_exabgp_reads_the_same_env_file_as_a_cold_one(tmp_path: Path) -> None:
    """ExaBGP finds its env file from ``sys.argv[0]`` at import time: the standby must look
    like ``exabgp`` itself by then, or a warm restart would drop an operator's settings."""
    real = Path(sys.executable).parent / "exabgp"
    script = tmp_path / "bin" / "exabgp"
    script.parent.mkdir()
    script.write_text(real.read_text())
    script.chmod(0o755)
    envfile = tmp_path / "etc" / "exabgp" / "exabgp.env"
    envfile.parent.mkdir(parents=True)
    envfile.write_text("[exabgp.tcp]\nport = 1790\n")
    env = {k: v for k, v in os.environ.items()
           if not k.lower().startswith("exabgp") and k != "PYTHONPATH"}
    cold = subprocess.run([str(script), "env"], capture_output=True, text=True, env=env,
                          timeout=60, check=True)
    interpreter = standby.interpreter(str(script))
    assert interpreter is not None
    go = standby.go_line([str(script), "env"], env).decode()
    warm = subprocess.run(standby.argv(interpreter, str(script)), input=go,
                          capture_output=True, text=True, env=env, timeout=60, check=True)
    assert "port = 1790" in cold.stdout
    assert "port = 1790" in warm.stdout
