"""ProcessProbe: matching rules on a fake /proc tree, and pidfd events on real children."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from healthchecks import ProcessProbe, Status
from healthchecks.process import cgroup_pids, find_cmdline, main_pid, read_ppid


def fake_proc(root: Path, pid: int, argv: list[str], ppid: int = 1, comm: str = "x") -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))
    (d / "stat").write_text(f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1\n")


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    """A real process we own (ended by its PID in teardown)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


# ---- rules -----------------------------------------------------------------------------------


def test_main_pid_is_the_lowest_pid_whose_parent_is_outside_the_set() -> None:
    # 300 forked 200 (a worker); 100 was started by someone else: 100 is the root...
    assert main_pid([300, 200, 100], {300: 1, 200: 300, 100: 1}) == 100
    # ...and a worker with a lower PID than its master is never picked.
    assert main_pid([50, 60], {50: 60, 60: 1}) == 60
    assert main_pid([], {}) is None


def test_a_pid_that_vanished_during_the_scan_counts_as_a_root() -> None:
    assert main_pid([7, 9], {9: 7}) == 7


def test_cmdline_matches_the_exact_argv_only(tmp_path: Path) -> None:
    fake_proc(tmp_path, 10, ["/usr/sbin/nginx", "-g", "daemon off;"])
    fake_proc(tmp_path, 11, ["/usr/sbin/nginx", "-g"])
    fake_proc(tmp_path, 12, ["/usr/sbin/nginx", "-g", "daemon off;", "-x"])
    fake_proc(tmp_path, 13, [])  # kernel thread: empty cmdline
    (tmp_path / "self").mkdir()
    argv = ("/usr/sbin/nginx", "-g", "daemon off;")
    assert find_cmdline(str(tmp_path), argv) == [10]


def test_ppid_is_read_after_the_last_parenthesis(tmp_path: Path) -> None:
    fake_proc(tmp_path, 20, ["x"], ppid=4, comm="evil) S 99 (name")
    assert read_ppid(str(tmp_path), 20) == 4
    assert read_ppid(str(tmp_path), 21) is None


