"""File probe: OK when a path is present (or absent, for the inverse).

Meant for maintenance flags and service-owned health files. "Present" means the
directory entry exists (``lexists``): a dangling symlink an operator created still counts.
Errors other than "does not exist" (e.g. permission denied on the parent) are ERROR:
the probe cannot tell, so it must not claim either answer.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Literal

from healthchecks._base import Stage, guarded
from healthchecks.result import ProbeResult, Status

__all__ = ["FileProbe"]


def _exists(path: str) -> bool:
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    except NotADirectoryError:  # a parent component is a file: the path cannot exist
        return False
    return True


@dataclass(frozen=True, slots=True)
class FileProbe:
    path: str
    expect: Literal["present", "absent"] = "present"

    def __post_init__(self) -> None:
        if self.expect not in ("present", "absent"):
            raise ValueError(f"expect must be 'present' or 'absent', got {self.expect!r}")
        if not self.path:
            raise ValueError("path must not be empty")

    def describe(self) -> str:
        return f"file {self.path} {self.expect}"

    async def run(self, timeout: float) -> ProbeResult:  # noqa: ASYNC109 (contract)
        return await guarded(self._check, timeout)

    async def _check(self, stage: Stage) -> tuple[Status, str]:
        stage.name = "stat"
        # In a thread: a stat on a hung network filesystem must not block the event loop;
        # the deadline then abandons the thread rather than the whole daemon.
        try:
            exists = await asyncio.to_thread(_exists, self.path)
        except OSError as exc:
            return Status.ERROR, f"cannot stat: {exc.strerror or exc}: {self.path}"
        if exists == (self.expect == "present"):
            return Status.OK, "present" if exists else "absent"
        return Status.FAIL, f"{self.path} is {'present' if exists else 'absent'}"
