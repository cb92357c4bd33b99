"""Network namespaces and veth pairs, for the integration tests and the demo.

Rules (README, "Network safety"): every namespace has a unique name (prefix ``acdt-``),
traffic goes only to addresses that exist inside namespaces the test created, and every
namespace is deleted in teardown, also when the test fails. Processes started with
``Netns.popen`` are tracked by PID and ended by PID; nothing else is ever signalled.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

PREFIX = "acdt-"


def unique_name(tag: str) -> str:
    # netns names become files under /run/netns; interface names are limited to 15 chars,
    # so keep the random part short but unique per run.
    return f"{PREFIX}{tag[:6]}-{os.getpid() % 100000}-{secrets.token_hex(2)}"


def run(argv: Sequence[str], *, check: bool = True, timeout: float = 30.0) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} -> rc {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


class Netns:
    """One network namespace; created on construction, removed by ``close()``."""

    def __init__(self, tag: str) -> None:
        self.name = unique_name(tag)
        run(["ip", "netns", "add", self.name])
        self._procs: list[subprocess.Popen[Any]] = []
        self.exec(["ip", "link", "set", "lo", "up"])

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def exec(self, argv: Sequence[str], *, check: bool = True, timeout: float = 30.0) -> str:
        return run(self.argv(argv), check=check, timeout=timeout)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        proc: subprocess.Popen[Any] = subprocess.Popen(self.argv(argv), **kwargs)
        self._procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self._procs):
            stop_process(proc)
        self._procs.clear()
        run(["ip", "netns", "delete", self.name], check=False)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 5.0) -> None:
    """SIGTERM, wait, then SIGKILL: only this PID, which we started."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def veth(a: Netns, a_addr: str, b: Netns, b_addr: str) -> tuple[str, str]:
    """Join two namespaces with a veth pair; addresses given with their prefix length."""
    suffix = secrets.token_hex(3)
    ifa, ifb = f"va{suffix}", f"vb{suffix}"
    run(["ip", "link", "add", ifa, "netns", a.name, "type", "veth", "peer", "name", ifb,
         "netns", b.name])
    for ns, ifname, addr in ((a, ifa, a_addr), (b, ifb, b_addr)):
        family = "-6" if ":" in addr else "-4"
        nodad = ["nodad"] if ":" in addr else []
        ns.exec(["ip", family, "addr", "add", addr, "dev", ifname, *nodad])
        ns.exec(["ip", "link", "set", ifname, "up"])
    return ifa, ifb


@contextmanager
def netns(tag: str) -> Iterator[Netns]:
    ns = Netns(tag)
    try:
        yield ns
    finally:
        ns.close()


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns a truthy value; raise AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value: {last!r})")
