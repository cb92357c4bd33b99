"""sd_notify against a real AF_UNIX datagram socket, as systemd's NOTIFY_SOCKET would be.

In process: the daemon on fakes with a Notifier aimed at the test's socket; each datagram is
read the moment it arrives (``loop.add_reader``) together with how many reconcile passes had
run, so "READY=1 only after the first pass" is checked, not assumed. As a process: ``anycastd
run --dry-run`` with NOTIFY_SOCKET and WATCHDOG_USEC in its environment, SIGHUP and SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from anycastd.bgp.protocol import PeerState
from anycastd.config import Config, load_config
from anycastd.engine.daemon import Daemon
from anycastd.engine.world import World
from anycastd.observe.metrics import Metrics
from anycastd.observe.systemd import Notifier, status_line
from tests.unit.configs import DAEMON_HEAD
from tests.unit.test_daemon import A, Node, fast, wait_for

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Datagram:
    fields: dict[str, str]
    passes: int  # the controller's passes when the datagram arrived


def parse(raw: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in raw.decode().split("\n") if line)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


def test_status_line_counts_states_and_sessions() -> None:
    states = ["up", "up", "up", "up", "draining"]
    assert status_line(states, peers_up=2, peers_total=2) == (
        "4 up, 1 draining, 0 down; bgp 2/2 established")
    assert status_line(["maintenance", "down"]) == "0 up, 0 draining, 1 down, 1 maintenance"


class NotifiedNode(Node):
    address: str = ""
    on_peer: Callable[[PeerState], None] | None = None

    def world(self, config: Config, on_peer: Callable[[PeerState], None]) -> World:
        self.on_peer = on_peer  # what the real speaker calls on a session change
        return super().world(config, on_peer)

    def start(self) -> Daemon:
        return Daemon(load_config(self.path), self.path, notifier=Notifier(self.address),
                      metrics=Metrics(), world_factory=self.world)


async def test_ready_after_the_first_pass_then_status_reload_and_stop_in_order(
    tmp_path: Path, notify_socket: socket.socket
) -> None:
    node = NotifiedNode(tmp_path, DAEMON_HEAD.format(tmp=tmp_path) + fast(tmp_path, "a", A))
    node.address = str(tmp_path / "notify")
    node.path.write_text(node.text)
    node.flag("a-ok").touch()
    got: list[Datagram] = []

    def passes() -> int:
        d = node.daemon
        return d.controller.passes if d is not None and d.controller is not None else 0

    def on_readable() -> None:
        got.append(Datagram(parse(notify_socket.recv(4096)), passes()))

    def seen(pred: Callable[[dict[str, str]], bool]) -> Callable[[], bool]:
        return lambda: any(pred(d.fields) for d in got)

    loop = asyncio.get_running_loop()
    loop.add_reader(notify_socket.fileno(), on_readable)
    try:
        node.daemon = daemon = node.start()
        task = asyncio.create_task(daemon.run())
        await wait_for(seen(lambda f: "READY" in f))
        up = "1 up, 0 draining, 0 down; bgp 0/1 established"
        first = got[0].fields
        assert first["STATUS"].startswith("starting: waiting up to")
        assert int(first["EXTEND_TIMEOUT_USEC"]) > 0
        ready = next(d for d in got if "READY" in d.fields)
        assert ready.passes >= 1, "READY=1 before the first reconcile pass"
        assert ready.fields == {"READY": "1", "STATUS": up}
        # a peer session comes up: the summary follows
        assert node.on_peer is not None
        node.on_peer(PeerState(address="127.0.0.2", name="", up=True, state="established"))
        await wait_for(seen(lambda f: f.get("STATUS") == up.replace("0/1", "1/1")))
        # the service goes down: the summary follows
        node.flag("a-ok").unlink()
        await wait_for(seen(lambda f: f.get("STATUS", "").startswith("0 up, 0 draining, 1 down")))
        mark = len(got)
        daemon.request_reload()
        await wait_for(lambda: any("READY" in d.fields for d in got[mark:]))
        reload_msgs = [d.fields for d in got[mark:]]
        assert reload_msgs[0]["RELOADING"] == "1"
        mono = int(reload_msgs[0]["MONOTONIC_USEC"])
        assert abs(mono / 1e6 - time.clock_gettime(time.CLOCK_MONOTONIC)) < 5
        mark = len(got)
        daemon.request_stop()
        assert await asyncio.wait_for(task, 5.0) == 0
        await wait_for(lambda: len(got) >= mark + 2)
        stop = [d.fields for d in got[mark:]]
        assert stop[0]["STOPPING"] == "1"
        assert stop[0]["STATUS"].startswith("stopping: shutdown policy")
        # drain_time 300ms + 15 s of writes, + the unwind and last-resort bounds
        assert int(stop[1]["EXTEND_TIMEOUT_USEC"]) >= 15_300_000
    finally:
        loop.remove_reader(notify_socket.fileno())


def test_the_daemon_process_notifies_ready_watchdog_reload_and_stop(
    tmp_path: Path, notify_socket: socket.socket
) -> None:
    from tests.unit.test_cli import SERVICE, write

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        cfg = write(tmp_path / "anycastd.toml", SERVICE.format(port=listener.getsockname()[1]))
        env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify"),
               "WATCHDOG_USEC": "200000", "PYTHONUNBUFFERED": "1"}
        env.pop("WATCHDOG_PID", None)
        proc = subprocess.Popen(
            [sys.executable, "-m", "anycastd", "run", "--dry-run", "-c", str(cfg)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT, env=env,
        )
        notify_socket.setblocking(True)
        notify_socket.settimeout(30)
        got: list[dict[str, str]] = []

        def until(pred: Callable[[dict[str, str]], bool]) -> dict[str, str]:
            while True:
                fields = parse(notify_socket.recv(4096))
                if fields != {"WATCHDOG": "1"}:
                    got.append(fields)
                if pred(fields):
                    return fields

        try:
            ready = until(lambda f: "READY" in f)
            assert ready["STATUS"] == "1 up, 0 draining, 0 down"  # no [bgp]: no BGP part
            until(lambda f: f == {"WATCHDOG": "1"})
            proc.send_signal(signal.SIGHUP)
            reloading = until(lambda f: "RELOADING" in f)
            assert int(reloading["MONOTONIC_USEC"]) > 0
            assert until(lambda f: "READY" in f)["READY"] == "1"
            proc.send_signal(signal.SIGTERM)
            until(lambda f: "STOPPING" in f)
            until(lambda f: "EXTEND_TIMEOUT_USEC" in f)
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    order = [next(iter(f)) for f in got]
    assert order == ["EXTEND_TIMEOUT_USEC", "READY", "RELOADING", "READY", "STOPPING",
                     "EXTEND_TIMEOUT_USEC"], got
