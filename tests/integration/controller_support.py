"""Controller integration support: a real ``anycastd run`` in an "edge" namespace, a real
FRR bgpd in a "router" namespace, and recorders that see the world from outside anycastd.

Topology (all made here, unique names, removed in ``close()`` even after a failure)::

    edge ns: anycastd run -c CONF (+ its managed ExaBGP), TCP listeners on 127.0.0.1
             10.91.0.2/24 ── veth ── 10.91.0.1/24  router ns: bgpd AS 65000

What the tests look at, none of it anycastd's own view:

* the PEER: ``vtysh ... json`` (its RIB), and bgpd's own log with ``debug bgp updates in``
  and microsecond timestamps (when each UPDATE arrived, with its attributes);
* the edge's ``lo``: ``ip -ts monitor address`` in the edge namespace (every add/delete with a
  microsecond timestamp, event driven, so nothing between samples is missed) and
  ``ip -o addr show dev lo``;
* anycastd's log (logfmt), only as a second witness of the order it acted in.

Timestamps: bgpd, ``ip monitor`` and this process all read the same wall clock, and the
machines run in UTC, so the naive local-time stamps of the first two compare with
``time.time()``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anycastd.lab.frr import FrrPeer
from anycastd.lab.netns import Netns, stop_process, veth, wait_for

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
ANYCASTD = str(VENV_BIN / "anycastd")
EXABGP = str(VENV_BIN / "exabgp")
RELAY = str(VENV_BIN / "anycastd-exabgp-relay")

EDGE_IP, PEER_IP = "10.91.0.2", "10.91.0.1"
LOCAL_AS, PEER_AS = 65001, 65000
API_PORT = 9180

#: a TCP listener (the service under check); runs in the edge namespace, stopped by PID
LISTENER = (
    "import socket,sys,signal\n"
    "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(64)\n"
    "print('listening', flush=True)\n"
    "while True:\n"
    "    c, _ = s.accept(); c.close()\n"
)


def wall(stamp: str, fmt: str) -> float:
    return dt.datetime.strptime(stamp, fmt).timestamp()


# -- the peer -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerUpdate:
    """One prefix in one UPDATE, as bgpd logged its arrival."""

    t: float
    prefix: str
    withdrawn: bool
    attrs: str = ""  # bgpd's "rcvd UPDATE w/ attr: ..." text for an announcement

    @property
    def graceful_shutdown(self) -> bool:
        return "graceful-shutdown" in self.attrs or "65535:0" in self.attrs


_STAMP = re.compile(r"^(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\.\d{6})")


class Peer:
    """FrrPeer plus bgpd's own log of every UPDATE received (microsecond stamps)."""

    def __init__(self, ns: Netns, workdir: Path) -> None:
        self.frr = FrrPeer(ns, workdir, asn=PEER_AS, router_id=PEER_IP,
                           neighbors=[(EDGE_IP, LOCAL_AS)])
        self.log = workdir / "updates.log"
        out = subprocess.run(
            ["vtysh", "--vty_socket", str(workdir), "-c", "configure terminal",
             "-c", "log timestamp precision 6", "-c", f"log file {self.log} debugging",
             "-c", f"router bgp {PEER_AS}", "-c", "bgp log-neighbor-changes",
             "-c", "exit", "-c", "exit", "-c", "debug bgp updates in"],
            capture_output=True, text=True, check=False, timeout=10,
        )
        assert out.returncode == 0, out.stderr

    def stop(self) -> None:
        self.frr.stop()

    def updates(self, prefix: str | None = None, since: float = 0.0) -> list[PeerUpdate]:
        """Every UPDATE (per prefix) bgpd logged, oldest first."""
        out: list[PeerUpdate] = []
        attrs = ""
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            m = _STAMP.match(line)
            if m is None or " rcvd " not in line:
                continue
            t = wall(m.group(1), "%Y/%m/%d %H:%M:%S.%f")
            if "rcvd UPDATE w/ attr:" in line:
                attrs = line.split("rcvd UPDATE w/ attr:", 1)[1].strip()
                continue
            if "rcvd UPDATE about" in line and "withdrawn" in line:
                words = line.split()
                p = words[words.index("about") + 1]
                out.append(PeerUpdate(t, p, True))
                continue
            if "UPDATE" in line or "flapped quicker" in line:  # the latter: a note, then
                continue  # the usual "rcvd PREFIX" line for the same UPDATE
            words = line.split()
            p = words[words.index("rcvd") + 1]
            if "/" in p:
                out.append(PeerUpdate(t, p, False, attrs))
        return [u for u in out if (prefix is None or u.prefix == prefix) and u.t >= since]

    def has(self, prefix: str) -> bool:
        return prefix in self.frr.rib()

    def established(self) -> bool:
        return self.frr.established(EDGE_IP)

    def last_update(self, prefix: str) -> Any:
        """FRR's per-path ``lastUpdate.epoch`` (changes whenever the path is re-received)."""
        return self.frr.detail(prefix).get("lastUpdate", {}).get("epoch")


