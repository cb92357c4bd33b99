"""Operator flags: maintenance and drain, set through the API or by flag files.

Rule: the only writer of maintenance/drain into the scheduler and of ``state_dir/flags.json``;
never stat()s a flag file on the loop.

Flag files (maintenance_file, drain_file, global.maintenance_file) are never stat()ed on
the loop: a stat on a hung mount would freeze it, stop the watchdog pings and let systemd
restart anycastd with its ExaBGP. One worker thread at a time reads them; the loop (and an
API flag change) uses the last values read.

A flag file OR an API flag turns a state on. API flags outlive the process (flags.json); a
renamed service keeps its old name's flags across a reload (``engine.reload``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from anycastd.config import Config
from anycastd.engine.scheduler import Scheduler
from anycastd.observe.logs import event

if TYPE_CHECKING:  # aiohttp loads only when the daemon serves its API
    from anycastd.observe.api import FlagKind

log = logging.getLogger("anycastd")
_T = TypeVar("_T")

#: How often maintenance/drain flag files are looked at. A stat() per file: cheap.
FLAG_POLL_INTERVAL = 1.0

#: A flag-file read that has not returned after this long is stuck (a hung NFS mount): it
#: is logged and the previous flag values stand until a read completes again.
FLAG_READ_TIMEOUT = 2.0


@dataclass
class ApiFlags:
    maintenance: bool = False
    draining: bool = False


class OperatorFlags:
    """Maintenance and drain of every service as the operator set them: API flags (kept in
    ``state_dir/flags.json``), flag files (last values read) and the node maintenance file.
    ``config`` follows reloads (:meth:`reconfigure`); ``scheduler`` is read when a flag
    changes."""

    def __init__(
        self,
        config: Config,
        scheduler: Callable[[], Scheduler],
        *,
        exists: Callable[[Path], bool] = Path.exists,
    ) -> None:
        self.config = config
        self._scheduler = scheduler
        # Operator flags set through the API; a flag file OR an API flag turns a state on.
        self.api: dict[str, ApiFlags] = {}
        self._node_maint = False
        # Flag files are read off the loop (a stat on a hung mount blocks the thread that
        # makes it): ``_file_flags`` holds the last values read; ``_stuck`` the paths whose
        # stat has not returned, each with its hung read: they are left out of later reads
        # (so one dead mount hides no other flag) until that read returns.
        self._flag_exists = exists
        self._file_flags: dict[Path, bool] = {}
        self._stuck: dict[Path, asyncio.Future[dict[Path, bool | OSError]]] = {}
        self.known = False  # a first read has completed
        self._dry_run = False  # a dry run neither reads nor writes flags.json

    def set_flag(self, service: str, kind: FlagKind, on: bool) -> bool:
        if service not in self.config.services:
            return False
        flags = self.api.setdefault(service, ApiFlags())
        if kind == "maintenance":
            flags.maintenance = on
        else:
            flags.draining = on
        self.save()
        self.sync()
        return True

    # Operator flags outlive the process: a node put into maintenance must not come back
    # announcing after an upgrade, a crash or a watchdog restart.

    def _flags_file(self) -> Path:
        return Path(self.config.global_.state_dir) / "flags.json"

    def reconfigure(self, config: Config, renames: Mapping[str, str]) -> None:
        """API flags after a reload: a renamed service keeps its old name's flags (also in
        flags.json), a removed service's flags go."""
        self.config = config
        services = set(config.services)
        before = dict(self.api)
        carried_over = {to: before[was] for to, was in renames.items() if was in before}
        self.api = {k: v for k, v in before.items() if k in services} | carried_over
        if self.api != before:
            self.save()

    def load(self, *, dry_run: bool) -> None:
        self._dry_run = dry_run
        if self._dry_run:
            return
        path = self._flags_file()
        try:
            doc = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            event(log, "flags_unreadable", level=logging.ERROR, path=str(path), error=str(exc))
            return
        for name, flags in (doc.items() if isinstance(doc, dict) else ()):
            if name in self.config.services and isinstance(flags, dict):
                self.api[name] = ApiFlags(
                    maintenance=flags.get("maintenance") is True,
                    draining=flags.get("draining") is True,
                )
                event(log, "flags_restored", service=name, **flags)

    def save(self) -> None:
        if self._dry_run:
            return
        path = self._flags_file()
        doc = {
            name: {"maintenance": f.maintenance, "draining": f.draining}
            for name, f in sorted(self.api.items())
            if f.maintenance or f.draining
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(doc, indent=1) + "\n")
            os.replace(tmp, path)
        except OSError as exc:
            event(log, "flags_not_saved", level=logging.ERROR, path=str(path), error=str(exc),
                  detail="the flag holds until anycastd restarts")

    async def watch(self) -> None:
        while True:
            await self._read_flag_files()
            self.sync()
            await asyncio.sleep(FLAG_POLL_INTERVAL)

    def _flag_paths(self) -> list[Path]:
        paths = [self.config.global_.maintenance_file]
        for svc in self.config.services.values():
            paths += [svc.maintenance_file, svc.drain_file]
        return sorted({p for p in paths if p is not None})

    async def _read_flag_files(self) -> None:
        """Stat the flag files in a worker thread and remember the answers. A path whose
        stat hangs is quarantined: later reads leave it out (its previous value stands)
        until the hung read returns, so threads never pile up on one dead mount (at most
        one per stuck path) and the other flags are still read."""
        self._stuck = {p: f for p, f in self._stuck.items() if not f.done()}
        paths = [p for p in self._flag_paths() if p not in self._stuck]
        if not paths:
            # no flag file configured: nothing to wait for (the first controller pass waits
            # until flags are known); all stuck: the previous values stand
            self.known = self.known or not self._stuck
            return
        exists = self._flag_exists
        current: list[Path] = []  # the path the thread is at (where it hangs, if it does)

        def read() -> dict[Path, bool | OSError]:
            out: dict[Path, bool | OSError] = {}
            for path in paths:
                current[:] = [path]
                try:
                    out[path] = exists(path)
                except OSError as exc:
                    out[path] = exc
            return out

        reading = read_in_thread(read, "anycastd-flags")
        try:
            async with asyncio.timeout(FLAG_READ_TIMEOUT):
                result = await asyncio.shield(reading)
        except TimeoutError:
            stuck = current[0] if current else paths[0]
            self._stuck[stuck] = reading
            event(log, "flag_files_stuck", level=logging.WARNING, timeout=FLAG_READ_TIMEOUT,
                  path=str(stuck),
                  detail="a flag file stat() has not returned (a hung mount?); its previous "
                  "maintenance/drain value stands until it does; the other files are still "
                  "read")
            return
        for path, value in result.items():
            if isinstance(value, OSError):
                # EACCES, EIO, a stale mount: the previous value stands
                event(log, "flag_file_unreadable", level=logging.WARNING, path=str(path),
                      error=str(value), keeping=self._file_flags.get(path))
            else:
                self._file_flags[path] = value
        self.known = True

    def _flag_file(self, path: Path | None, previous: bool) -> bool:
        """Whether a flag file exists, as last read (never a stat on the loop); a file not
        read yet (or never readable) keeps ``previous``."""
        if path is None:
            return False
        return self._file_flags.get(path, previous)

    def sync(self) -> None:
        """Maintenance and drain: per-service files, API flags, the node maintenance file."""
        scheduler = self._scheduler()
        node_maint = self._flag_file(self.config.global_.maintenance_file, self._node_maint)
        self._node_maint = node_maint
        for name, svc in self.config.services.items():
            api = self.api.get(name, ApiFlags())
            have = scheduler.health(name)
            own_file = self._flag_file(svc.maintenance_file, have.maintenance)
            maintenance = node_maint or own_file or api.maintenance
            draining = api.draining or self._flag_file(svc.drain_file, have.draining)
            if maintenance != have.maintenance:
                why = ("node maintenance file present" if node_maint
                       else "maintenance file present" if own_file
                       else "maintenance set through the API" if api.maintenance
                       else "maintenance")
                scheduler.set_maintenance(name, maintenance, why)
            if draining != have.draining:
                why = "drain set through the API" if api.draining else "drain file present"
                scheduler.set_draining(name, draining, why)


def read_in_thread(fn: Callable[[], _T], name: str) -> asyncio.Future[_T]:
    """``fn()`` in a new daemon thread; its result (or exception) on the returned future.

    Not an executor: a pool's threads are joined at interpreter exit, so a call hung in the
    kernel (a stat on a dead NFS mount) would keep anycastd from ever exiting."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[_T] = loop.create_future()

    def deliver(value: _T | None, exc: BaseException | None) -> None:
        if fut.done():  # nobody waits any more (cancelled)
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)  # type: ignore[arg-type]  # None only with exc set

    def work() -> None:
        try:
            value, exc = fn(), None
        except BaseException as e:  # handed to the loop, which re-raises it
            value, exc = None, e
        with contextlib.suppress(RuntimeError):  # the loop has closed meanwhile
            loop.call_soon_threadsafe(deliver, value, exc)

    threading.Thread(target=work, name=name, daemon=True).start()
    return fut