def test_cgroup_pids_include_sub_cgroups(tmp_path: Path) -> None:
    unit = tmp_path / "system.slice" / "foo.service"
    (unit / "sub").mkdir(parents=True)
    (unit / "cgroup.procs").write_text("5\n")
    (unit / "sub" / "cgroup.procs").write_text("7\n9\n")
    assert sorted(cgroup_pids(str(unit))) == [5, 7, 9]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({}, "exactly one"), ({"pidfile": "/x", "unit": "y"}, "exactly one"),
     ({"cmdline": ()}, "non-empty"), ({"unit": "../etc"}, "invalid unit")],
)  # fmt: skip
def test_bad_options_are_rejected(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ProcessProbe(**kwargs)  # type: ignore[arg-type]


def test_unit_names_map_to_cgroup_paths() -> None:
    assert ProcessProbe(unit="nginx", cgroup_root="/cg").cgroup_dir == (
        "/cg/system.slice/nginx.service"
    )
    assert ProcessProbe(unit="a.scope", cgroup_root="/cg").cgroup_dir == "/cg/system.slice/a.scope"
    assert ProcessProbe(unit="user.slice/x.service", cgroup_root="/cg").cgroup_dir == (
        "/cg/user.slice/x.service"
    )


def test_probes_are_hashable_values() -> None:
    assert ProcessProbe(cmdline=("a", "b")) == ProcessProbe(cmdline=["a", "b"])  # type: ignore[arg-type]
    hash(ProcessProbe(pidfile="/run/x.pid"))


# ---- outcomes --------------------------------------------------------------------------------


async def test_missing_pidfile_fails(tmp_path: Path) -> None:
    result = await ProcessProbe(pidfile=str(tmp_path / "x.pid")).run(1.0)
    assert result.status is Status.FAIL
    assert result.reason == f"pidfile {tmp_path / 'x.pid'}: does not exist"


async def test_pidfile_with_garbage_fails(tmp_path: Path) -> None:
    (tmp_path / "x.pid").write_text("hello\n")
    result = await ProcessProbe(pidfile=str(tmp_path / "x.pid")).run(1.0)
    assert result.status is Status.FAIL
    assert "not a PID: 'hello'" in result.reason


async def test_pidfile_naming_a_dead_pid_fails(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec("true")
    await proc.wait()  # reaped: the PID names no process (until recycled, which is rare)
    (tmp_path / "x.pid").write_text(f"{proc.pid}\n")
    result = await ProcessProbe(pidfile=str(tmp_path / "x.pid")).run(1.0)
    assert result.status is Status.FAIL
    assert result.reason == f"pidfile {tmp_path / 'x.pid'}: no such process {proc.pid}"


async def test_pidfile_of_a_live_process_is_ok(
    tmp_path: Path, child: subprocess.Popen[bytes]
) -> None:
    (tmp_path / "x.pid").write_text(f"{child.pid}\n")
    probe = ProcessProbe(pidfile=str(tmp_path / "x.pid"))
    result = await probe.run(1.0)
    assert (result.status, result.reason, probe.pid) == (Status.OK, f"pid {child.pid}", child.pid)


async def test_no_cmdline_match_fails_with_the_argv(tmp_path: Path) -> None:
    fake_proc(tmp_path, 10, ["other"])
    result = await ProcessProbe(cmdline=("nginx", "-t"), proc_root=str(tmp_path)).run(1.0)
    assert result.status is Status.FAIL
    assert result.reason == "no process matches cmdline ['nginx', '-t']"


async def test_cmdline_match_in_a_fake_proc_opens_the_real_pid(
    tmp_path: Path, child: subprocess.Popen[bytes]
) -> None:
    fake_proc(tmp_path, child.pid, ["svc", "--serve"])
    probe = ProcessProbe(cmdline=("svc", "--serve"), proc_root=str(tmp_path))
    assert (await probe.run(1.0)).status is Status.OK
    assert probe.pid == child.pid


async def test_unit_main_process_from_the_cgroup(
    tmp_path: Path, child: subprocess.Popen[bytes]
) -> None:
    unit = tmp_path / "cg" / "system.slice" / "svc.service"
    unit.mkdir(parents=True)
    (unit / "cgroup.procs").write_text(f"{child.pid}\n")
    fake_proc(tmp_path / "proc", child.pid, ["svc"], ppid=1)
    probe = ProcessProbe(unit="svc", cgroup_root=str(tmp_path / "cg"),
                         proc_root=str(tmp_path / "proc"))  # fmt: skip
    assert (await probe.run(1.0)).status is Status.OK
    assert probe.pid == child.pid
    (unit / "cgroup.procs").write_text("")
    child.kill()
    child.wait()
    result = await probe.run(1.0)
    assert result.status is Status.FAIL
    assert result.reason == f"unit svc: no process in {unit}"


async def test_missing_unit_cgroup_fails(tmp_path: Path) -> None:
    result = await ProcessProbe(unit="nope", cgroup_root=str(tmp_path)).run(1.0)
    assert result.status is Status.FAIL
    assert "unit nope: no cgroup" in result.reason


async def test_a_recycled_pid_is_not_taken_for_the_service(
    tmp_path: Path, child: subprocess.Popen[bytes]
) -> None:
    # The scan saw the argv, but by the time the pidfd is open the PID runs something else:
    # here the fake cmdline changes between the two reads.
    fake_proc(tmp_path, child.pid, ["svc"])
    probe = ProcessProbe(cmdline=("svc",), proc_root=str(tmp_path))
    calls = 0
    real_open = os.pidfd_open

    def pidfd_open_then_recycle(pid: int, flags: int = 0) -> int:
        nonlocal calls
        calls += 1
        (tmp_path / str(pid) / "cmdline").write_bytes(b"other\0")
        return real_open(pid, flags)

    mp = pytest.MonkeyPatch()
    mp.setattr(os, "pidfd_open", pidfd_open_then_recycle)
    try:
        result = await probe.run(1.0)
    finally:
        mp.undo()
    assert calls == 1
    assert result.status is Status.FAIL
    assert probe.pid is None


# ---- changed() -------------------------------------------------------------------------------


async def test_changed_returns_when_the_held_process_exits(
    child: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    (tmp_path / "x.pid").write_text(f"{child.pid}\n")
    probe = ProcessProbe(pidfile=str(tmp_path / "x.pid"))
    assert (await probe.run(1.0)).ok
    waiter = asyncio.create_task(probe.changed())
    await asyncio.sleep(0.05)
    assert not waiter.done()
    os.kill(child.pid, signal.SIGKILL)
    await asyncio.wait_for(waiter, 5)
    assert (await probe.run(1.0)).status is Status.FAIL  # zombie or reaped: exited


async def test_changed_without_a_process_waits_for_one_to_be_acquired(
    tmp_path: Path, child: subprocess.Popen[bytes]
) -> None:
    pidfile = tmp_path / "x.pid"
    probe = ProcessProbe(pidfile=str(pidfile))
    assert (await probe.run(1.0)).status is Status.FAIL
    waiter = asyncio.create_task(probe.changed())
    await asyncio.sleep(0.05)
    assert not waiter.done()  # nothing held: no cause to return
    pidfile.write_text(f"{child.pid}\n")
    assert (await probe.run(1.0)).ok
    await asyncio.sleep(0.05)
    assert not waiter.done()  # now watching the acquired process
    child.kill()
    await asyncio.wait_for(waiter, 5)


async def test_changed_does_not_return_twice_for_one_exit(
    tmp_path: Path, child: subprocess.Popen[bytes]
) -> None:
    (tmp_path / "x.pid").write_text(f"{child.pid}\n")
    probe = ProcessProbe(pidfile=str(tmp_path / "x.pid"))
    assert (await probe.run(1.0)).ok
    child.kill()
    await asyncio.wait_for(probe.changed(), 5)
    # No run() in between: the exit was reported already, so this one must wait.
    again = asyncio.create_task(probe.changed())
    await asyncio.sleep(0.05)
    assert not again.done()
    again.cancel()
    with pytest.raises(asyncio.CancelledError):
        await again


async def test_cancelled_changed_leaves_no_descriptor(
    tmp_path: Path, child: subprocess.Popen[bytes]
) -> None:
    (tmp_path / "x.pid").write_text(f"{child.pid}\n")
    probe = ProcessProbe(pidfile=str(tmp_path / "x.pid"))
    assert (await probe.run(1.0)).ok
    before = len(os.listdir("/proc/self/fd"))
    waiter = asyncio.create_task(probe.changed())
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert len(os.listdir("/proc/self/fd")) == before
