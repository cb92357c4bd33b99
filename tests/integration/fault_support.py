"""Fault injection support (issue 13): the fault registry, a fast sampler of the peer's RIB,
the measurements, and the recorder that feeds docs/reliability.md.

What a fault run measures, from OUTSIDE anycastd (the peer and the edge's ``lo``):

* ``time_to_correct_ms``: from the injection until the peer's RIB and ``lo`` are in the
  expected final state and stay there (``STABLE`` seconds);
* ``updates``: prefix UPDATEs (announce or withdraw) for the service prefixes that bgpd logged
  from the injection until the end (``debug bgp updates in``, microsecond stamps);
* ``stale_routes``: prefixes the peer holds at the end that it should not (must be 0);
* ``announced_without_address_ms``: how long the peer's RIB showed a prefix while its address
  was absent from ``lo`` (RIB samples every few ms over bgpd's vty socket; the address
  timeline from ``ip monitor`` events, so no change is missed). A sample that began within
  ``RIB_LAG`` after the withdraw reached the peer is bgpd's display lag, not an announcement;
* ``anycastd_running``: the daemon's process still runs at the end.

Recording: with ``ANYCASTD_FAULTS_RECORD=FILE`` every fault run merges its row into the JSON
FILE; ``scripts/render-reliability`` renders docs/reliability.md from docs/reliability.json,
and tests/unit/test_reliability_doc.py checks that the committed document is that rendering
and covers exactly the faults registered here (so it cannot drift from what was run).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anycastd.lab.netns import wait_for
from tests.integration.controller_support import Anycastd, Topo, covered, present_intervals

#: bgpd shows a RIB change ~50 ms after the UPDATE (work-queue hold), plus one sample.
RIB_LAG = 0.15
#: the final state must hold this long to count as reached
STABLE = 1.0
RECORD_ENV = "ANYCASTD_FAULTS_RECORD"
#: long faults (minutes of wall time) run only when this is set; the record says which ran
FULL_ENV = "ANYCASTD_FAULTS_FULL"


def full_run() -> bool:
    return os.environ.get(FULL_ENV, "") not in ("", "0")


@dataclass(frozen=True)
class Fault:
    id: str
    title: str
    how: str
    expect: str
    ci: bool = True  # run in CI (False: only with ANYCASTD_FAULTS_FULL=1)


#: Every fault the suite injects; the document lists exactly these (checked by a unit test).
FAULTS: dict[str, Fault] = {f.id: f for f in [
    Fault("anycastd-sigkill-managed", "anycastd SIGKILLed (managed ExaBGP)",
          "`kill -9` the daemon",
          "ExaBGP dies with it (PR_SET_PDEATHSIG): the peer loses the route at once"),
    Fault("anycastd-sigkill-external", "anycastd SIGKILLed (external ExaBGP, relay_hold 3s)",
          "`kill -9` the daemon; the operator's ExaBGP and the relay stay",
          "the relay's dead-man timer withdraws after the hold; ExaBGP keeps running"),
    Fault("restart-external-within-hold", "anycastd SIGKILLed and started again within the "
          "hold (external, relay_hold 8s)", "`kill -9`, start a new anycastd 1 s later",
          "0 UPDATEs: the new anycastd adopts what ExaBGP holds; the timer is cancelled"),
    Fault("restart-planned-external", "planned restart, healthy service (external, "
          "shutdown = keep)", "SIGTERM, then start again (what `systemctl restart` does)",
          "0 UPDATEs, the route present in every sample"),
    Fault("restart-planned-managed", "planned restart, healthy service (managed, "
          "shutdown = keep)", "SIGTERM, then start again",
          "the managed ExaBGP ends with anycastd: the session closes (withdraw) and the route "
          "comes back with the new ExaBGP -- a flap; see the managed-mode restart section"),
    Fault("restart-planned-managed-gr", "planned restart, healthy service (managed, "
          "shutdown = keep, graceful_restart = 5s, the peer a GR helper)",
          "SIGTERM, then start again", "hitless: the peer keeps the route as stale; the "
          "new anycastd re-announces it, and only then sends End-of-RIB"),
    Fault("exabgp-sigkill", "managed ExaBGP SIGKILLed once", "`kill -9` ExaBGP",
          "session lost, ExaBGP restarted by anycastd, the route announced again"),
    Fault("exabgp-sigkill-6x", "managed ExaBGP SIGKILLed 6 times within a minute",
          "`kill -9` each new ExaBGP as soon as it runs, six times",
          "anycastd restarts it with backoff each time and recovers", ci=False),
    Fault("relay-killed-5x", "the relay SIGKILLed 5 times in 5 s (ExaBGP's respawn budget "
          "is 6 in 64 s)", "`kill -9` the relay (ExaBGP's API process), once a second",
          "ExaBGP respawns it, routes stay: 0 UPDATEs"),
    Fault("relay-socket-removed", "the relay socket removed, then the relay killed",
          "`rm <runtime_dir>/exabgp.sock`, 2 s, `kill -9` the relay",
          "anycastd binds the socket again within 1 s; the new relay connects: 0 UPDATEs"),
    Fault("session-flapped-by-peer", "the session reset by the peer",
          "`clear bgp 10.91.0.2` on the peer (a NOTIFICATION)",
          "ExaBGP reconnects, the route announced again"),
    Fault("peer-unreachable", "the peer unreachable for longer than the hold time (9 s)",
          "blackhole routes both ways for 12 s (links stay up)",
          "both sides expire the session; the route announced again once reachable",
          ci=False),
    Fault("address-removed", "the service address removed by hand",
          "`ip addr del` on lo", "withdrawn at once, the address restored, announced again"),
    Fault("foreign-address", "the same address added by hand (an operator's) while the "
          "service is down", "`ip addr add` on lo (no anycastd mark), service down",
          "not announced (the service is down) and the operator's address never removed"),
    Fault("lo-down-up", "the interface taken down for 2 s and up again",
          "`ip link set lo down`, 2 s, `ip link set lo up`",
          "withdrawn at once (link watcher), the checks fail meanwhile; announced again "
          "once they pass (rise)"),
    Fault("peer-restart", "the BGP peer restarted", "stop bgpd, start it again",
          "the route is announced again on the new session"),
    Fault("check-hangs", "an exec check that hangs forever", "the check sleeps forever",
          "killed at its timeout, counted as a failure: never announced; anycastd "
          "unaffected; no process left but the run in progress"),
    Fault("check-spams-stdout", "an exec check that writes megabytes to stdout",
          "`head -c 8M /dev/zero` each run, then exit 0",
          "output bounded, the check passes, the route stays"),
    Fault("check-ignores-sigterm", "an exec check that ignores SIGTERM and hangs",
          "`trap '' TERM; sleep` each run", "killed (SIGKILL) at its timeout: withdrawn"),
    Fault("check-forks", "an exec check that forks a child and exits",
          "the check starts `sleep 300 &` and exits 0", "passes; no child outlives the run"),
    Fault("check-flaps-1hz", "a check flapping at 1 Hz (damping on: penalty 1000, "
          "suppress 2000, half-life 60 s)", "the listener closes and reopens every 0.5 s "
          "(20 s in CI, 5 min in the full run)",
          "damping holds the route down after a few flaps: UPDATEs stop"),
    Fault("api-flood-while-flapping", "the API flooded while health flaps",
          "4 clients GET /status back to back (local) while a service is taken down and up "
          "every 1.5 s, 8 times", "every transition reaches the peer; API latency bounded"),
    Fault("reload-invalid", "an invalid reload", "break the config file, SIGHUP",
          "rejected (logged with file and key), the old config keeps running: 0 UPDATEs"),
    Fault("reload-storm", "a reload every 100 ms", "SIGHUP every 100 ms (5 s in CI, 60 s "
          "in the full run)", "0 UPDATEs, anycastd keeps running"),
    Fault("state-dir-unwritable", "state_dir cannot be written (flags.json cannot be saved)",
          "flags.json replaced by a directory, then a flag set through the API",
          "logged, no crash, the flag applied in memory (withdrawn)"),
    Fault("state-dir-full", "state_dir full (flags.json cannot be written: ENOSPC)",
          "flags.json's temporary file made a symlink to /dev/full, then a flag set through "
          "the API", "logged, no crash, the flag applied in memory (withdrawn)"),
    Fault("clock-step", "the wall clock stepped an hour", "NOT RUN",
          "not injected: stepping the clock would step the shared host's clock "
          "(namespaces do not isolate CLOCK_REALTIME); timing uses CLOCK_MONOTONIC only",
          ci=False),
]}


# -- the peer's RIB, sampled over bgpd's vty socket ---------------------------------------------


class Vty:
    """bgpd's vty socket spoken directly (~1-3 ms a query instead of ~50 ms for vtysh)."""

    def __init__(self, vty_dir: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(5)
        self.sock.connect(str(vty_dir / "bgpd.vty"))

    def command(self, text: str) -> str:
        self.sock.sendall(text.encode() + b"\0")
        data = b""
        while not (len(data) >= 4 and data[-4:-1] == b"\0\0\0"):
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise OSError("vty closed")
            data += chunk
        return data[:-4].decode(errors="replace")

    def close(self) -> None:
        self.sock.close()


def best_prefixes(text: str) -> set[str]:
    try:
        routes = json.loads(text).get("routes", {})
    except ValueError:
        return set()
    out: set[str] = set()
    for prefix, paths in routes.items():
        for path in paths:
            chosen = path.get("bestpath")
            if not path.get("removed") and (
                    chosen is True or (isinstance(chosen, dict) and chosen.get("overall"))):
                out.add(prefix)
    return out


@dataclass
class RibSample:
    t0: float
    t1: float
    prefixes: frozenset[str]


class RibSampler:
    """The peer's best IPv4 prefixes, sampled back to back every few ms (a new vty socket
    whenever bgpd restarts)."""

    def __init__(self, vty_dir: Path, interval: float = 0.003) -> None:
        self.vty_dir, self.interval = vty_dir, interval
        self.samples: list[RibSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> RibSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        vty: Vty | None = None
        while not self._stop.is_set():
            try:
                if vty is None:
                    vty = Vty(self.vty_dir)
                t0 = time.time()
                text = vty.command("show bgp ipv4 unicast json")
                self.samples.append(RibSample(t0, time.time(), frozenset(best_prefixes(text))))
            except OSError:
                if vty is not None:
                    vty.close()
                vty = None
                time.sleep(0.05)  # bgpd restarting
            time.sleep(self.interval)
        if vty is not None:
            vty.close()

    def last(self) -> frozenset[str] | None:
        return self.samples[-1].prefixes if self.samples else None


# -- one fault run ------------------------------------------------------------------------------


@dataclass
class FaultRun:
    """Measure one injection: ``inject()`` marks the moment, ``settle(...)`` waits for the
    expected final state and returns the row (also recorded)."""

    fault: Fault
    topo: Topo
    daemon: Anycastd | None
    prefixes: Sequence[str]
    sampler: RibSampler = field(init=False)
    t_inject: float = 0.0
    addr_at_start: dict[str, bool] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sampler = RibSampler(self.topo.peer.frr.dir)

    def __enter__(self) -> FaultRun:
        self.sampler.__enter__()
        wait_for(lambda: len(self.sampler.samples) > 3, timeout=10, interval=0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.sampler.__exit__(*exc)

    def inject(self) -> None:
        self.addr_at_start = {p: self.topo.has_address(p) for p in self.prefixes}
        self.t_inject = time.time()

    def _state_ok(self, want_rib: Mapping[str, bool], want_addr: Mapping[str, bool]) -> bool:
        rib = self.sampler.last()
        if rib is None:
            return False
        return (all((p in rib) == v for p, v in want_rib.items())
                and all(self.topo.has_address(p) == v for p, v in want_addr.items()))

    def settle(
        self,
        want_rib: Mapping[str, bool],
        want_addr: Mapping[str, bool] | None = None,
        *,
        timeout: float = 30.0,
        daemon_should_run: bool = True,
    ) -> dict[str, Any]:
        want_addr = dict(want_addr or {})
        reached: list[float] = []

        def stable() -> bool:
            if not self._state_ok(want_rib, want_addr):
                reached.clear()
                return False
            if not reached:
                reached.append(time.time())
            return time.time() - reached[0] >= STABLE

        wait_for(stable, timeout=timeout, interval=0.01)
        t_end = time.time()
        # the first moment of the final, stable state, from the samples (not the poll)
        correct_since = reached[0]
        for s in reversed(self.sampler.samples):
            if s.t0 < self.t_inject or not all((p in s.prefixes) == v
                                               for p, v in want_rib.items()):
                break
            correct_since = min(correct_since, s.t0)
        row = {
            "time_to_correct_ms": round(max(0.0, correct_since - self.t_inject) * 1000, 1),
            "updates": len(self.updates()),
            "stale_routes": len([p for p, v in want_rib.items()
                                 if not v and p in (self.sampler.last() or ())]),
            "announced_without_address_ms": round(self.announced_without_address(t_end) * 1000,
                                                  1),
            "anycastd_running": (self.daemon is not None and self.daemon.proc.poll() is None),
            "rib_samples": len([s for s in self.sampler.samples if s.t0 >= self.t_inject]),
            **self.extra,
        }
        if daemon_should_run:
            assert row["anycastd_running"], "anycastd must keep running"
        assert row["stale_routes"] == 0, row
        record(self.fault, row)
        return row

    def updates(self) -> list[Any]:
        return [u for p in self.prefixes for u in self.topo.peer.updates(p, since=self.t_inject)]

    def announced_without_address(self, t_end: float) -> float:
        """Seconds the peer's RIB showed a prefix while its address was absent from lo."""
        total = 0.0
        for prefix in self.prefixes:
            ip = prefix.split("/", maxsplit=1)[0]
            on_lo = present_intervals(self.topo.monitor.of(ip, since=self.t_inject - 0.5),
                                      self.addr_at_start.get(prefix, True),
                                      self.t_inject - 0.5, t_end + 3600)
            withdraws = [u.t for u in self.topo.peer.updates(prefix, since=self.t_inject)
                         if u.withdrawn]
            samples = [s for s in self.sampler.samples if self.t_inject <= s.t0 <= t_end]
            for s, nxt in zip(samples, [*samples[1:], None], strict=True):
                if prefix not in s.prefixes or covered(s.t0, s.t1, on_lo):
                    continue
                if any(w <= s.t0 <= w + RIB_LAG for w in withdraws):
                    continue  # bgpd's display lag after a withdraw it already has
                total += ((nxt.t0 if nxt else s.t1) - s.t0)
        return total


# -- recording ------------------------------------------------------------------------------------


def record(fault: Fault, row: Mapping[str, Any]) -> None:
    """Merge ``row`` into the JSON file named by ANYCASTD_FAULTS_RECORD (if set)."""
    path = os.environ.get(RECORD_ENV)
    if not path:
        return
    record_section("faults", fault.id, {**row, "full_run": full_run()}, Path(path))


def record_section(section: str, key: str, value: Any, path: Path | None = None) -> None:
    if path is None:
        env = os.environ.get(RECORD_ENV)
        if not env:
            return
        path = Path(env)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data.setdefault(section, {})[key] = value
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def fault_run(topo: Topo, daemon: Anycastd | None, fault_id: str,
              prefixes: Sequence[str]) -> Iterator[FaultRun]:
    with FaultRun(FAULTS[fault_id], topo, daemon, prefixes) as run:
        yield run


def pids_of(pattern: str, parent: int | None = None) -> list[int]:
    """PIDs whose command line contains ``pattern`` (and whose parent is ``parent``)."""
    out: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z" or pattern not in cmd:
            continue
        if parent is None or int(fields[1]) == parent:
            out.append(int(entry))
    return out


def wait_value(fn: Callable[[], Any], timeout: float = 20.0) -> Any:
    return wait_for(fn, timeout=timeout, interval=0.01)
