"""The managed ExaBGP process: its config checked, the process run, restarted, its log read.

Rule: the only code that starts ExaBGP (managed mode; in external mode the operator runs it).
ExaBGP is a child that dies with anycastd (fail closed: PR_SET_PDEATHSIG), is restarted at
once after its first exit and with exponential backoff after each further exit (reset after
a stable run, :func:`restart_delay`), and its output becomes structured log records.

Warm standby (``bgp/standby.py``): most of an ExaBGP start is Python importing ExaBGP (~0.3 s
of the ~0.35 s before it connects, bench/README_startup.md). The first ExaBGP of a start is
the standby ``anycastd run`` started before its own imports, when there is one
(:func:`standby.claim`). Once ExaBGP has run for :data:`STANDBY_DELAY`, the next standby is
prepared: the same interpreter, ExaBGP's modules imported, blocked reading one line on its
stdin -- no config read, no socket, no session. When the running ExaBGP exits, the standby is
told ``go`` and runs ExaBGP's ``main`` on the config and environment as they are then; a new
standby follows. It dies with anycastd like ExaBGP itself. Used only when ``exabgp`` is a
Python console script (its shebang names the interpreter); otherwise every start is cold.
The API side (routes, read-back, the relay socket) is :mod:`anycastd.bgp.speaker`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from anycastd.bgp import standby
from anycastd.bgp.client import ACTUATOR
from anycastd.children import pdeathsig
from anycastd.errors import PermanentError

log = logging.getLogger("anycastd.bgp")
exabgp_log = logging.getLogger("anycastd.exabgp")

#: An ExaBGP that ran this long before exiting restarts without the accumulated backoff.
_STABLE_RUN = 60.0
#: ``exabgp validate`` parses one small file; minutes mean it hangs.
VALIDATE_TIMEOUT = 30.0
#: A first ExaBGP that exits with an error this soon after its start is checked with
#: ``exabgp validate``: a config ExaBGP rejects is a start-up error (ExaBGP exits rc 1 within
#: ~0.2 s of parsing it), not something to restart forever.
VERIFY_WINDOW = 10.0
#: How long an ExaBGP runs before its standby is prepared (the standby's imports then do not
#: compete for CPU with a start-up).
STANDBY_DELAY = 2.0

class _Stdin(Protocol):
    def write(self, data: bytes) -> object: ...


class _Child(Protocol):
    """What the supervisor uses of a child: asyncio's Process, or :class:`_Adopted`."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    @property
    def stdin(self) -> _Stdin | None: ...
    @property
    def stdout(self) -> asyncio.StreamReader | None: ...
    async def wait(self) -> int: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...


class _Adopted:
    """A child started before the event loop (``subprocess.Popen``: the early standby) with
    the interface of asyncio's Process: its output read through the loop, its exit seen on a
    pidfd (no thread, no polling; asyncio's child watcher knows only its own children)."""

    def __init__(self, popen: subprocess.Popen[bytes], stdout: asyncio.StreamReader,
                 exited: asyncio.Future[None]) -> None:
        self._popen = popen
        self.stdin = popen.stdin
        self.stdout = stdout
        self._exited = exited

    @classmethod
    async def adopt(cls, popen: subprocess.Popen[bytes]) -> _Adopted:
        """Raises OSError (no pidfd: a kernel before 5.3) -- the caller starts cold."""
        loop = asyncio.get_running_loop()
        if popen.stdout is None:  # pragma: no cover - PIPE was requested
            raise OSError("the early standby has no stdout pipe")
        pidfd = os.pidfd_open(popen.pid)
        exited: asyncio.Future[None] = loop.create_future()

        def forget() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)

        def gone() -> None:
            forget()
            popen.wait()  # reaps it: the pidfd says it has exited
            if popen.stdin is not None:
                popen.stdin.close()
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(pidfd, gone)
        reader = asyncio.StreamReader(limit=1 << 20, loop=loop)
        try:
            await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader, loop=loop), popen.stdout)
        except BaseException:  # the caller ends the process; the pidfd is ours to close
            if not exited.done():
                forget()
            raise
        return cls(popen, reader, exited)

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    async def wait(self) -> int:
        await asyncio.shield(self._exited)
        return self._popen.returncode if self._popen.returncode is not None else -1

    def terminate(self) -> None:
        if self._popen.returncode is None:
            self._popen.terminate()

    def kill(self) -> None:
        if self._popen.returncode is None:
            self._popen.kill()


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # a uid without a passwd entry (containers)
        return "root" if os.geteuid() == 0 else str(os.geteuid())


