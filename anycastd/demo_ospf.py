"""``anycastd demo --ospf``: the anycast story of ``anycastd demo``, with OSPF instead of BGP.

Topology (``anycastd.lab.ospf.OspfLab``: every namespace created here and removed at the
end; nothing outside them is used)::

    edge1 (anycastd + web, FRR zebra+ospfd) 10.77.1.2 ── 10.77.1.1 ┐
                                                                  router (FRR zebra+ospfd)
    edge2 (anycastd + web, FRR zebra+ospfd) 10.77.2.2 ── 10.77.2.1 ┘   + the client

Each edge runs ``anycastd run`` from this checkout with one service, ``web`` (a TCP check of
a small server that answers with its edge's name, every 200 ms, rise 2, fall 2), published
into OSPF by the edge's own ospfd: edge1 at metric 10, edge2 at metric 20, so the router
prefers edge1 while both are up. The demo stops the web service on edge1, then on edge2,
then starts both again, and narrates what anycastd logs, the router's route and which edge
answers the client.

Exit status: 0 when every step happened as expected, 1 when one did not in time (logs kept,
path printed), 69 when FRR is missing, 77 when not run as root, 130 after Ctrl-C, 143 after
SIGTERM. Every exit path stops the processes the demo started (by PID) and deletes its
namespaces.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from anycastd.lab import ospf as lab
from anycastd.lab.netns import stop_process

PREFIX = "192.0.2.80/32"
ANYCAST = "192.0.2.80"
PORT = 8480
STEP_TIMEOUT = 40.0
PAUSE = 2.0

WEB = (
    "import socket,sys,signal\n"
    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(64)\n"
    "print('listening', flush=True)\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    c.sendall(('hello from ' + sys.argv[2]).encode()); c.close()\n"
)


class _Failed(Exception):
    pass


class _Stopped(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _config(tmp: Path, pathspace: str, metric: int) -> str:
    return (
        "[global]\n"
        f'state_dir = "{tmp / "state"}"\nruntime_dir = "{tmp / "run"}"\n'
        'log_format = "logfmt"\ninterface = "lo"\nreconcile_interval = "2s"\n'
        "[api]\nenabled = false\n"
        f'[ospf]\npathspace = "{pathspace}"\n'
        "[services.web]\n"
        f'prefixes = ["{PREFIX}"]\n'
        'interval = "200ms"\ntimeout = "150ms"\njitter = "0ms"\nrise = 2\nfall = 2\n'
        'drain_time = "1s"\n'
        "[services.web.ospf]\n"
        f"metric = {{ up = {metric}, draining = 100 }}\n"
        "[[services.web.checks]]\n"
        f'name = "web"\ntype = "tcp"\nhost = "127.0.0.1"\nport = {PORT}\n'
    )


class OspfDemo:
    def __init__(self, workdir: Path, anycastd: list[str]) -> None:
        self.workdir = workdir
        self.anycastd = anycastd
        self.lab: lab.OspfLab | None = None
        self.web: dict[int, subprocess.Popen[Any]] = {}
        self.daemons: list[subprocess.Popen[Any]] = []
        self.logs: list[Any] = []

    # ---- what the router and the client see

    def via(self) -> set[str]:
        assert self.lab is not None  # noqa: S101 -- built first
        edges = {self.lab.edge_of(gw) for gw in self.lab.router.kernel_nexthops(PREFIX)}
        return {f"edge{e + 1}" for e in edges if e is not None}

    def client(self) -> str:
        assert self.lab is not None  # noqa: S101 -- built first
        out = self.lab.router.ns.exec(
            [sys.executable, "-c", "import socket,sys\n"
             f"s=socket.create_connection(('{ANYCAST}', {PORT}), timeout=1)\n"
             "sys.stdout.write(s.recv(100).decode())\n"], check=False, timeout=10)
        return out.strip() or "(no answer)"

    def wait(self, what: str, cond: Callable[[], bool]) -> None:
        deadline = time.monotonic() + STEP_TIMEOUT
        while not cond():
            if time.monotonic() > deadline:
                raise _Failed(f"{what}: not within {STEP_TIMEOUT:g} s")
            time.sleep(0.05)

    def say(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    # ---- the edges

    def start_web(self, i: int) -> None:
        assert self.lab is not None  # noqa: S101 -- built first
        proc = self.lab.edge_ns[i - 1].popen(
            [sys.executable, "-c", WEB, str(PORT), f"edge{i}", str(self.workdir)],
            stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None  # noqa: S101 -- PIPE
        if proc.stdout.readline().strip() != "listening":
            raise _Failed(f"the web service of edge{i} did not start")
        self.web[i] = proc

    def stop_web(self, i: int) -> None:
        stop_process(self.web.pop(i))

    def start_anycastd(self, i: int, metric: int) -> None:
        assert self.lab is not None  # noqa: S101 -- built first
        tmp = self.workdir / f"edge{i}"
        tmp.mkdir(parents=True, exist_ok=True)
        conf = tmp / "anycastd.toml"
        conf.write_text(_config(tmp, self.lab.edge_ns[i - 1].name, metric))
        log = open(tmp / "anycastd.log", "w")  # noqa: SIM115 -- closed in cleanup()
        self.logs.append(log)
        self.daemons.append(self.lab.edge_ns[i - 1].popen(
            [*self.anycastd, "run", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT))

    def anycastd_said(self, i: int, *events: str) -> list[str]:
        path = self.workdir / f"edge{i}" / "anycastd.log"
        out = []
        for line in path.read_text(errors="replace").splitlines():
            if any(f"event={e} " in line + " " for e in events):
                out.append(line.split(" logger=", 1)[-1])
        return out

    # ---- the story

    def story(self) -> None:
        self.say("building: a router and two edges, each running FRR zebra + ospfd")
        self.lab = lab.OspfLab(self.workdir / "lab")
        for i, metric in ((1, 10), (2, 20)):
            self.start_web(i)
            self.start_anycastd(i, metric)
        self.wait("both edges published", lambda: self.via() == {"edge1"})
        self.say(f"edge1 (metric 10) and edge2 (metric 20) publish {PREFIX} into OSPF")
        self.say(f"router: {PREFIX} via {', '.join(sorted(self.via()))} (the lower metric)")
        self.say(f"client: connect {ANYCAST}:{PORT} -> '{self.client()}'")
        time.sleep(PAUSE)

        self.say("stopping the web service on edge1")
        self.stop_web(1)
        self.wait("edge1 withdrawn", lambda: self.via() == {"edge2"})
        for line in self.anycastd_said(1, "ospf_withdraw")[-1:]:
            self.say(f"edge1 anycastd: {line}")
        self.say(f"router: {PREFIX} is now via edge2 only")
        self.say(f"client: connect {ANYCAST}:{PORT} -> '{self.client()}'")
        time.sleep(PAUSE)

        self.say("stopping the web service on edge2 as well")
        self.stop_web(2)
        self.wait("edge2 withdrawn", lambda: not self.via())
        self.say(f"{PREFIX} is gone from the router's table")
        time.sleep(PAUSE)

        self.say("starting both web services again")
        self.start_web(1)
        self.start_web(2)
        self.wait("edge1 back", lambda: self.via() == {"edge1"})
        self.say(f"back: {PREFIX} via edge1 (metric 10); edge2 publishes it at metric 20")
        self.say(f"client: connect {ANYCAST}:{PORT} -> '{self.client()}'")
        self.say("done: the prefix followed the service's health, over OSPF")

    def cleanup(self) -> None:
        for proc in [*self.daemons, *self.web.values()]:
            stop_process(proc, timeout=20)
        for log in self.logs:
            log.close()
        if self.lab is not None:
            self.lab.close()


def run_ospf_demo() -> int:
    """Run the demo; the exit status is documented in the module docstring."""
    if os.geteuid() != 0:
        sys.stderr.write("anycastd demo --ospf: needs root (network namespaces)\n")
        return 77
    if not lab.available():
        sys.stderr.write("anycastd demo --ospf: missing FRR (zebra, ospfd, vtysh); "
                         "./scripts/bootstrap installs it\n")
        return 69
    script = Path(sys.executable).parent / "anycastd"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "anycastd"]
    workdir = Path(tempfile.mkdtemp(prefix="anycastd-demo-ospf-"))
    demo = OspfDemo(workdir, argv)

    def stop(signum: int, _frame: FrameType | None) -> None:
        raise _Stopped(signum)

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    print(f"anycastd demo --ospf: {PREFIX} published into OSPF by two edges running "
          f"anycastd.\nwork dir (configs, logs): {workdir}; Ctrl-C stops and cleans up.",
          flush=True)
    status = 0
    try:
        demo.story()
    except _Stopped as exc:
        status = 128 + exc.signum
    except (_Failed, RuntimeError, OSError, AssertionError, subprocess.SubprocessError) as exc:
        status = 1
        sys.stderr.write(f"anycastd demo --ospf: FAILED: {exc}\n")
    finally:
        for s in old:
            signal.signal(s, signal.SIG_IGN)  # the clean-up is not interrupted
        demo.cleanup()
        for s, handler in old.items():
            signal.signal(s, handler)
    if status == 1:
        sys.stderr.write(f"anycastd demo --ospf: logs kept in {workdir}\n")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"cleaned up: processes stopped, namespaces deleted (exit status {status})",
          flush=True)
    return status
