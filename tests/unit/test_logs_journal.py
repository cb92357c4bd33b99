"""Logs: real syslog priorities under journald, timestamps elsewhere; every action event
names its service and the cause (the transition or the drift that led to it).

journald is recognised the way systemd documents it: JOURNAL_STREAM equals the device:inode
of stderr. The tests point it at a file they own (in process, and for a daemon process's
stderr) and at a different file (then nothing changes).
"""

from __future__ import annotations

import collections.abc
import ipaddress
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from anycastd.model import RemoveAddress
from anycastd.observe.logs import configure, event
from tests.unit.configs import DAEMON_HEAD
from tests.unit.test_daemon import A, Node, fast, running, wait_for

ROOT = Path(__file__).resolve().parents[2]
A_IF = ipaddress.ip_interface(A)


def identity(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def emit_levels() -> None:
    log = logging.getLogger("anycastd.test")
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL):
        event(log, "e", level=level, n=level)


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("fmt", ["logfmt", "json"])
def test_under_journald_lines_carry_the_priority_and_no_timestamp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    out = tmp_path / "stderr"
    with out.open("w") as stream:
        monkeypatch.setenv("JOURNAL_STREAM", identity(out))
        configure(fmt, "debug", stream)  # type: ignore[arg-type]
        emit_levels()
    lines = out.read_text().splitlines()
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>", "<2>"]
    if fmt == "json":
        docs = [json.loads(line[3:]) for line in lines]
        assert all("ts" not in d for d in docs)
        assert [d["level"] for d in docs] == ["debug", "info", "warning", "error", "critical"]
    else:
        assert all(" ts=" not in line and "level=" in line for line in lines)


@pytest.mark.usefixtures("restore_logging")
def test_on_another_stream_lines_keep_their_timestamp_and_no_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # JOURNAL_STREAM inherited, but stderr was redirected to a file: not the journal
    other = tmp_path / "journal"
    other.touch()
    monkeypatch.setenv("JOURNAL_STREAM", identity(other))
    out = tmp_path / "stderr"
    with out.open("w") as stream:
        configure("logfmt", "info", stream)
        emit_levels()
    lines = out.read_text().splitlines()
    assert len(lines) == 4
    assert all(line.startswith("ts=") for line in lines)


def test_the_daemon_under_journald_logs_a_service_going_down_as_a_warning(
    tmp_path: Path,
) -> None:
    from tests.unit.test_cli import SERVICE, write

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    cfg = write(tmp_path / "anycastd.toml", SERVICE.format(port=listener.getsockname()[1]))
    err = tmp_path / "stderr"
    with err.open("w") as stream:
        env = {**os.environ, "JOURNAL_STREAM": identity(err), "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "anycastd", "run", "--dry-run", "-c", str(cfg)],
            stdout=subprocess.DEVNULL, stderr=stream, cwd=ROOT, env=env,
        )
    try:
        def seen(needle: str) -> bool:
            return needle in err.read_text()

        deadline = time.monotonic() + 30
        while not seen("new=up"):
            assert time.monotonic() < deadline, err.read_text()
            time.sleep(0.02)
        listener.close()  # the tcp check now fails: web goes down
        while not seen("new=down"):
            assert time.monotonic() < deadline, err.read_text()
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        listener.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = err.read_text().splitlines()
    assert lines
    assert all(line[:3] in ("<6>", "<4>") and " ts=" not in line for line in lines), lines
    down = next(line for line in lines if "event=service_transition" in line and "new=down" in line)
    assert down.startswith("<4>")
    up = next(line for line in lines if "event=service_transition" in line and "new=up" in line)
    assert up.startswith("<6>")


# --------------------------------------------------------------------------- action events

ACTIONS = {"loopback", "ipvs", "bgp_announce", "bgp_update", "bgp_withdraw"}


def actions(caplog: pytest.LogCaptureFixture, since: int) -> list[dict[str, object]]:
    out = []
    for r in caplog.records[since:]:
        if r.getMessage() in ACTIONS:
            fields = getattr(r, "fields", {})
            assert isinstance(fields, collections.abc.Mapping)
            out.append({"event": r.getMessage(), **fields})
    return out


async def test_every_action_event_names_its_service_and_cause(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    node = Node(tmp_path, DAEMON_HEAD.format(tmp=tmp_path) + fast(tmp_path, "a", A))
    node.flag("a-ok").touch()
    async with running(node):
        assert node.daemon is not None
        controller = node.daemon.controller
        assert controller is not None
        await wait_for(lambda: node.announced() == {A: ()})
        # the pass that announced ends (converged: its cause is spent) before anything else;
        # an address deleted while it still runs is put back under its cause, down->up
        await controller.between_passes()
        up = actions(caplog, 0)
        assert {a["event"] for a in up} == {"loopback", "bgp_announce"}
        for a in up:
            assert a["service"] == "a"
            assert str(a["cause"]).startswith("down->up: ")

        # drift: the address deleted by hand comes back, and says why
        mark = len(caplog.records)
        node.lo.apply([RemoveAddress(A_IF)])
        controller.poke()
        await wait_for(lambda: any(a["event"] == "loopback" for a in actions(caplog, mark)))
        (fix,) = [a for a in actions(caplog, mark) if a["event"] == "loopback"]
        assert fix["action"] == f"add {A}"
        assert fix["service"] == "a"
        assert fix["cause"] == "drift: address missing"

        # a planned drain: the demote and, after drain_time, the withdraw and the address
        # removal all name the maintenance transition
        mark = len(caplog.records)
        node.flag("maintenance-a").touch()
        # the address removal is logged once applied: wait for its event, not its effect
        await wait_for(lambda: any(a["event"] == "loopback" for a in actions(caplog, mark)))
        assert not node.holds(A)
        drained = actions(caplog, mark)
        assert [a["event"] for a in drained] == ["bgp_update", "bgp_withdraw", "loopback"]
        for a in drained:
            assert a["service"] == "a"
            assert str(a["cause"]).startswith("up->maintenance: ")