def exabgp_env(
    base: Mapping[str, str] | None = None, *, log_level: str = "WARNING"
) -> dict[str, str]:
    """ExaBGP's settings for managed mode. ``log_level`` WARNING by default: at INFO ExaBGP
    logs a line per announced prefix, which costs more CPU than the announcement itself
    (measured: 10,000 prefixes went from 1.0x to 1.4x of a bare ExaBGP's time); anycastd logs
    its own changes and the session events."""
    env = dict(os.environ if base is None else base)
    env.update(
        {
            "exabgp_log_level": log_level,
            "exabgp_daemon_user": _user_name(),
            "exabgp_daemon_daemonize": "false",
            "exabgp_daemon_pid": "",
            "exabgp_log_statistics": "false",
            "exabgp_log_destination": "stdout",
            "exabgp_api_cli": "false",
            "exabgp_api_ack": "true",
            "exabgp_api_respawn": "true",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def restart_delay(failures: int, backoff: tuple[float, float]) -> float:
    """Seconds to wait before starting ExaBGP again after ``failures`` exits in a row (each
    within ``_STABLE_RUN`` of its start; a stable run resets the count to 1).

    The first exit restarts at once: every moment without ExaBGP is a moment the peers have
    none of our routes, and one death (OOM kill, an operator's kill) says nothing about the
    next run. Only a second exit in a row backs off, ``low`` doubling up to ``high``, so a
    crash loop costs little CPU (issue 9: ExaBGP death -> routes back, measured in
    bench/README_startup.md)."""
    low, high = backoff
    if failures <= 1:
        return 0.0
    return float(min(high, low * 2 ** (failures - 2)))


class ExabgpSupervisor:
    """Runs the managed ExaBGP: ``install()`` its config at start (or ``validate()`` it on a
    reload), and run ``run()`` as a task.

    ``on_exit`` is called each time ExaBGP has exited (its RIB and sessions died with it)."""

    def __init__(
        self,
        exabgp: str,
        config_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        log_level: str = "WARNING",
        restart_backoff: tuple[float, float] = (0.5, 30.0),
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        self.exabgp = exabgp
        self.config_path = config_path
        self.env = exabgp_env(env, log_level=log_level)
        self.restart_backoff = restart_backoff
        self.on_exit: Callable[[], None] = on_exit or (lambda: None)
        self.exabgp_pid: int | None = None
        self.exabgp_starts = 0
        #: how many starts used the warm standby (the rest were cold)
        self.standby_starts = 0
        self._interpreter = standby.interpreter(exabgp)
        self._standby: _Child | None = None
        self._started = asyncio.Event()  # an ExaBGP has started: prepare the next standby

    def install(self, text: str) -> None:
        """Write ``text`` as the live config WITHOUT ``exabgp validate`` (start-up, before the
        first ExaBGP: its own parse checks the file, and ``run(verify=text)`` turns a rejection
        into a PermanentError with ExaBGP's message). Saves a second ExaBGP process, ~0.2 s
        of CPU, on every start (bench/README_startup.md)."""
        os.replace(self._write_candidate(text), self.config_path)

    def _write_candidate(self, text: str) -> Path:
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        candidate = self.config_path.with_suffix(".new")
        fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # md5 passwords
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        return candidate

    @property
    def standby_pid(self) -> int | None:
        """The warm standby's pid, while one waits (None otherwise)."""
        standby = self._standby
        return standby.pid if standby is not None and standby.returncode is None else None

    async def validate(self, text: str) -> None:
        """Write ``text`` as ExaBGP's config and check it with ``exabgp validate``; only a
        valid file replaces the live one. PermanentError carrying ExaBGP's message otherwise."""
        candidate = self._write_candidate(text)
        try:
            proc = await asyncio.create_subprocess_exec(
                self.exabgp,
                "validate",
                str(candidate),
                env=self.env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
        except OSError as exc:
            raise PermanentError(ACTUATOR, f"cannot run {self.exabgp!r}: {exc}") from exc
        try:
            async with asyncio.timeout(VALIDATE_TIMEOUT):
                out, _ = await proc.communicate()
        except TimeoutError:
            await _terminate(proc)
            raise PermanentError(
                ACTUATOR, f"`exabgp validate` gave no answer within {VALIDATE_TIMEOUT:.0f}s"
            ) from None
        if proc.returncode != 0:
            message = " | ".join(
                line.strip() for line in out.decode("utf-8", "replace").splitlines() if line.strip()
            )
            raise PermanentError(
                ACTUATOR, f"ExaBGP rejected the generated configuration {candidate}: "
                f"{message[-2000:]}"
            )
        os.replace(candidate, self.config_path)

    def reload(self) -> None:
        """ExaBGP re-reads its (validated) config: SIGUSR1, if it runs."""
        if self.exabgp_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.exabgp_pid, signal.SIGUSR1)

    async def run(self, *, verify: str | None = None) -> None:
        """Run ExaBGP until cancelled: restarted whenever it exits (:func:`restart_delay`).

        ``verify``: the config text ``install()`` wrote unchecked. If the first ExaBGP exits
        with an error within :data:`VERIFY_WINDOW`, ``validate(verify)`` runs and its
        PermanentError (ExaBGP rejects the config) ends ``run``: a start-up error."""
        try:
            await self._adopt_early()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._keep_standby())
                await self._restart_loop(verify)
        except* PermanentError as group:
            raise group.exceptions[0] from None
        finally:
            await self._drop_standby()

    async def _restart_loop(self, verify: str | None) -> None:
        failures = 0
        while True:
            ran, rc = await self._run_exabgp_once()
            if verify is not None:
                text, verify = verify, None
                if rc is not None and rc > 0 and ran < VERIFY_WINDOW:
                    await self.validate(text)
            failures = 1 if ran >= _STABLE_RUN else failures + 1
            delay = restart_delay(failures, self.restart_backoff)
            if delay > 0:
                log.info("exabgp_restart_backoff", extra={"delay_seconds": delay})
                await asyncio.sleep(delay)

    async def _run_exabgp_once(self) -> tuple[float, int | None]:
        """Start ExaBGP and wait for its exit: (seconds it ran, exit code); (0, None) when
        it did not start."""
        started = time.monotonic()
        proc: _Child | None = self._wake_standby()
        warm = proc is not None
        if proc is None:
            try:
                proc = await asyncio.create_subprocess_exec(
                    self.exabgp,
                    str(self.config_path),
                    env=self.env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    preexec_fn=pdeathsig(signal.SIGTERM),  # fail closed: dies with anycastd
                    limit=1 << 20,  # a long log line must not end the log pump
                )
            except OSError as exc:  # replaced during an upgrade, EAGAIN...: try again later
                log.error("exabgp_start_failed", extra={"error": str(exc)})  # noqa: TRY400
                return 0.0, None
        self.exabgp_pid = proc.pid
        self.exabgp_starts += 1
        self.standby_starts += warm
        log.info("exabgp_started", extra={"exabgp_pid": proc.pid, "warm": warm})
        self._started.set()
        try:
            if proc.stdout is None:  # pragma: no cover - PIPE was requested
                raise RuntimeError("ExaBGP stdout is not a pipe")
            while True:
                try:
                    raw = await proc.stdout.readline()
                except ValueError:  # a line over the limit: asyncio dropped it; go on
                    log.warning("exabgp_log_line_too_long")
                    continue
                if not raw:
                    break
                log_exabgp_line(raw, proc.pid)
            rc = await proc.wait()
        finally:
            if proc.returncode is None:
                await _terminate(proc)
            self.exabgp_pid = None
            self.on_exit()
        ran = time.monotonic() - started
        log.warning("exabgp_exited", extra={"exabgp_rc": rc, "ran_seconds": ran})
        return ran, rc

    # -- the warm standby ------------------------------------------------------------------
    async def _adopt_early(self) -> None:
        """The standby ``anycastd run`` started before its imports becomes the first one."""
        early = standby.claim(self.exabgp)
        if early is None:
            return
        try:
            self._standby = await _Adopted.adopt(early)
        except BaseException as exc:  # no pidfd (the first start is a cold one), a stop
            standby.end(early)
            if not isinstance(exc, OSError):
                raise
            log.warning("exabgp_standby_failed", extra={"error": str(exc)})

    async def _keep_standby(self) -> None:
        """After each start, once the new ExaBGP has run for a while, have a standby."""
        while True:
            await self._started.wait()
            self._started.clear()
            await asyncio.sleep(STANDBY_DELAY)
            current = self._standby
            if self._interpreter is None or (current is not None and current.returncode is None):
                continue
            try:
                self._standby = await asyncio.create_subprocess_exec(
                    *standby.argv(self._interpreter, self.exabgp),
                    env=self.env,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    preexec_fn=pdeathsig(signal.SIGTERM),  # dies with anycastd, like ExaBGP
                    limit=1 << 20,
                )
            except OSError as exc:  # no standby: the next restart is a cold one
                log.warning("exabgp_standby_failed", extra={"error": str(exc)})

    def _wake_standby(self) -> _Child | None:
        """The standby, told to become ExaBGP; None if there is none alive."""
        proc, self._standby = self._standby, None
        if proc is None:
            return None
        if proc.returncode is None and proc.stdin is not None:
            try:
                proc.stdin.write(standby.go_line([self.exabgp, str(self.config_path)],
                                                 self.env))
            except (OSError, RuntimeError):
                pass
            else:
                return proc
        with contextlib.suppress(ProcessLookupError):  # unusable: gone (asyncio reaps it)
            proc.kill()
        return None

    async def _drop_standby(self) -> None:
        proc, self._standby = self._standby, None
        if proc is not None:
            await _terminate(proc, grace=1.0)


def log_exabgp_line(raw: bytes, pid: int) -> None:
    line = raw.decode("utf-8", "replace").rstrip()
    if not line.strip():
        return
    source, _, message = line.partition(" ")
    message = message.strip()
    lowered = message.lower()
    level = (
        logging.WARNING
        if any(w in lowered for w in ("error", "fail", "notification", "problem"))
        else logging.INFO
    )
    exabgp_log.log(
        level, message or source, extra={"exabgp_pid": pid, "exabgp_source": source}
    )


async def _terminate(proc: _Child, grace: float = 5.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(asyncio.shield(proc.wait()), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