# -- the edge's lo, from outside ------------------------------------------------------------


@dataclass(frozen=True)
class AddrEvent:
    t: float
    ip: str
    added: bool


class AddrMonitor:
    """``ip -ts monitor address`` in the edge namespace: every add/delete on lo, timed."""

    def __init__(self, ns: Netns) -> None:
        self.events: list[AddrEvent] = []
        self.raw: list[str] = []
        self._lock = threading.Lock()
        self.proc = ns.popen(["ip", "-ts", "-o", "monitor", "address", "dev", "lo"],
                             stdout=subprocess.PIPE, text=True, bufsize=1)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        time.sleep(0.2)  # the monitor subscribes before the test acts

    def _read(self) -> None:
        assert self.proc.stdout is not None
        # a filtered-out message still prints its stamp: the last "[stamp]" is the event's
        pat = re.compile(r"^.*\[([^\]]+)\]\s*(Deleted )?\d+: lo\s+inet6? (\S+)/")
        for line in self.proc.stdout:
            self.raw.append(line)
            m = pat.match(line)
            if m is None:
                continue
            ev = AddrEvent(wall(m.group(1), "%Y-%m-%dT%H:%M:%S.%f"), m.group(3), not m.group(2))
            with self._lock:
                self.events.append(ev)

    def of(self, ip: str, since: float = 0.0) -> list[AddrEvent]:
        with self._lock:
            return [e for e in self.events if e.ip == ip and e.t >= since]

    def stop(self) -> None:
        stop_process(self.proc)


def lo_addresses(ns: Netns) -> set[str]:
    out = ns.exec(["ip", "-o", "addr", "show", "dev", "lo"])
    return {line.split()[3].split("/")[0] for line in out.splitlines() if len(line.split()) > 3}


@dataclass
class Sample:
    t0: float
    t1: float
    value: bool


class Sampler:
    """Background thread: the peer's RIB (vtysh) and the edge's lo (``ip -o addr``),
    sampled back to back for the whole timeline."""

    def __init__(self, peer: Peer, ns: Netns, prefix: str) -> None:
        self.peer, self.ns, self.prefix = peer, ns, prefix
        self.ip = prefix.split("/", maxsplit=1)[0]
        self.rib: list[Sample] = []
        self.addr: list[Sample] = []
        self.gshut: list[Sample] = []  # RIB samples: graceful-shutdown community on the path
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._rib_loop, daemon=True),
                         threading.Thread(target=self._addr_loop, daemon=True)]

    def __enter__(self) -> Sampler:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)

    def _rib_loop(self) -> None:
        while not self._stop.is_set():
            t0 = time.time()
            data = self.peer.frr.json(f"show bgp ipv4 unicast {self.prefix} json")
            t1 = time.time()
            best = [p for p in data.get("paths", []) if not p.get("removed")
                    and isinstance(p.get("bestpath"), dict) and p["bestpath"].get("overall")]
            self.rib.append(Sample(t0, t1, bool(best)))
            if best:
                community = str(best[0].get("community", {}).get("string", ""))
                self.gshut.append(Sample(t0, t1, "graceful-shutdown" in community))

    def _addr_loop(self) -> None:
        while not self._stop.is_set():
            t0 = time.time()
            present = self.ip in lo_addresses(self.ns)
            self.addr.append(Sample(t0, time.time(), present))
            time.sleep(0.002)


# -- anycastd -------------------------------------------------------------------------------


