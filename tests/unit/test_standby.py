"""The early standby: an ExaBGP imported before anycastd's own imports (``bgp/standby.py``),
against real processes (the venv's ExaBGP; no network, no config of ExaBGP's is read)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from anycastd.bgp import standby
from anycastd.lab.netns import wait_for

EXABGP = str(Path(sys.executable).parent / "exabgp")


@pytest.fixture(autouse=True)
def _no_leftover() -> Iterator[None]:
    standby.discard()
    yield
    standby.discard()


def _config(tmp_path: Path, bgp: str) -> Path:
    path = tmp_path / "anycastd.toml"
    path.write_text('[global]\nnode = "t"\n' + bgp)
    return path


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


MANAGED = f'[bgp]\nrouter_id = "192.0.2.1"\nlocal_as = 65001\nexabgp = "{EXABGP}"\n'


def test_a_managed_config_gets_a_standby_that_the_same_exabgp_claims(tmp_path: Path) -> None:
    standby.prewarm(_config(tmp_path, MANAGED))
    proc = standby.claim(EXABGP)
    assert proc is not None
    try:
        assert _alive(proc.pid)
        assert proc.args == standby.argv(sys.executable, EXABGP)
        assert standby.claim(EXABGP) is None  # once
    finally:
        proc.kill()
        proc.wait()


def test_a_standby_for_another_exabgp_is_ended_not_claimed(tmp_path: Path) -> None:
    standby.prewarm(_config(tmp_path, MANAGED))
    pid = next(iter(standby._early.values())).pid
    assert standby.claim("/nonexistent/exabgp") is None
    assert not _alive(pid)


def test_discard_ends_an_unclaimed_standby(tmp_path: Path) -> None:
    """``anycastd run`` that stops before its supervisor runs (a config error) leaves no
    process behind."""
    standby.prewarm(_config(tmp_path, MANAGED))
    pid = next(iter(standby._early.values())).pid
    standby.discard()
    assert not _alive(pid)
    assert standby.claim(EXABGP) is None


@pytest.mark.parametrize("bgp", [
    "",  # no [bgp]
    MANAGED.replace("[bgp]\n", '[bgp]\nmode = "external"\n'),
    MANAGED.replace(EXABGP, "/bin/sh"),  # not ExaBGP's console script: cold starts only
    "[bgp\n",  # not TOML: the real load reports it
])
def test_no_standby_without_a_managed_exabgp_script(tmp_path: Path, bgp: str) -> None:
    standby.prewarm(_config(tmp_path, bgp))
    assert standby._early == {}


def test_no_standby_for_a_missing_config(tmp_path: Path) -> None:
    standby.prewarm(tmp_path / "missing.toml")
    assert standby._early == {}


def test_a_standby_that_reads_eof_exits_without_starting(tmp_path: Path) -> None:
    """anycastd gone (its end of the pipe closed): the standby ends, ExaBGP never starts."""
    proc = subprocess.Popen(standby.argv(sys.executable, EXABGP), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = proc.communicate(b"", timeout=60)  # stdin closed at once
    assert proc.returncode == 0
    assert out == b""


def test_go_runs_exabgp_with_the_argv_and_environment_given_then(tmp_path: Path) -> None:
    """The environment is the one sent with ``go``, not the one the standby started with:
    an early standby starts before anycastd knows ExaBGP's settings."""
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("exabgp")}
    proc = subprocess.Popen(standby.argv(sys.executable, EXABGP), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    go = standby.go_line([EXABGP, "env"], {**env, "exabgp_tcp_port": "1791"})
    out, _ = proc.communicate(go, timeout=60)
    assert proc.returncode == 0, out
    assert b"port = 1791" in out, out


def test_a_standby_told_go_is_named_exabgp(tmp_path: Path) -> None:
    """ps, top and pgrep show a warm ExaBGP as exabgp (its command line is the standby's)."""
    sleeper = tmp_path / "sleeper.py"
    sleeper.write_text("import time\ntime.sleep(60)\n")
    proc = subprocess.Popen(
        [sys.executable, "-c", standby.SCRIPT.replace(
            "from exabgp.application.main import main",
            f"def main():\n    exec(open({str(sleeper)!r}).read())"), EXABGP],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        assert proc.stdin is not None
        proc.stdin.write(standby.go_line([EXABGP], dict(os.environ)))
        proc.stdin.flush()
        wait_for(lambda: Path(f"/proc/{proc.pid}/comm").read_text().strip() == "exabgp",
                 timeout=30)
    finally:
        proc.kill()
        proc.wait()


def test_a_bare_name_finds_the_exabgp_beside_this_python_as_the_daemon_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemd's PATH does not include the venv: the default ``exabgp = "exabgp"`` is the
    one beside anycastd's Python (``find_exabgp``), for the standby as for the daemon."""
    monkeypatch.setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    standby.prewarm(_config(tmp_path, MANAGED.replace(EXABGP, "exabgp")))
    proc = standby.claim(standby.find_exabgp("exabgp"))
    assert proc is not None, "no standby for the default exabgp"
    proc.kill()
    proc.wait()


def test_the_standby_runs_exabgp_by_its_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ExaBGP finds its env file from ``sys.argv[0]`` at import: a bare name would make it
    look under the working directory, where a cold ExaBGP (exec'd through PATH, so its
    script path is absolute) looks beside its executable."""
    monkeypatch.setenv("PATH", f"{Path(EXABGP).parent}:/usr/bin:/bin")
    standby.prewarm(_config(tmp_path, MANAGED.replace(EXABGP, "exabgp")))
    proc = standby.claim("exabgp")
    assert proc is not None
    proc.kill()
    proc.wait()
    assert proc.args[-1] == EXABGP
    assert standby.argv(sys.executable, "exabgp")[-1] == EXABGP


async def test_an_adopted_standby_is_read_and_reaped_through_the_event_loop() -> None:
    """The early standby is a Popen made before the loop: the supervisor reads its output
    through the loop and sees its exit on a pidfd, and the process is reaped (no zombie)."""
    from anycastd.bgp.supervisor import _Adopted

    # made before the loop runs, as `anycastd run` makes it (a blocking Popen on purpose)
    proc = subprocess.Popen(  # noqa: ASYNC220
        [sys.executable, "-c", "import sys; print('ready', flush=True); sys.stdin.readline()"],
        bufsize=0, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    child = await _Adopted.adopt(proc)
    assert child.stdout is not None
    async with asyncio.timeout(30):
        assert await child.stdout.readline() == b"ready\n"
        assert child.returncode is None
        child.terminate()
        assert await child.wait() == -15
        assert await child.stdout.readline() == b""  # EOF: the pipe is the loop's, closed
    assert child.returncode == -15
    assert not _alive(proc.pid)
    assert not _exists(proc.pid), "reaped, not a zombie"
    assert proc.stdin is not None
    assert proc.stdin.closed


def _exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()
