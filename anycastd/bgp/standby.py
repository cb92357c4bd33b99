"""ExaBGP's warm standby: a Python process with ExaBGP's modules imported, waiting for ``go``.

Rule: stdlib only, importable before anything else of anycastd's -- ``anycastd run`` starts
one (:func:`prewarm`) before it imports the rest of itself, so ExaBGP's imports (~0.15 s of
CPU) run on another core while anycastd's own run (~0.45 s), and the first ExaBGP of a
start is a warm one (bench/README_startup.md). The supervisor (``bgp/supervisor.py``) makes
the later ones and adopts this first one (:func:`claim`).

A standby holds no config, no socket and no session: it is
``python -c SCRIPT EXABGP`` blocked reading one line on stdin. ``go {"argv": [...],
"env": {...}}`` turns it into ``exabgp`` with that argv and environment (ExaBGP reads its
environment when it starts, not when it is imported: ``exabgp.environment.getenv``); any other
line, or EOF (anycastd closed the pipe or died), ends it without starting anything. Once
told ``go`` its process name (``/proc/PID/comm``: ps, top, pgrep) is ``exabgp``; its command
line stays ``PYTHON -c SCRIPT EXABGP``. It dies with anycastd (PR_SET_PDEATHSIG), like ExaBGP
itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

from anycastd.children import pdeathsig

#: The standby. ``sys.argv`` is ExaBGP's own (``[EXABGP]``) before the import: ExaBGP derives
#: its root, and so its env file ``ROOT/etc/exabgp/exabgp.env``, from ``sys.argv[0]`` at
#: import time.
SCRIPT = """\
import json, os, sys
sys.argv = sys.argv[1:]
from exabgp.application.main import main
line = sys.stdin.readline()
if not line.startswith("go "):
    os._exit(0)
order = json.loads(line[3:])
sys.argv = order["argv"]
os.environ.clear()
os.environ.update(order["env"])
try:  # ps, top and pgrep show it as exabgp, like a cold one
    with open("/proc/self/comm", "w") as comm:
        comm.write("exabgp")
except OSError:
    pass
fd = os.open(os.devnull, os.O_RDONLY)
os.dup2(fd, 0)
os.close(fd)
sys.exit(main())
"""


def find_exabgp(name: str) -> str:
    """``name`` on PATH, else beside this Python (the venv anycastd runs from: systemd's
    PATH does not include it), else ``name`` unchanged (the speaker reports it missing)."""
    if "/" in name or shutil.which(name):
        return name
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def _absolute(exabgp: str) -> str:
    """The executable's absolute path, as a cold start's ExaBGP sees itself (the kernel
    hands the interpreter the script's path as found on PATH)."""
    found = shutil.which(exabgp)
    return os.path.abspath(found) if found is not None else exabgp


def interpreter(exabgp: str) -> str | None:
    """The Python that runs ``exabgp`` if it is a console script of ExaBGP's (its shebang
    names an interpreter and it calls ``exabgp.application.main``); None otherwise."""
    path = shutil.which(exabgp)
    if path is None:
        return None
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return None
    first, _, rest = head.partition(b"\n")
    if not first.startswith(b"#!") or b"exabgp.application.main import main" not in rest:
        return None
    python = first[2:].strip().decode("utf-8", "replace")
    if " " in python or not os.path.basename(python).startswith("python"):
        return None
    return python if os.access(python, os.X_OK) else None


def argv(python: str, exabgp: str) -> list[str]:
    """The standby's command line: ExaBGP by its absolute path, so that a warm ExaBGP finds
    the env file a cold one finds (``ROOT/etc/exabgp/exabgp.env``, ROOT from argv[0])."""
    return [python, "-c", SCRIPT, _absolute(exabgp)]


def go_line(exabgp_argv: Sequence[str], env: Mapping[str, str]) -> bytes:
    """What a standby reads to become ``exabgp_argv`` with ``env``."""
    return b"go " + json.dumps({"argv": list(exabgp_argv), "env": dict(env)}).encode() + b"\n"


# -- the standby started before anycastd's imports -------------------------------------------

#: ``exabgp`` (as the config names it) -> the standby :func:`prewarm` started; one at most
_early: dict[str, subprocess.Popen[bytes]] = {}


def prewarm(config_path: Path) -> None:
    """Start a standby for the ExaBGP the config at ``config_path`` will run, if it runs one
    (``[bgp]``, mode ``managed``, an ``exabgp`` that is ExaBGP's console script), before the
    config is validated. A raw read: whatever this gets wrong only costs a cold start (the
    supervisor claims the standby only for the same ``exabgp``; :func:`discard` ends one
    nobody claimed)."""
    discard()
    try:
        with open(config_path, "rb") as fh:
            bgp = tomllib.load(fh).get("bgp")
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return  # the real load says what is wrong
    if not isinstance(bgp, dict) or bgp.get("mode", "managed") != "managed":
        return
    exabgp = bgp.get("exabgp", "exabgp")
    if not isinstance(exabgp, str) or not exabgp:
        return
    exabgp = find_exabgp(exabgp)  # as the daemon will (engine/world.py)
    python = interpreter(exabgp)
    if python is None:
        return
    try:
        proc = subprocess.Popen(
            argv(python, exabgp),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},  # as exabgp_env() has it
            bufsize=0,  # the go line is written at once; stdout is read by the event loop
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=pdeathsig(signal.SIGTERM),  # noqa: PLW1509 - no threads yet
        )
    except OSError:
        return  # the supervisor starts ExaBGP cold and says why if that fails too
    _early[exabgp] = proc


def claim(exabgp: str) -> subprocess.Popen[bytes] | None:
    """The standby :func:`prewarm` started, if it is for ``exabgp`` and still waits; once."""
    for name, proc in list(_early.items()):
        del _early[name]
        if proc.poll() is None and _absolute(name) == _absolute(exabgp):
            return proc
        end(proc)
    return None


def discard() -> None:
    """End the early standby if nobody claimed it (``anycastd run`` did not get that far)."""
    for name in list(_early):
        end(_early.pop(name))


def end(proc: subprocess.Popen[bytes]) -> None:
    """Kill a standby nobody will use, reap it, close our ends of its pipes."""
    with contextlib.suppress(OSError):
        proc.kill()
    proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            pipe.close()
