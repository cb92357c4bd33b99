"""Process probe: OK while a watched process is alive; its exit is an event, not a poll.

The process is found by exactly one of:

* ``pidfile``: the PID written in that file (first token; anything else is a FAIL);
* ``cmdline``: the processes whose argv (``/proc/PID/cmdline``) equals the tuple exactly;
* ``unit``: the processes of a systemd unit's cgroup, ``<cgroup_root>/system.slice/<unit>``
  and its sub-cgroups (``cgroup.procs``; unified hierarchy, no D-Bus). A name without a dot
  gets ``.service``; a name with ``/`` is a cgroup path relative to ``cgroup_root``.

Rule for several candidates (cmdline, unit): the main process is the lowest PID whose parent
is not itself a candidate. That is the process systemd (or a supervisor) started: workers
and helpers it forks have a candidate as parent. It matches systemd's MainPID for
Type=simple/exec/notify, and for Type=forking once the daemon has detached.

``run()``: if a process is held and its pidfd is not readable, OK without touching /proc.
Otherwise the held pidfd is dropped and the probe looks again; a match is opened with
``os.pidfd_open`` and then re-verified (the pidfile still names it, its cmdline still
matches, it is still in the cgroup, and the pidfd is not already readable): a PID recycled
between the scan and the open is never taken for the service. No match is FAIL, with the
reason (``no process matches cmdline [...]``, ``pidfile /run/x.pid: no such process 1234``).
An unreadable pidfile or cgroup (permissions) is ERROR: the probe cannot tell.

``changed()``: while a process is held, waits for its pidfd to become readable - the kernel
signals it the instant the process exits (also if it lingers as a zombie) - and returns.
While none is held (or the held one's exit was already reported), it waits until a run()
acquires one, then watches that. So ``while True: await probe.changed(); await run()`` never
spins. It waits on a dup of the pidfd, closed on return and on cancellation, so a run() that
drops the held pidfd meanwhile never closes an fd the event loop still watches.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import select
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from healthchecks._base import Stage, guarded
from healthchecks.result import ProbeResult, Status

__all__ = ["ProcessProbe", "main_pid"]


# --------------------------------------------------------------------------------------------
# pure rules and /proc readers (blocking: run() calls them from a worker thread)


def main_pid(pids: Iterable[int], parent_of: Mapping[int, int]) -> int | None:
    """Lowest PID whose parent is not among ``pids`` (None when ``pids`` is empty).

    A PID missing from ``parent_of`` (it exited during the scan) counts as a root; if every
    candidate's parent is a candidate (cannot happen with a real process tree), the lowest.
    """
    candidates = sorted(set(pids))
    for pid in candidates:
        if parent_of.get(pid, 0) not in candidates:
            return pid
    return candidates[0] if candidates else None


def read_cmdline(proc_root: str, pid: int) -> tuple[str, ...] | None:
    """argv of ``pid``; None when it is gone; ``()`` for kernel threads and zombies."""
    try:
        with open(f"{proc_root}/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    if not raw:
        return ()
    if raw.endswith(b"\0"):
        raw = raw[:-1]
    return tuple(os.fsdecode(part) for part in raw.split(b"\0"))


def read_ppid(proc_root: str, pid: int) -> int | None:
    """Parent PID from ``/proc/PID/stat`` (after the last ')', as comm may hold anything)."""
    try:
        with open(f"{proc_root}/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    return int(fields[1]) if len(fields) > 1 else None


def _pids(proc_root: str) -> list[int]:
    return [int(name) for name in os.listdir(proc_root) if name.isdigit()]


def find_cmdline(proc_root: str, argv: tuple[str, ...]) -> list[int]:
    return [pid for pid in _pids(proc_root) if read_cmdline(proc_root, pid) == argv]


def read_pidfile(path: str) -> int:
    """The PID in ``path``; ValueError (a FAIL) for anything that is not a positive PID."""
    with open(path, encoding="ascii", errors="replace") as f:
        text = f.read(64)
    token = text.split()[0] if text.split() else ""
    if not token.isdigit() or int(token) <= 0:
        raise ValueError(f"pidfile {path}: not a PID: {text.strip()[:20]!r}")
    return int(token)


def cgroup_pids(cgroup_dir: str) -> list[int]:
    """PIDs in ``cgroup_dir`` and every sub-cgroup (a unit may delegate sub-cgroups)."""
    pids: list[int] = []
    for root, _dirs, files in os.walk(cgroup_dir):
        if "cgroup.procs" in files:
            with open(os.path.join(root, "cgroup.procs"), encoding="ascii") as f:
                pids.extend(int(line) for line in f if line.strip())
    if not pids and not os.path.isdir(cgroup_dir):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), cgroup_dir)
    return pids


def _readable(fd: int) -> bool:
    """A pidfd is readable once its process has exited (zombie or reaped)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


# --------------------------------------------------------------------------------------------
# the mutable side of the frozen probe


class _Held:
    __slots__ = ("fd", "pid", "reported")

    def __init__(self, pid: int, fd: int) -> None:
        self.pid = pid
        self.fd = fd
        self.reported = False  # changed() already returned for this process's exit


class _State:
    __slots__ = ("acquired", "held")

    def __init__(self) -> None:
        self.held: _Held | None = None
        # Replaced (and the old one set) on every acquisition; waiters keep their own.
        self.acquired = asyncio.Event()

    def take(self, held: _Held) -> None:
        self.drop()
        self.held = held
        old, self.acquired = self.acquired, asyncio.Event()
        old.set()

    def drop(self) -> None:
        if self.held is not None:
            os.close(self.held.fd)
            self.held = None

    def __del__(self) -> None:
        with contextlib.suppress(OSError):
            self.drop()


