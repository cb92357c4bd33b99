"""Start-up and recovery benchmark (issue 9, item 5): 1,000 /32s in one service, a real FRR
bgpd as the peer, anycastd (managed ExaBGP) against a bare ExaBGP fed one batched command.

Run as root from the repo root:  .venv/bin/python bench/bench_startup.py [--rounds 5]

Setup (tests/integration/controller_support.py): an edge namespace and a router namespace
joined by a veth; FRR 8.4 bgpd in the router namespace (BIRD is not installed on this
machine, so FRR is the peer). Each round runs, in this order and alternating who goes first:

* A: ``anycastd run`` with one service of 1,000 /32s (``start_state = "up"``, one TCP check
  of a listener that is up, ``shutdown = "withdraw"``), managed ExaBGP, from a cold state
  (state and runtime directories removed, no address on ``lo``);
* B: a bare ``exabgp`` with the same settings (anycastd's ExaBGP environment: log level
  WARNING, API acks) whose API process is a tiny helper (``bench_startup.py helper FILE``)
  that writes ONE ``announce attributes next-hop self nlri P1 ... P1000`` at once and then
  only reads.

Times, all on the one wall clock (bgpd's microsecond log stamps, ``time.time()``):

* t_start: just before the process (anycastd or exabgp) is spawned;
* t_est: bgpd logs ``%ADJCHANGE: neighbor ... Up`` (``bgp log-neighbor-changes``);
* t_all: bgpd logs the receipt of the LAST of the 1,000 prefixes (``debug bgp updates in``:
  a line per prefix); completion is confirmed by polling ``pfxRcd`` in
  ``show bgp ipv4 unicast summary json`` until it reads 1,000.

Reported per side: start -> all (t_all - t_start) and Established -> all (t_all - t_est), and
the ratio A/B of the medians. anycastd also reports, from its own log (logfmt ``ts``): spawn
-> ``started``, spawn -> ``controller_started``, spawn -> ``exabgp_started``.

Recovery (A only, once per round, ``--settle`` seconds after the start-up was measured, so
the steady state's warm standby ExaBGP is there): the managed ExaBGP is SIGKILLed (t0 = just
before the kill) -> the first and the last of the prefixes received again by bgpd.

``--compare DIR`` adds, in every round, the anycastd found in DIR (another version, e.g.
``git archive REV anycastd | tar -x -C DIR``) run through PYTHONPATH: before and after under
the same load. ``--prefixes 1`` measures a one-route node.
"""

from __future__ import annotations

import argparse
import compileall
import datetime as dt
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PREFIXES = 1000
PORT = 8300
#: issue 9: anycastd within 1.2x of the bare ExaBGP; ExaBGP SIGKILL -> route back < 300 ms
RATIO_TARGET = 1.2
RECOVERY_TARGET_MS = 300.0


def prefixes(n: int) -> list[str]:
    """``n`` host routes in 198.18.0.0/15 (benchmarking space; they exist only on the edge
    namespace's ``lo`` and in the two daemons)."""
    return [f"198.18.{i // 250}.{i % 250 + 1}/32" for i in range(n)]


# -- the bare ExaBGP's API process (stdlib only) --------------------------------------------


def helper(path: str) -> None:
    """One batched announce at once, then keep reading (ExaBGP writes with blocking writes)."""
    nlri = " ".join(Path(path).read_text().split())
    sys.stdout.write(f"announce attributes next-hop self nlri {nlri}\n")
    sys.stdout.flush()
    for _ in sys.stdin:
        pass


# -- reading bgpd's log -----------------------------------------------------------------------


def _stamp(line: str) -> float | None:
    try:
        return dt.datetime.strptime(line[:26], "%Y/%m/%d %H:%M:%S.%f").timestamp()
    except ValueError:
        return None


def peer_log(log: Path, since: float, wanted: set[str]) -> tuple[float | None, dict[str, float]]:
    """(first ``ADJCHANGE ... Up`` at or after ``since``, prefix -> first receipt after it)."""
    established: float | None = None
    seen: dict[str, float] = {}
    with open(log, errors="replace") as fh:
        for line in fh:
            t = _stamp(line)
            if t is None or t < since:
                continue
            if "ADJCHANGE" in line and " Up" in line:
                if established is None:
                    established = t
                continue
            if " rcvd " not in line or "UPDATE" in line or established is None:
                continue
            words = line.split()
            p = words[words.index("rcvd") + 1]
            if p in wanted:
                seen.setdefault(p, t)
    return established, seen


