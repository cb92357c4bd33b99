"""Exec probe: run a program (never through a shell); exit status 0 is OK.

Contract and why:

* The child gets its own session (``start_new_session=True``), so it and everything it
  forks share one process group we can kill as a unit. On timeout or cancellation the
  whole group gets SIGKILL and the child is reaped: a probe never leaves a zombie or an
  orphan behind. Leftover group members are also killed when the child exits normally,
  since a health check has no business leaving background processes running.
* stdout and stderr are captured up to ``output_limit`` bytes each; beyond that they are
  read and discarded so the child can never block on a full pipe.
* stdin is /dev/null so a check that reads input cannot hang waiting for it.
* ``env`` (if given) is added on top of the daemon's environment, like systemd's
  ``Environment=``; it does not replace it (a check would otherwise lose PATH).
* A missing/unexecutable binary or bad ``cwd`` is ERROR (the check could not run), not
  FAIL (which is a verdict on the service).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
from dataclasses import dataclass

from healthchecks._base import Stage, guarded, one_line, str_pairs
from healthchecks.result import ProbeResult, Status

__all__ = ["ExecProbe"]

# After the child exits, grandchildren that escaped the process group (setsid) may still
# hold the pipes open; output is best effort, so do not wait for them for long.
_DRAIN_GRACE = 0.5
# SIGKILL is not deliverable to a process stuck in uninterruptible sleep; bound the reap so
# the probe still returns (asyncio's child watcher reaps it whenever it finally dies).
_REAP_GRACE = 1.0


async def _drain(stream: asyncio.StreamReader | None, limit: int, kept: bytearray) -> None:
    """Read to EOF, keeping only the first ``limit`` bytes in ``kept`` (partial on cancel)."""
    if stream is None:
        return
    while chunk := await stream.read(65536):
        if len(kept) < limit:
            kept += chunk[: limit - len(kept)]


async def _wait_exit(proc: asyncio.subprocess.Process) -> None:
    """Return when the child itself has exited.

    ``Process.wait()`` also waits for every pipe to close, which a background grandchild
    holding stdout can delay forever; a pidfd tells us about the child alone.
    """
    try:
        fd = os.pidfd_open(proc.pid)
    except ProcessLookupError:
        return  # already exited and reaped
    except OSError:
        # No pidfd (old kernel): poll the return code the child watcher sets; asyncio
        # offers no exit event that does not also wait for the pipes.
        while proc.returncode is None:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        return
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def _reaped(proc: asyncio.subprocess.Process) -> int:
    """Wait until the child has exited *and* been reaped; return its exit status."""
    await _wait_exit(proc)
    # The child watcher reaps right after exit and only then sets the return code (no
    # event to wait on without also waiting for the pipes): a short poll, a few ms at most.
    while proc.returncode is None:  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    return proc.returncode


def _kill_group(pgid: int) -> None:
    # Safe after the leader is reaped: the kernel keeps a PID reserved while any process
    # still uses it as its group id, so this cannot hit an unrelated, reused group.
    # ProcessLookupError: the group is already empty. PermissionError: a member changed
    # credentials (setuid); nothing more we are allowed to do about it.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


async def _terminate(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the child's whole process group and reap the child (bounded wait)."""
    # With start_new_session the child is its session and group leader: pgid == pid.
    _kill_group(proc.pid)
    if proc.returncode is None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_REAP_GRACE):
                await _reaped(proc)


def _first_line(*outputs: bytes) -> str:
    for raw in outputs:
        for line in raw.decode("utf-8", "replace").splitlines():
            if line.strip():
                return line.strip()
    return ""


def _exit_text(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit {returncode}"


@dataclass(frozen=True, slots=True)
class ExecProbe:
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] | None = None
    cwd: str | None = None
    output_limit: int = 4096

    def __post_init__(self) -> None:
        # Accept lists/dicts from config loaders but store tuples: probes must stay hashable.
        object.__setattr__(self, "argv", tuple(self.argv))
        if self.env is not None:
            object.__setattr__(self, "env", str_pairs(self.env))
        if not self.argv or not self.argv[0]:
            raise ValueError("argv must name a program")
        if self.output_limit < 0:
            raise ValueError(f"output_limit must be >= 0, got {self.output_limit}")

    def describe(self) -> str:
        return one_line(f"exec {shlex.join(self.argv)}", 80)

    async def run(self, timeout: float) -> ProbeResult:  # noqa: ASYNC109 (contract)
        return await guarded(self._check, timeout)

    async def _check(self, stage: Stage) -> tuple[Status, str]:
        stage.name = "spawn"
        env = None if self.env is None else {**os.environ, **dict(self.env)}
        # Shielded: if the deadline or a cancel lands while asyncio is still wiring up
        # the pipes, asyncio's own cleanup would SIGKILL the child alone and orphan
        # anything it already forked. Let the spawn finish, then kill the whole group.
        spawn = asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                *self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                cwd=self.cwd,
                start_new_session=True,
            )
        )
        try:
            proc = await asyncio.shield(spawn)
        except OSError as exc:
            what = exc.filename if exc.filename is not None else self.argv[0]
            return Status.ERROR, f"cannot execute: {exc.strerror or exc}: {what}"
        except asyncio.CancelledError:
            with contextlib.suppress(OSError):
                await _terminate(await spawn)
            raise

        out, err = bytearray(), bytearray()
        readers = [
            asyncio.create_task(_drain(proc.stdout, self.output_limit, out)),
            asyncio.create_task(_drain(proc.stderr, self.output_limit, err)),
        ]
        try:
            stage.name = "running"
            await _wait_exit(proc)
            stage.name = "reading output"
            _kill_group(proc.pid)  # leftovers: a check must not leave processes behind
            # Pipes close once the group is dead; a grandchild that escaped the group
            # (setsid) may hold them open, so output is best effort after a grace.
            await asyncio.wait(readers, timeout=_DRAIN_GRACE)
            returncode = await _reaped(proc)
        finally:
            # Runs on success, on our deadline and on outside cancellation alike.
            await _terminate(proc)
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

        line = _first_line(bytes(out), bytes(err))
        if returncode == 0:
            return Status.OK, line
        text = _exit_text(returncode)
        return Status.FAIL, f"{text}: {line}" if line else text
