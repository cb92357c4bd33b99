"""Child processes that die with anycastd: the one PR_SET_PDEATHSIG ``preexec_fn``.

Rule: every child anycastd starts that must not outlive it (the managed ExaBGP, the demo's
processes) gets this; the relay (``bgp/relay.py``) keeps its own copy, being stdlib only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def pdeathsig(sig: int) -> Callable[[], None]:
    """A preexec_fn: the child gets ``sig`` when the thread that forked it dies.

    libc is loaded here, in the parent: between fork and exec the child only makes the
    prctl call (no dlopen, no allocation under locks another thread may hold). Fork from a
    thread that lives as long as the process: the loop that starts ExaBGP must run in the
    daemon's main thread (asyncio's default)."""
    prctl = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:  # pragma: no cover - runs in the forked child
        if prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
            os._exit(71)
        # the parent may have died between fork and prctl: then nobody would signal us
        if os.getppid() != parent:
            os._exit(71)

    return preexec
