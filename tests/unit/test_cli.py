"""The CLI is public API: exit codes (sysexits), messages, and no traceback for user errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from anycastd.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "configs" / "anycastd.toml"


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "anycastd", *args],
        capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT,
    )


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SERVICE = """
[global]
log_format = "logfmt"
[api]
enabled = false
[metrics]
enabled = false
[services.web]
prefixes = ["192.0.2.80/32"]
interval = "200ms"
timeout = "100ms"
jitter = "0s"
rise = 1
fall = 1
shutdown = "withdraw"
[[services.web.checks]]
type = "tcp"
host = "127.0.0.1"
port = {port}
"""


def test_version_prints_the_package_version() -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.startswith("anycastd ")


def test_check_config_on_the_example_exits_0_with_a_summary() -> None:
    proc = run_cli("check-config", "-c", str(EXAMPLE))
    assert proc.returncode == 0, proc.stderr
    assert "dns:" in proc.stdout
    assert "web:" in proc.stdout


def test_check_config_dump_prints_the_merged_config_as_json() -> None:
    proc = run_cli("check-config", "-c", str(EXAMPLE), "--dump")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert set(doc["services"]) == {"dns", "web"}  # web comes from conf.d/10-web.toml


def test_invalid_config_exits_78_listing_every_problem_without_traceback(tmp_path: Path) -> None:
    cfg = write(tmp_path / "anycastd.toml", """
        [global]
        nodee = "x"
        [services.a]
        prefixes = ["10.0.0.1/24"]
        interval = 2
    """)
    proc = run_cli("check-config", "-c", str(cfg))
    assert proc.returncode == 78
    assert "Traceback" not in proc.stderr
    assert f"{cfg}: global.nodee" in proc.stderr
    assert f"{cfg}: services.a.prefixes[0]" in proc.stderr
    assert f"{cfg}: services.a.interval" in proc.stderr


def test_missing_config_exits_66(tmp_path: Path) -> None:
    proc = run_cli("check-config", "-c", str(tmp_path / "nope.toml"))
    assert proc.returncode == 66
    assert "not found" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv", [["bogus"], ["run", "--for", "soon"], []])
def test_usage_errors_exit_64(argv: list[str]) -> None:
    proc = run_cli(*argv)
    assert proc.returncode == 64, proc.stderr
    assert "Traceback" not in proc.stderr


def test_probe_unknown_service_is_a_usage_error(tmp_path: Path) -> None:
    cfg = write(tmp_path / "anycastd.toml", SERVICE.format(port=free_port()))
    assert main(["probe", "-c", str(cfg), "nope"]) == 64


def test_probe_reports_healthy_and_unhealthy(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        cfg = write(tmp_path / "anycastd.toml", SERVICE.format(port=port))
        up = run_cli("probe", "-c", str(cfg), "web")
    down = run_cli("probe", "-c", str(cfg), "web")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "service web: healthy" in up.stdout
    assert down.returncode == 1
    assert "service web: UNHEALTHY" in down.stdout
    assert "refused" in down.stdout.lower()


def _read_until(proc: subprocess.Popen[str], needle: str, timeout: float = 15) -> list[str]:
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"{needle!r} not seen in:\n{''.join(seen)}")


def test_run_logs_transitions_reloads_on_sighup_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        cfg = write(tmp_path / "anycastd.toml", SERVICE.format(port=port))
        proc = subprocess.Popen(
            [sys.executable, "-m", "anycastd", "run", "--dry-run", "-c", str(cfg)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            _read_until(proc, "event=service_transition service=web old=down new=up")
            # An invalid config is rejected and the daemon keeps running the old one.
            cfg.write_text(cfg.read_text().replace('interval = "200ms"', "interval = 2"))
            proc.send_signal(signal.SIGHUP)
            lines = _read_until(proc, "event=reload_rejected")
            assert "services.web.interval" in lines[-1]
            # A valid change that adds a service leaves web's health alone (no transition).
            cfg.write_text(
                SERVICE.format(port=port)
                + textwrap.dedent("""
                [services.extra]
                prefixes = ["192.0.2.81/32"]
                [[services.extra.checks]]
                type = "file"
                path = "/nonexistent-anycastd-test"
                expect = "absent"
                """)
            )
            proc.send_signal(signal.SIGHUP)
            lines = _read_until(proc, "event=reloaded")
            assert 'changed="[\\"extra\\"]" unchanged=1' in lines[-1]
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0
    assert "event=stopped" in out
    assert "service=web old=up" not in out  # the reload did not disturb web
    assert "Traceback" not in out


API_SERVICE = SERVICE.replace("[api]\nenabled = false\n[metrics]\nenabled = false\n", "")


def test_status_and_maintenance_through_the_api_of_a_running_daemon(tmp_path: Path) -> None:
    from anycastd.observe.api import Endpoint, post_flag

    api_port = free_port()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        port = listener.getsockname()[1]
        cfg = write(
            tmp_path / "anycastd.toml",
            f'[api]\nlisten = "127.0.0.1:{api_port}"\n'
            + API_SERVICE.format(port=port).replace(
                "[global]\n", f'[global]\nruntime_dir = "{tmp_path}/run"\n'),
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "anycastd", "run", "--dry-run", "-c", str(cfg)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            _read_until(proc, "event=service_transition service=web old=down new=up")
            # the CLI reaches the daemon over its control socket (runtime_dir/api.sock)
            assert (tmp_path / "run" / "api.sock").is_socket()
            status = run_cli("status", "-c", str(cfg), "--json", "--check")
            assert status.returncode == 0, status.stderr
            assert json.loads(status.stdout)["services"]["web"]["state"] == "up"
            on = run_cli("maintenance", "-c", str(cfg), "web", "on")
            assert on.returncode == 0, on.stderr
            assert "state now maintenance" in on.stdout
            _read_until(proc, "service=web old=up new=maintenance")
            # The flag file poller must not undo an API flag a second later.
            time.sleep(1.5)
            table = run_cli("status", "-c", str(cfg), "--check")
            assert "maintenance" in table.stdout
            assert table.returncode == 1  # planned: draining or maintenance
            assert run_cli("maintenance", "-c", str(cfg), "nope", "on").returncode == 64
            # The TCP listener reads, never writes: a scrape target cannot drain the node.
            tcp = run_cli("status", "--api", f"127.0.0.1:{api_port}", "--json")
            assert json.loads(tcp.stdout)["services"]["web"]["state"] == "maintenance"
            code, body = post_flag(Endpoint(host="127.0.0.1", port=api_port), "web",
                                   "maintenance", False)
            assert (code, body["error"]) == (403, "read_only")
            assert run_cli("maintenance", "-c", str(cfg), "web", "off").returncode == 0
            listener.close()  # the tcp check fails: web goes down
            _read_until(proc, "service=web old=up new=down")
            assert run_cli("status", "-c", str(cfg), "--check").returncode == 2
            # A second daemon cannot bind the same API port: exit 69, no traceback.
            second = run_cli("run", "--dry-run", "-c", str(cfg), "--for", "1s")
            assert second.returncode == 69
            assert "api.listen" in second.stderr
            assert "Traceback" not in second.stderr
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0


def test_status_when_no_daemon_runs_exits_69(tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "anycastd.toml",
        f'[api]\nlisten = "127.0.0.1:{free_port()}"\n' + API_SERVICE.format(port=free_port()),
    )
    proc = run_cli("status", "-c", str(cfg))
    assert proc.returncode == 69
    assert "not reachable" in proc.stderr


def test_status_with_api_address_skips_a_broken_config(tmp_path: Path) -> None:
    # The config may be mid-edit exactly when the operator needs `status`/`drain`.
    broken = write(tmp_path / "anycastd.toml", "[global\n")
    proc = run_cli("status", "-c", str(broken), "--api", f"127.0.0.1:{free_port()}")
    assert proc.returncode == 69  # the config was not read; the daemon is just not there
    assert "not reachable" in proc.stderr
    assert run_cli("status", "--api", "nonsense").returncode == 64


@pytest.mark.parametrize(
    "api", ["nonsense", "127.0.0.1", "127.0.0.1:99999", "127.0.0.1:0", ":9180", "[::1:9180",
            "::1:9180", "a b:9180", "http://127.0.0.1:9180", "127.0.0.1:-1"],
)
def test_status_with_a_malformed_api_address_is_a_usage_error(
    api: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--api", api]) == 64
    err = capsys.readouterr().err
    assert "expected HOST:PORT" in err
    assert "Traceback" not in err


def test_cli_surface_snapshot() -> None:
    """Every command with its options and arguments: the CLI is public API."""
    import argparse

    from anycastd.cli import _parser
    from tests.unit.snapshots import check_snapshot

    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    lines = []
    for name, sp in sub.choices.items():
        lines.append(name)
        for action in sp._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            what = "/".join(action.option_strings) or action.dest
            choices = f" {{{','.join(map(str, action.choices))}}}" if action.choices else ""
            lines.append(f"{name} {what}{choices}")
    check_snapshot("cli.txt", "\n".join(lines) + "\n",
                   why="the CLI's commands and options are public API; update deliberately "
                   "(ANYCASTD_UPDATE_SNAPSHOTS=1) and document the change in README.md")


def test_a_daemon_crash_exits_with_ex_software() -> None:
    from anycastd.cli import EX_SOFTWARE
    from anycastd.engine.daemon import EXIT_CRASHED

    assert EXIT_CRASHED == EX_SOFTWARE == 70