def pfx_rcd(frr: Any, address: str) -> int:
    data = frr.json("show bgp ipv4 unicast summary json")
    return int(data.get("peers", {}).get(address, {}).get("pfxRcd", 0))


def log_ts(lines: list[Any], name: str) -> float | None:
    got = [ln.t for ln in lines if ln.event == name and ln.t]
    return got[0] if got else None


def main() -> None:
    sys.path.insert(0, str(REPO))  # the repo root: anycastd and tests.* (run as a script)
    from anycastd.bgp.supervisor import exabgp_env
    from anycastd.lab.netns import wait_for
    from bench.common import bench_run, summary
    from tests.integration.controller_support import (
        EDGE_IP,
        EXABGP,
        LOCAL_AS,
        PEER_AS,
        PEER_IP,
        config_text,
        lo_addresses,
        topology,
    )

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--prefixes", type=int, default=PREFIXES)
    parser.add_argument("--compare", type=Path, default=None, metavar="DIR",
                        help="also run, in every round, the anycastd found in DIR (a checkout "
                        "of another version, e.g. `git archive REV anycastd | tar -x -C DIR`) "
                        "through PYTHONPATH")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds after all prefixes arrived before ExaBGP is killed")
    parser.add_argument("--timeline", action="store_true",
                        help="print anycastd's log events (ms after spawn) of each round")
    parser.add_argument("--out", type=Path, default=None, help="also write JSON here")
    args = parser.parse_args()
    wanted = prefixes(args.prefixes)
    wanted_set = set(wanted)
    # An installed anycastd has its bytecode compiled (pip compiles at install; the unit's
    # ProtectSystem=strict would not let it be written later). A source tree under
    # PYTHONDONTWRITEBYTECODE=1 would compile ~60 modules from source at every start (~85 ms).
    for tree in (REPO / "anycastd", REPO / "healthchecks",
                 *([args.compare / "anycastd"] if args.compare is not None else [])):
        compileall.compile_dir(tree, quiet=1)

    with bench_run("startup", args.out) as (work, results), topology(work) as topo:
        frr = topo.peer.frr
        log = topo.peer.log
        listener = topo.listener(PORT)
        plist = work / "prefixes.txt"
        plist.write_text("\n".join(wanted) + "\n")
        quoted = ", ".join(f'"{p}"' for p in wanted)
        service = (
            "[services.bulk]\n"
            f"prefixes = [{quoted}]\n"
            'start_state = "up"\nshutdown = "withdraw"\n'
            'interval = "1s"\nfast_interval = "1s"\ntimeout = "500ms"\njitter = "0ms"\n'
            "rise = 2\nfall = 2\n"
            "[[services.bulk.checks]]\n"
            f'name = "tcp"\ntype = "tcp"\nhost = "127.0.0.1"\nport = {PORT}\n'
        )
        conf = work / "anycastd.toml"
        conf.write_text(config_text(work, []) + service)
        bare_conf = work / "bare-exabgp.conf"
        bare_conf.write_text(
            "process bench {\n"
            f"    run {sys.executable} {Path(__file__).resolve()} helper {plist};\n"
            "    encoder json;\n}\n"
            f"neighbor {PEER_IP} {{\n"
            f"    router-id {EDGE_IP}; local-address {EDGE_IP}; local-as {LOCAL_AS};\n"
            f"    peer-as {PEER_AS}; hold-time 9;\n"
            "    family { ipv4 unicast; }\n"
            "    api { processes [ bench ]; }\n}\n"
        )
        bare_env = exabgp_env()

        def all_logged(since: float) -> tuple[float | None, dict[str, float]]:
            def done() -> tuple[float | None, dict[str, float]] | None:
                got = peer_log(log, since, wanted_set)
                return got if len(got[1]) >= args.prefixes else None

            result: tuple[float | None, dict[str, float]] = wait_for(done, timeout=10)
            return result

        def wait_all(t_start: float, what: str) -> tuple[float, float]:
            wait_for(lambda: pfx_rcd(frr, EDGE_IP) >= args.prefixes, timeout=60, interval=0.05)
            est, seen = all_logged(t_start)
            if est is None:
                raise AssertionError(f"{what}: no Established logged")
            return est, max(seen.values())

        def session_gone() -> None:
            wait_for(lambda: not frr.established(EDGE_IP) and pfx_rcd(frr, EDGE_IP) == 0,
                     timeout=30, interval=0.05)
            time.sleep(1.0)  # let bgpd settle (its connect timer is 1 s)

        def run_anycastd(rows: dict[str, list[float]], pythonpath: str | None = None) -> None:
            for d in ("state", "run"):
                shutil.rmtree(work / d, ignore_errors=True)
            # a cold start: none of the addresses on lo (the previous stop removed them)
            left = lo_addresses(topo.edge) & {p.split("/")[0] for p in wanted}
            assert not left, f"{len(left)} addresses left on lo"
            t_start = time.time()
            saved = os.environ.get("PYTHONPATH")
            if pythonpath is not None:  # --compare: another checkout's anycastd (and relay)
                os.environ["PYTHONPATH"] = pythonpath
            try:
                daemon = topo.anycastd(conf)
            finally:
                if pythonpath is not None:
                    if saved is None:
                        del os.environ["PYTHONPATH"]
                    else:
                        os.environ["PYTHONPATH"] = saved
            est, t_all = wait_all(t_start, "anycastd")
            lines = daemon.lines()
            if args.timeline:
                for ln in lines:
                    if ln.t and ln.event not in ("loopback", "bgp_announce"):
                        print(f"    {(ln.t - t_start) * 1000:7.1f} ms  {ln.event}")
                print(f"    {(est - t_start) * 1000:7.1f} ms  (bgpd) Established")
                print(f"    {(t_all - t_start) * 1000:7.1f} ms  (bgpd) all received")
            rows["start_all"].append(t_all - t_start)
            rows["est_all"].append(t_all - est)
            t_started = log_ts(lines, "started")
            if t_started is not None:  # what follows the imports (less load noise)
                rows["started_all"].append(t_all - t_started)
            for key, name in (("to_started", "started"),
                              ("to_controller", "controller_started"),
                              ("to_exabgp_started", "exabgp_started")):
                t = log_ts(lines, name)
                if t is not None:
                    rows[key].append(t - t_start)
            who = "compare " if pythonpath else "anycastd"
            print(f"  {who}  start->all {rows['start_all'][-1] * 1000:7.1f} ms  "
                  f"est->all {rows['est_all'][-1] * 1000:7.1f} ms  "
                  f"(started {rows['to_started'][-1] * 1000:.0f}, controller "
                  f"{rows['to_controller'][-1] * 1000:.0f}, exabgp "
                  f"{rows['to_exabgp_started'][-1] * 1000:.0f} ms)", flush=True)
            # recovery: the managed ExaBGP SIGKILLed -> the routes back at the peer
            pid = exabgp_pid(daemon.pid)
            time.sleep(args.settle)  # steady state: ExaBGP's warm standby is prepared by now
            t0 = time.time()
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: pfx_rcd(frr, EDGE_IP) >= args.prefixes, timeout=60, interval=0.02)
            est2, seen = all_logged(t0)
            if args.timeline:
                for ln in daemon.lines():
                    if ln.t >= t0 - 0.01 and ln.event not in ("loopback", "bgp_announce"):
                        print(f"    {(ln.t - t0) * 1000:7.1f} ms  {ln.event}")
                if est2 is not None:
                    print(f"    {(est2 - t0) * 1000:7.1f} ms  (bgpd) Established")
                print(f"    {(min(seen.values()) - t0) * 1000:7.1f} ms  (bgpd) first received")
            rows["kill_first"].append(min(seen.values()) - t0)
            rows["kill_all"].append(max(seen.values()) - t0)
            print(f"  ExaBGP SIGKILL -> first back {rows['kill_first'][-1] * 1000:7.1f} ms, "
                  f"all back {rows['kill_all'][-1] * 1000:7.1f} ms", flush=True)
            rc = daemon.terminate()
            daemon.stop()
            topo._things.remove(daemon)
            assert rc == 0, f"anycastd exited {rc}"
            session_gone()

        def run_bare(rows: dict[str, list[float]]) -> None:
            out = open(work / "bare-exabgp.log", "ab")  # noqa: SIM115 - closed below
            t_start = time.time()
            proc = topo.edge.popen([EXABGP, str(bare_conf)], env=bare_env, stdout=out,
                                   stderr=subprocess.STDOUT)
            try:
                est, t_all = wait_all(t_start, "bare exabgp")
            finally:
                proc.terminate()
                proc.wait(timeout=20)
                out.close()
            rows["start_all"].append(t_all - t_start)
            rows["est_all"].append(t_all - est)
            print(f"  bare      start->all {rows['start_all'][-1] * 1000:7.1f} ms  "
                  f"est->all {rows['est_all'][-1] * 1000:7.1f} ms", flush=True)
            session_gone()

        keys = ("start_all", "est_all", "started_all", "to_started", "to_controller",
                "to_exabgp_started", "kill_first", "kill_all")
        a: dict[str, list[float]] = {k: [] for k in keys}
        b: dict[str, list[float]] = {"start_all": [], "est_all": []}
        c: dict[str, list[float]] = {k: [] for k in keys}
        runs: list[Any] = [lambda: run_anycastd(a), lambda: run_bare(b)]
        if args.compare is not None:
            runs.append(lambda: run_anycastd(c, str(args.compare)))
        for i in range(args.rounds):
            print(f"round {i + 1}/{args.rounds}", flush=True)
            shift = i % len(runs)  # who goes first rotates
            for run in runs[shift:] + runs[:shift]:
                run()
        listener.kill()
        listener.wait()

        print(f"machine: {results['machine']}; load before {results['loadavg_before']}")
        results["prefixes"] = args.prefixes
        results["rounds"] = args.rounds
        results["anycastd"] = {k: summary(f"anycastd {k}", v) for k, v in a.items() if v}
        results["bare_exabgp"] = {k: summary(f"bare ExaBGP {k}", v) for k, v in b.items()}
        ratios = {}
        for k in ("start_all", "est_all"):
            ratio = statistics.median(a[k]) / statistics.median(b[k])
            ratios[k] = ratio
            print(f"ratio of medians {k}: {ratio:.2f}x  (target <= {RATIO_TARGET}x: "
                  f"{'ok' if ratio <= RATIO_TARGET else 'MISSED'})")
        results["ratio_of_medians"] = ratios
        summary("ExaBGP SIGKILL -> first prefix back", a["kill_first"], RECOVERY_TARGET_MS)
        summary("ExaBGP SIGKILL -> all prefixes back", a["kill_all"], RECOVERY_TARGET_MS)
        results["raw_ms"] = {
            "anycastd": {k: [round(x * 1000, 1) for x in v] for k, v in a.items()},
            "bare_exabgp": {k: [round(x * 1000, 1) for x in v] for k, v in b.items()},
        }
        if args.compare is not None:
            print(f"--compare {args.compare}:")
            results["compare"] = {
                "pythonpath": str(args.compare),
                "summary": {k: summary(f"compare {k}", v) for k, v in c.items() if v},
                "ratio_of_medians": {
                    k: statistics.median(c[k]) / statistics.median(b[k])
                    for k in ("start_all", "est_all")},
                "raw_ms": {k: [round(x * 1000, 1) for x in v] for k, v in c.items()},
            }
            for k, ratio in results["compare"]["ratio_of_medians"].items():
                print(f"compare: ratio of medians {k}: {ratio:.2f}x")
        results["loadavg_after"] = os.getloadavg()


def exabgp_pid(anycastd_pid: int) -> int:
    """The managed ExaBGP: the child of anycastd whose command line runs exabgp (a cold
    start) or whose process name is exabgp (a warm standby told ``go``; a waiting standby
    has the interpreter's name)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        comm = stat.split("(", 1)[1].rsplit(")", 1)[0]
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == anycastd_pid and (comm == "exabgp"
                                     or any(b"exabgp" in part for part in cmdline[:2])):
            return int(entry)
    raise AssertionError("no managed ExaBGP found")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "helper":
        helper(sys.argv[2])
    else:
        main()