@dataclass
class Service:
    name: str
    prefix: str
    port: int
    shutdown: str = "drain-then-withdraw"
    drain_time: str = "1s"
    extra: str = ""  # more TOML lines for the service table
    #: the check's TOML lines (default: a tcp check of 127.0.0.1:port, named "tcp")
    check: str | None = None
    #: the service's timing lines; "" = none at all (anycastd's defaults)
    timing: str = (
        'interval = "200ms"\nfast_interval = "200ms"\ntimeout = "150ms"\njitter = "0ms"\n'
        "rise = 2\nfall = 2\n"
    )

    def toml(self, tmp: Path) -> str:
        check = self.check or (
            f'name = "tcp"\ntype = "tcp"\nhost = "127.0.0.1"\nport = {self.port}\n'
        )
        return (
            f"[services.{self.name}]\n"
            f'prefixes = ["{self.prefix}"]\n'
            f"{self.timing}"
            f'drain_time = "{self.drain_time}"\nshutdown = "{self.shutdown}"\n'
            f'maintenance_file = "{tmp / ("maint-" + self.name)}"\n'
            f"{self.extra}"
            f"[[services.{self.name}.checks]]\n"
            f"{check}"
        )


def config_text(
    tmp: Path,
    services: Sequence[Service],
    *,
    mode: str = "managed",
    reconcile_interval: str = "1s",
) -> str:
    head = (
        "[global]\n"
        'node = "edge-test"\n'
        f'state_dir = "{tmp / "state"}"\n'
        f'runtime_dir = "{tmp / "run"}"\n'
        'log_format = "logfmt"\nlog_level = "info"\ninterface = "lo"\n'
        f'reconcile_interval = "{reconcile_interval}"\n'
        "[api]\nenabled = true\n"
        f'listen = "127.0.0.1:{API_PORT}"\n'
        "[bgp]\n"
        f'mode = "{mode}"\nrouter_id = "{EDGE_IP}"\nlocal_as = {LOCAL_AS}\n'
        f'exabgp = "{EXABGP}"\n'
        "[[bgp.neighbors]]\n"
        f'name = "r1"\naddress = "{PEER_IP}"\npeer_as = {PEER_AS}\n'
        f'local_address = "{EDGE_IP}"\nhold_time = "9s"\n'
    )
    return head + "".join(s.toml(tmp) for s in services)