@dataclass(frozen=True, slots=True)
class ProcessProbe:
    pidfile: str | None = None
    cmdline: tuple[str, ...] | None = None
    unit: str | None = None
    proc_root: str = "/proc"
    cgroup_root: str = "/sys/fs/cgroup"
    _state: _State = field(default_factory=_State, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        given = [x is not None for x in (self.pidfile, self.cmdline, self.unit)]
        if sum(given) != 1:
            raise ValueError("give exactly one of pidfile, cmdline, unit")
        if self.cmdline is not None:
            object.__setattr__(self, "cmdline", tuple(str(a) for a in self.cmdline))
            if not self.cmdline or not self.cmdline[0]:
                raise ValueError("cmdline must be a non-empty argv")
        if self.pidfile is not None and not self.pidfile:
            raise ValueError("pidfile must not be empty")
        if self.unit is not None and (not self.unit or ".." in self.unit.split("/")):
            raise ValueError(f"invalid unit {self.unit!r}")

    @property
    def cgroup_dir(self) -> str:
        unit = self.unit or ""
        if "/" in unit:
            return os.path.join(self.cgroup_root, unit.strip("/"))
        name = unit if "." in unit else f"{unit}.service"
        return os.path.join(self.cgroup_root, "system.slice", name)

    def describe(self) -> str:
        if self.pidfile is not None:
            return f"process pidfile {self.pidfile}"
        if self.cmdline is not None:
            return f"process cmdline {list(self.cmdline)}"
        return f"process unit {self.unit}"

    @property
    def pid(self) -> int | None:
        """The PID currently held (None when none is)."""
        held = self._state.held
        return held.pid if held is not None else None

    async def run(self, timeout: float) -> ProbeResult:  # noqa: ASYNC109 (contract)
        return await guarded(self._check, timeout)

    async def _check(self, stage: Stage) -> tuple[Status, str]:
        state = self._state
        held = state.held
        if held is not None:
            if not _readable(held.fd):
                return Status.OK, f"pid {held.pid}"
            state.drop()
        stage.name = "scan"
        try:
            outcome = await asyncio.to_thread(self._acquire)
        except ValueError as exc:  # a pidfile that holds no PID
            return Status.FAIL, str(exc)
        except FileNotFoundError as exc:
            if self.pidfile is not None:
                return Status.FAIL, f"pidfile {exc.filename}: does not exist"
            return Status.FAIL, f"unit {self.unit}: no cgroup {exc.filename} (not running)"
        except PermissionError as exc:
            return Status.ERROR, f"cannot read {exc.filename}: permission denied"
        if isinstance(outcome, str):
            return Status.FAIL, outcome
        # Taken on the loop thread: changed() waiters are woken here, never from the worker.
        state.take(outcome)
        return Status.OK, f"pid {outcome.pid}"

    # ---- blocking part (worker thread) ----

    def _acquire(self) -> _Held | str:
        """Find, open and re-verify the process; a _Held, or the FAIL reason."""
        if self.pidfile is not None:
            pid = read_pidfile(self.pidfile)
            held = self._open(pid, lambda: read_pidfile(self.pidfile or "") == pid)
            return held or f"pidfile {self.pidfile}: no such process {pid}"
        if self.cmdline is not None:
            argv = self.cmdline
            return self._pick(
                find_cmdline(self.proc_root, argv),
                lambda pid: read_cmdline(self.proc_root, pid) == argv,
                f"no process matches cmdline {list(argv)}",
            )
        cgroup = self.cgroup_dir
        return self._pick(
            cgroup_pids(cgroup),
            lambda pid: pid in cgroup_pids(cgroup),
            f"unit {self.unit}: no process in {cgroup}",
        )

    def _pick(self, pids: list[int], still: Callable[[int], bool], none: str) -> _Held | str:
        remaining = set(pids)
        while remaining:
            parents = {p: read_ppid(self.proc_root, p) or 0 for p in remaining}
            pid = main_pid(remaining, parents)
            if pid is None:
                break
            held = self._open(pid, lambda pid=pid: still(pid))  # type: ignore[misc]
            if held is not None:
                return held
            remaining.discard(pid)  # exited or recycled meanwhile: the next candidate
        return none

    @staticmethod
    def _open(pid: int, still_matches: Callable[[], bool]) -> _Held | None:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        try:
            # The pidfd pins this process: if it still matches now, it is the one we meant.
            if _readable(fd) or not still_matches():
                os.close(fd)
                return None
        except BaseException:
            os.close(fd)
            raise
        return _Held(pid, fd)

    # ---- event hook ----

    async def changed(self) -> None:
        """Return when the held process exits; with none held, wait for one to be held."""
        loop = asyncio.get_running_loop()
        state = self._state
        while True:
            held = state.held
            if held is None or held.reported:
                await state.acquired.wait()
                continue
            fd = os.dup(held.fd)  # ours alone: run() may close the held one meanwhile
            try:
                exited: asyncio.Future[None] = loop.create_future()
                loop.add_reader(fd, _wake, exited)
                try:
                    await exited
                finally:
                    loop.remove_reader(fd)
            finally:
                os.close(fd)
            held.reported = True
            return


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
