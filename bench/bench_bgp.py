"""BGP benchmarks: anycastd's overhead over ExaBGP fed directly, against a real FRR peer.

Run as root from the repo root:  .venv/bin/python bench/bench_bgp.py [--samples 200]

1. Latency. A: ``set_routes()`` called (a "health verdict") -> the peer receives the UPDATE
   (FRR's ``debug bgp updates in`` log, microsecond timestamps, same wall clock).
   B: the same announce written straight to ExaBGP's API by a bare helper -> received.
   The peer's own processing is identical in both and cancels in A - B.
2. Bulk start. 10,000 /32s announced once the session is up: A through ``set_routes()``,
   B the same commands (same ``announce attributes ... nlri`` batching) fed by the helper;
   both until the last ``done`` and until the peer holds all 10,000.

The helper (``bench_bgp.py helper DIR``) is what ExaBGP runs as its API process in B: it reads
requests from DIR/cmd (FIFO), writes each command to ExaBGP, waits for ``done``, and reports
timestamps on DIR/result.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


# -- the direct helper (runs under ExaBGP; stdlib only) -----------------------------------


def helper(directory: str) -> None:
    acks: queue.Queue[str] = queue.Queue()

    def read_stdin() -> None:
        for raw in sys.stdin:
            line = raw.strip()
            if line in ("done", "error"):
                acks.put(line)
        os._exit(0)

    threading.Thread(target=read_stdin, daemon=True).start()
    base = Path(directory)
    while True:
        with open(base / "cmd") as requests, open(base / "result", "w") as results:
            for raw in requests:
                request = raw.strip()
                if request.startswith("BATCH "):
                    commands = Path(request[6:]).read_text().splitlines()
                else:
                    commands = [request]
                t_first = time.time()
                errors = 0
                for command in commands:
                    sys.stdout.write(command + "\n")
                    sys.stdout.flush()
                    errors += acks.get() == "error"
                results.write(json.dumps({"t_write": t_first, "t_done": time.time(),
                                          "errors": errors}) + "\n")
                results.flush()


# -- the benchmark ------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def frr_received(log: Path, offset: int) -> dict[str, float]:
    """prefix -> wall time bgpd logged its receipt (first time seen after ``offset``)."""
    seen: dict[str, float] = {}
    with open(log, errors="replace") as fh:
        fh.seek(offset)
        for line in fh:
            if " rcvd " not in line or "UPDATE" in line:
                continue
            try:
                stamp = dt.datetime.strptime(line[:26], "%Y/%m/%d %H:%M:%S.%f")
            except ValueError:
                continue
            words = line.split()
            prefix = words[words.index("rcvd") + 1]
            seen.setdefault(prefix, stamp.timestamp())
    return seen


def adj_down(log: Path, offset: int, peer: str) -> float | None:
    """Wall time bgpd logged the session with ``peer`` going down (after ``offset``)."""
    with open(log, errors="replace") as fh:
        fh.seek(offset)
        for line in fh:
            if "ADJCHANGE" in line and f"neighbor {peer}" in line and " Down " in line:
                return dt.datetime.strptime(line[:26], "%Y/%m/%d %H:%M:%S.%f").timestamp()
    return None


def pfx_received(frr: Any, address: str) -> int:
    data = frr.json("show bgp ipv4 unicast summary json")
    return int(data.get("peers", {}).get(address, {}).get("pfxRcd", 0))


def summary(name: str, values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    row = {"p50_ms": statistics.median(ms), "p90_ms": percentile(ms, 90),
           "p99_ms": percentile(ms, 99), "max_ms": max(ms), "n": len(ms)}
    print(f"{name:44s} p50 {row['p50_ms']:7.2f}  p90 {row['p90_ms']:7.2f}  "
          f"p99 {row['p99_ms']:7.2f}  max {row['max_ms']:7.2f} ms  (n={len(ms)})")
    return row


def main() -> None:
    sys.path.insert(0, str(REPO))  # the repo root: anycastd and tests.* (run as a script)
    from anycastd.bgp.commands import diff_rib
    from anycastd.core.rib import resolve
    from anycastd.lab.frr import FrrPeer
    from anycastd.lab.netns import Netns, veth, wait_for
    from anycastd.model import BgpSettings, Neighbor, Route
    from tests.integration.bgp_support import EXABGP, SpeakerDriver

    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--bulk", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3, help="bulk rounds per path")
    parser.add_argument("--kill-rounds", type=int, default=5, help="fail-closed rounds")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "bgp.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="anycastd-bench-bgp-"))
    edge, r1 = Netns("bedge"), Netns("brtr")
    results: dict[str, Any] = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()} "
                   f"{os.cpu_count()} cpus, Linux {platform.release()}, "
                   f"Python {platform.python_version()}",
        "command": " ".join(["python", *sys.argv]),
        "loadavg_before": os.getloadavg(),
    }
    frr = driver = None
    ok = False
    try:
        # A = anycastd (managed ExaBGP) from 10.0.0.2; B = bare ExaBGP from 10.0.0.3.
        # Both sessions run at once and samples alternate, so both see the same machine.
        ifa, _ = veth(edge, "10.0.0.2/24", r1, "10.0.0.1/24")
        edge.exec(["ip", "addr", "add", "10.0.0.3/24", "dev", ifa])
        frr = FrrPeer(r1, work / "frr", asn=65000, router_id="10.0.0.1",
                      neighbors=[("10.0.0.2", 65001), ("10.0.0.3", 65001)])
        log = work / "frr" / "updates.log"
        subprocess.run(["vtysh", "--vty_socket", str(work / "frr"), "-c", "configure terminal",
                        "-c", "log timestamp precision 6", "-c", f"log file {log} debugging",
                        "-c", "router bgp 65000", "-c", "bgp log-neighbor-changes",
                        "-c", "exit", "-c", "exit", "-c", "debug bgp updates in"], check=True,
                       capture_output=True)
        settings = BgpSettings(router_id="10.0.0.2", local_as=65001, exabgp=EXABGP,
                               neighbors=(Neighbor("10.0.0.1", 65000, "10.0.0.2", "r1"),))
        driver = SpeakerDriver(edge, settings, work / "run")

        hdir = work / "direct"
        hdir.mkdir()
        os.mkfifo(hdir / "cmd")
        os.mkfifo(hdir / "result")
        conf = work / "direct.conf"
        conf.write_text(
            "process direct {\n"
            f"    run {sys.executable} {Path(__file__).resolve()} helper {hdir};\n"
            "    encoder json;\n}\n"
            "neighbor 10.0.0.1 {\n    router-id 10.0.0.3; local-address 10.0.0.3;\n"
            "    local-as 65001; peer-as 65000;\n    family { ipv4 unicast; }\n"
            "    api { processes [ direct ]; neighbor-changes; }\n}\n")
        env = {**os.environ, "exabgp_daemon_user": "root", "exabgp_log_statistics": "false",
               "exabgp_api_cli": "false"}
        edge.popen([EXABGP, str(conf)], env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
        cmd = open(hdir / "cmd", "w")  # noqa: SIM115 - FIFO kept open for the run
        res = open(hdir / "result")  # noqa: SIM115

        def direct(line: str) -> dict[str, Any]:
            cmd.write(line + "\n")
            cmd.flush()
            answer: dict[str, Any] = json.loads(res.readline())
            assert answer["errors"] == 0, answer
            return answer

        driver.wait_peers_up(["10.0.0.1"], timeout=30)
        wait_for(lambda: frr.established("10.0.0.2") and frr.established("10.0.0.3"),
                 timeout=30)

        # ---- 1. latency, interleaved ------------------------------------------------------
        offset = log.stat().st_size
        base: list[Route] = []
        calls: dict[str, float] = {}
        writes: dict[str, float] = {}
        inproc: list[float] = []
        for i in range(args.samples):
            pa = f"198.18.{i // 256}.{i % 256}/32"
            base = [*base, Route(pa)]
            reply = driver.set_routes(base)
            calls[pa] = reply["t_call"]
            inproc.append(reply["elapsed"])
            wait_for(lambda p=pa: p in frr_received(log, offset), timeout=10, interval=0.002)
            pb = f"198.19.{i // 256}.{i % 256}/32"
            writes[pb] = direct(f"neighbor 10.0.0.1 announce route {pb} next-hop self")["t_write"]
            wait_for(lambda p=pb: p in frr_received(log, offset), timeout=10, interval=0.002)
        got = frr_received(log, offset)
        lat_a = [got[p] - t for p, t in calls.items()]
        lat_b = [got[p] - t for p, t in writes.items()]
        driver.set_routes([])
        direct(f"BATCH {_write(work / 'wd.cmds', [f'withdraw route {p}' for p in writes])}")
        wait_for(lambda: pfx_received(frr, "10.0.0.2") + pfx_received(frr, "10.0.0.3") == 0,
                 timeout=60, interval=0.05)

        # ---- 2. bulk: 10,000 prefixes, same batching, alternating rounds --------------------
        bulk_routes = [Route(f"10.{64 + i // 65536}.{i // 256 % 256}.{i % 256}/32")
                       for i in range(args.bulk)]
        announce = _write(work / "bulk.cmds", [
            c.text for c in diff_rib(resolve(bulk_routes, settings), {}, 65001)])
        withdraw = _write(work / "withdraw.cmds", [
            c.text for c in diff_rib({}, resolve(bulk_routes, settings), 65001)])
        bulk_a: list[dict[str, float]] = []
        bulk_b: list[dict[str, float]] = []
        for _ in range(args.rounds):
            reply = driver.set_routes(bulk_routes)
            t_all = wait_for(lambda: pfx_received(frr, "10.0.0.2") >= args.bulk and time.time(),
                             timeout=300, interval=0.02)
            bulk_a.append({"acked_s": reply["elapsed"], "peer_has_all_s": t_all - reply["t_call"]})
            driver.set_routes([])
            wait_for(lambda: pfx_received(frr, "10.0.0.2") == 0, timeout=300, interval=0.05)
            answer = direct(f"BATCH {announce}")
            t_all = wait_for(lambda: pfx_received(frr, "10.0.0.3") >= args.bulk and time.time(),
                             timeout=300, interval=0.02)
            bulk_b.append({"acked_s": answer["t_done"] - answer["t_write"],
                           "peer_has_all_s": t_all - answer["t_write"]})
            direct(f"BATCH {withdraw}")
            wait_for(lambda: pfx_received(frr, "10.0.0.3") == 0, timeout=300, interval=0.05)
        cmd.close()
        res.close()

        # ---- 3. fail closed: SIGKILL "anycastd" -> the peer closes the session -------------
        closes: list[float] = []
        for _ in range(args.kill_rounds):
            driver.set_routes([Route("192.0.2.99/32")])
            wait_for(lambda: pfx_received(frr, "10.0.0.2") == 1, timeout=30, interval=0.02)
            offset = log.stat().st_size
            t_kill = time.time()
            driver.kill()
            t_down = wait_for(lambda o=offset: adj_down(log, o, "10.0.0.2"), timeout=10,
                              interval=0.002)
            closes.append(t_down - t_kill)
            driver.stop()
            driver = SpeakerDriver(edge, settings, work / "run")
            driver.wait_peers_up(["10.0.0.1"], timeout=30)
            wait_for(lambda: frr.established("10.0.0.2"), timeout=30)

        print(f"machine: {results['machine']}")
        results["latency_anycastd"] = summary("A set_routes() -> UPDATE received", lat_a)
        results["latency_direct"] = summary("B direct API write -> UPDATE received", lat_b)
        results["set_routes_in_process"] = summary("A set_routes() call -> done", inproc)
        results["overhead_p50_ms"] = (statistics.median(lat_a) - statistics.median(lat_b)) * 1e3
        results["overhead_p99_ms"] = (percentile(lat_a, 99) - percentile(lat_b, 99)) * 1e3
        print(f"anycastd overhead (A - B): p50 {results['overhead_p50_ms']:.2f} ms, "
              f"p99 {results['overhead_p99_ms']:.2f} ms")
        results["bulk_anycastd"] = bulk_a
        results["bulk_direct"] = bulk_b
        for key in ("acked_s", "peer_has_all_s"):
            a = statistics.median(r[key] for r in bulk_a)
            b = statistics.median(r[key] for r in bulk_b)
            results[f"bulk_ratio_{key}"] = a / b
            print(f"bulk {args.bulk} {key:15s} anycastd {a:.3f}s  direct {b:.3f}s  "
                  f"ratio {a / b:.2f}   (rounds: A {[round(r[key], 3) for r in bulk_a]}, "
                  f"B {[round(r[key], 3) for r in bulk_b]})")
        results["fail_closed"] = summary("SIGKILL anycastd -> peer session down", closes)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        ok = True
    finally:
        if driver is not None:
            driver.stop()
        for ns in (edge, r1):
            ns.close()  # stops the direct ExaBGP and bgpd (started with ns.popen), by PID
        if frr is not None:
            frr.log.close()
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs kept in {work}", file=sys.stderr)


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


if __name__ == "__main__":
    if sys.argv[1:2] == ["helper"]:
        helper(sys.argv[2])
    else:
        main()
