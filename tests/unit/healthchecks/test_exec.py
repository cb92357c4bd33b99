"""ExecProbe with real subprocesses: exit codes, output bounds, and process-group cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from healthchecks import ExecProbe, Status

from .conftest import eventually


def _gone(pid: int) -> bool:
    """True when pid no longer runs: absent, or a zombie awaiting a lazy PID 1 reaper."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    # Field 3 (after the parenthesised comm, which may contain spaces) is the state.
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _absent(pid: int) -> bool:
    """Reaped by us: not even a zombie entry remains."""
    return not Path(f"/proc/{pid}").exists()


def _pids_written(path: Path) -> bool:
    return path.exists() and len(path.read_text().split()) == 2


def _block_loop_until(predicate: Callable[[], bool], within: float = 2.0) -> bool:
    """Poll *without* yielding to the event loop: freezes asyncio mid-operation on purpose."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@pytest.fixture
def spawned() -> Iterator[list[int]]:
    """PIDs a test's scripts started; killed at teardown so a failing test leaks nothing."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _read_pids(path: Path, spawned: list[int]) -> list[int]:
    pids = [int(x) for x in path.read_text().split()]
    spawned.extend(pids)
    return pids


async def test_exit_zero_is_ok_with_first_output_line() -> None:
    result = await ExecProbe(("/bin/sh", "-c", "echo; echo all good; echo more")).run(2.0)
    assert (result.status, result.reason) == (Status.OK, "all good")


async def test_non_zero_exit_fails_with_first_line() -> None:
    result = await ExecProbe(("/bin/sh", "-c", "echo 'db down' >&2; exit 2")).run(2.0)
    assert (result.status, result.reason) == (Status.FAIL, "exit 2: db down")


async def test_stdout_is_preferred_over_stderr_for_the_reason() -> None:
    probe = ExecProbe(("/bin/sh", "-c", "echo noise >&2; echo CRITICAL: lag; exit 1"))
    assert (await probe.run(2.0)).reason == "exit 1: CRITICAL: lag"


async def test_exit_without_output() -> None:
    result = await ExecProbe(("/bin/false",)).run(2.0)
    assert (result.status, result.reason) == (Status.FAIL, "exit 1")


async def test_killed_by_signal_is_named() -> None:
    result = await ExecProbe(("/bin/sh", "-c", "kill -TERM $$")).run(2.0)
    assert (result.status, result.reason) == (Status.FAIL, "killed by SIGTERM")


async def test_missing_binary_is_an_error() -> None:
    result = await ExecProbe(("/nonexistent/check",)).run(2.0)
    assert result.status is Status.ERROR
    assert result.reason == "cannot execute: No such file or directory: /nonexistent/check"


async def test_missing_cwd_is_an_error(tmp_path: Path) -> None:
    result = await ExecProbe(("/bin/true",), cwd=str(tmp_path / "nope")).run(2.0)
    assert result.status is Status.ERROR


async def test_env_is_added_and_cwd_is_used(tmp_path: Path) -> None:
    probe = ExecProbe(
        ("/bin/sh", "-c", 'test "$WANT" = yes && test "$PWD" = "$1" && test -n "$PATH"', "-",
         str(tmp_path)),
        env=(("WANT", "yes"),),
        cwd=str(tmp_path),
    )  # fmt: skip
    assert (await probe.run(2.0)).status is Status.OK


async def test_large_output_never_blocks_the_child() -> None:
    # 4 MiB on each pipe is far beyond the 64 KiB pipe buffer: without draining past the
    # limit the child would block on write and the probe would time out.
    script = "head -c 4194304 /dev/zero; head -c 4194304 /dev/zero >&2; echo done >&2"
    result = await ExecProbe(("/bin/sh", "-c", script), output_limit=16).run(5.0)
    assert result.status is Status.OK
    # Only the first 16 bytes of stdout were kept: NULs, so the "first line" is them.
    assert result.reason == "\0" * 16