_LOGFMT = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def parse_logfmt(line: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, raw in _LOGFMT.findall(line):
        out[key] = json.loads(raw) if raw.startswith('"') else raw
    return out


@dataclass
class LogLine:
    index: int
    t: float
    fields: dict[str, str]

    @property
    def event(self) -> str:
        return self.fields.get("event", "")


class Anycastd:
    """``anycastd run -c CONF`` in the edge namespace; its logfmt log in a file."""

    def __init__(self, ns: Netns, conf: Path, log: Path) -> None:
        self.ns, self.conf, self.log_path = ns, conf, log
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self._start_offset = log.stat().st_size
        env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}"}
        self.proc = ns.popen([ANYCASTD, "run", "-c", str(conf)], stdout=self._log,
                             stderr=subprocess.STDOUT, env=env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def lines(self) -> list[LogLine]:
        """This run's log lines, parsed (index = order written)."""
        with open(self.log_path, "rb") as fh:
            fh.seek(self._start_offset)
            text = fh.read().decode("utf-8", "replace")
        out: list[LogLine] = []
        for i, raw in enumerate(text.splitlines()):
            fields = parse_logfmt(raw)
            ts = fields.get("ts", "")
            try:
                t = dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                    tzinfo=dt.UTC).timestamp()
            except ValueError:
                t = 0.0
            out.append(LogLine(i, t, fields))
        return out

    def events(self, name: str, **match: str) -> list[LogLine]:
        return [ln for ln in self.lines() if ln.event == name
                and all(ln.fields.get(k) == v for k, v in match.items())]

    def wait_event(self, name: str, timeout: float = 20.0, **match: str) -> LogLine:
        def found() -> LogLine | None:
            self._check_alive()
            got = self.events(name, **match)
            return got[-1] if got else None

        line: LogLine = wait_for(found, timeout=timeout, interval=0.02)
        return line

    def _check_alive(self) -> None:
        if self.proc.poll() is not None and self.proc.returncode != 0:
            raise AssertionError(f"anycastd exited {self.proc.returncode}:\n{self.tail()}")

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for the exit code."""
        self.signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        stop_process(self.proc, timeout=20)
        self._log.close()

    def api(self, path: str) -> Any:
        out = self.ns.exec([sys.executable, "-c",
                            "import sys,urllib.request;sys.stdout.write(urllib.request.urlopen("
                            f"'http://127.0.0.1:{API_PORT}{path}',timeout=5).read().decode())"],
                           check=False)
        return json.loads(out) if out else None


# -- the whole topology ---------------------------------------------------------------------


@dataclass
class Topo:
    edge: Netns
    router: Netns
    peer: Peer
    tmp: Path
    monitor: AddrMonitor
    _things: list[Any] = field(default_factory=list)

    def listener(self, port: int) -> subprocess.Popen[Any]:
        proc = self.edge.popen([sys.executable, "-c", LISTENER, str(port)],
                               stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "listening"
        return proc

    def write_config(self, services: Sequence[Service], **kwargs: Any) -> Path:
        conf = self.tmp / "anycastd.toml"
        conf.write_text(config_text(self.tmp, services, **kwargs))
        return conf

    def anycastd(self, conf: Path) -> Anycastd:
        daemon = Anycastd(self.edge, conf, self.tmp / "anycastd.log")
        self._things.append(daemon)
        return daemon

    def external_exabgp(self) -> subprocess.Popen[bytes]:
        """An operator's ExaBGP with anycastd's relay as its API process (external mode)."""
        run = self.tmp / "run"
        run.mkdir(parents=True, exist_ok=True)
        conf = self.tmp / "external-exabgp.conf"
        conf.write_text(
            "process anycastd {\n"
            f"    run {RELAY} {run / 'exabgp.sock'};\n"
            "    encoder json;\n}\n"
            f"neighbor {PEER_IP} {{\n"
            f"    router-id {EDGE_IP}; local-address {EDGE_IP}; local-as {LOCAL_AS};\n"
            f"    peer-as {PEER_AS}; hold-time 9;\n"
            "    family { ipv4 unicast; }\n"
            "    api { processes [ anycastd ]; neighbor-changes; }\n}\n"
        )
        env = {**os.environ, "exabgp_daemon_user": "root", "exabgp_log_statistics": "false",
               "exabgp_api_cli": "false"}
        log = open(self.tmp / "external-exabgp.log", "wb")  # noqa: SIM115 - lives with proc
        self._things.append(log)
        return self.edge.popen([EXABGP, str(conf)], env=env, stdout=log,
                               stderr=subprocess.STDOUT)

    def has_address(self, prefix: str) -> bool:
        return prefix.split("/", maxsplit=1)[0] in lo_addresses(self.edge)


@contextlib.contextmanager
def topology(tmp: Path) -> Iterator[Topo]:
    made: list[Netns] = []
    peer: Peer | None = None
    monitor: AddrMonitor | None = None
    topo: Topo | None = None
    try:
        edge, router = Netns("cedge"), Netns("crtr")
        made += [edge, router]
        veth(edge, f"{EDGE_IP}/24", router, f"{PEER_IP}/24")
        peer = Peer(router, tmp / "frr")
        monitor = AddrMonitor(edge)
        topo = Topo(edge, router, peer, tmp, monitor)
        yield topo
    finally:
        if topo is not None:
            for thing in reversed(topo._things):
                with contextlib.suppress(Exception):
                    (thing.stop if hasattr(thing, "stop") else thing.close)()
        if monitor is not None:
            monitor.stop()
        if peer is not None:
            peer.stop()
        for ns in made:
            ns.close()  # every process started in it, by PID; then the namespace


# -- timeline checks --------------------------------------------------------------------------


def present_intervals(events: Sequence[AddrEvent], start_present: bool,
                      start: float, end: float) -> list[tuple[float, float]]:
    """Intervals during which an address was on lo, from monitor events."""
    out: list[tuple[float, float]] = []
    since = start if start_present else None
    for e in sorted(events, key=lambda e: e.t):
        if e.added and since is None:
            since = e.t
        elif not e.added and since is not None:
            out.append((since, e.t))
            since = None
    if since is not None:
        out.append((since, end))
    return out


def covered(t0: float, t1: float, intervals: Sequence[tuple[float, float]]) -> bool:
    """Was the address present at some moment of [t0, t1]?"""
    return any(a <= t1 and b >= t0 for a, b in intervals)


def shell(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def fields_of(lines: Sequence[LogLine], name: str, **match: str) -> list[Mapping[str, str]]:
    return [ln.fields for ln in lines if ln.event == name
            and all(ln.fields.get(k) == v for k, v in match.items())]


def first(lines: Sequence[LogLine], pred: Callable[[LogLine], bool]) -> LogLine | None:
    return next((ln for ln in lines if pred(ln)), None)