async def test_output_limit_bounds_the_captured_reason() -> None:
    probe = ExecProbe(("/bin/sh", "-c", "echo abcdefghij; exit 1"), output_limit=4)
    assert (await probe.run(2.0)).reason == "exit 1: abcd"


async def test_timeout_kills_the_whole_process_group(tmp_path: Path, spawned: list[int]) -> None:
    pids = tmp_path / "pids"
    # The shell (our child) starts a grandchild that sleeps; both must die with the probe.
    script = f"sleep 30 & echo $$ $! > {pids}; wait"
    start = time.monotonic()
    result = await ExecProbe(("/bin/sh", "-c", script)).run(0.3)
    elapsed = time.monotonic() - start
    assert result.status is Status.TIMEOUT
    assert result.reason == "timed out after 300ms (running)"
    assert elapsed < 0.8
    child, grandchild = _read_pids(pids, spawned)
    assert _absent(child)
    assert await eventually(lambda: _gone(grandchild))


async def test_leftover_background_processes_are_killed_after_exit(
    tmp_path: Path, spawned: list[int]
) -> None:
    pids = tmp_path / "pids"
    # The grandchild keeps stdout open: without the group kill we would wait on the pipe.
    script = f"sleep 30 & echo $! > {pids}; echo started"
    start = time.monotonic()
    result = await ExecProbe(("/bin/sh", "-c", script)).run(5.0)
    assert (result.status, result.reason) == (Status.OK, "started")
    assert time.monotonic() - start < 1.0
    assert await eventually(lambda: _gone(_read_pids(pids, spawned)[0]))


async def test_cancellation_propagates_and_still_kills_the_group(
    tmp_path: Path, spawned: list[int]
) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 30 & echo $$ $! > {pids}; wait"
    task = asyncio.create_task(ExecProbe(("/bin/sh", "-c", script)).run(10.0))
    assert await eventually(lambda: _pids_written(pids), within=2.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    child, grandchild = _read_pids(pids, spawned)
    assert _absent(child)
    assert await eventually(lambda: _gone(grandchild))


async def test_stdin_is_closed_so_readers_do_not_hang() -> None:
    result = await ExecProbe((sys.executable, "-c", "import sys; sys.stdin.read()")).run(5.0)
    assert result.status is Status.OK


def test_argv_list_is_stored_as_tuple_and_described() -> None:
    probe = ExecProbe(["/usr/lib/check", "--name", "a b"])  # type: ignore[arg-type]
    assert probe.argv == ("/usr/lib/check", "--name", "a b")
    assert probe.describe() == "exec /usr/lib/check --name 'a b'"


@pytest.mark.parametrize("argv", [(), ("",)])
def test_empty_argv_is_rejected(argv: tuple[str, ...]) -> None:
    with pytest.raises(ValueError, match="argv"):
        ExecProbe(argv)


def test_no_zombie_children_left_by_the_test_process() -> None:
    # Every child this process spawned has been reaped (ECHILD or nothing to wait for).
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return
    assert pid == 0


async def test_cancel_during_spawn_still_kills_what_the_child_forked(
    tmp_path: Path, spawned: list[int]
) -> None:
    pids = tmp_path / "pids"
    script = f"sleep 30 & echo $$ $! > {pids}; wait"
    task = asyncio.create_task(ExecProbe(("/bin/sh", "-c", script)).run(10.0))
    # Two loop steps: the probe starts the spawn, the spawn forks the child and then waits
    # for asyncio to connect its pipes. Blocking the loop now lets the child fork its own
    # child while the spawn is still pending, and the cancel lands right there.
    for _ in range(2):
        await asyncio.sleep(0)
    assert _block_loop_until(lambda: _pids_written(pids))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    child, grandchild = _read_pids(pids, spawned)
    assert _absent(child)
    assert await eventually(lambda: _gone(grandchild))
