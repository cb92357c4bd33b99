"""Default timing, chosen by measurement: anycastd's own scheduler and health engine on
virtual time, for several candidate timings (issue 9).

Run from the repo root:  .venv/bin/python bench/bench_timing.py [--trials 2000] [--noise-trials 300]

What runs: the real ``engine.scheduler.Scheduler`` and ``core.health`` (the code the daemon
runs), one service with one check, on ``anycastd.testing.clock.FakeClock``. The probe is a
script over virtual time, so the only thing simulated is the target, never the counting.
For each candidate timing (interval / fast_interval / fall / rise / jitter = interval/10):

* failover: the check passes, then fails from a moment drawn uniformly over 4 intervals (a
  random phase of the schedule); measured: that moment -> the service's DOWN transition.
* recovery: the check fails (service DOWN, steady), then passes from a random moment;
  measured: that moment -> UP.
* noise: the check fails at random with probability 5 % (independently per run), 10 minutes
  of virtual time per trial; counted: DOWN transitions (each one is a withdraw). Reported:
  trials with any withdraw, and the expected withdraws per day and check computed exactly
  from the counting rule (a withdraw needs ``fall`` failures in a row; each failure while
  UP starts a run of fast re-checks), which the trials confirm.
* cost: probe runs per second per check in the steady state (= 1 / interval).

The wire adds anycastd's verdict -> UPDATE path and the peer's receive (measured end to end
by bench_failover.py: ~7-10 ms p50 with a real ExaBGP and FRR); it is not simulated here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Timing:
    label: str
    interval: float
    fast_interval: float
    fall: int
    rise: int

    @property
    def jitter(self) -> float:
        return self.interval / 10

    @property
    def timeout(self) -> float:
        return min(1.0, self.interval / 2)


CANDIDATES = [
    Timing("old defaults 2s/2s fall2 rise3", 2.0, 2.0, 2, 3),
    Timing("1s/200ms fall3 rise3", 1.0, 0.2, 3, 3),
    Timing("500ms/100ms fall2 rise3", 0.5, 0.1, 2, 3),
    Timing("500ms/100ms fall3 rise3", 0.5, 0.1, 3, 3),
    Timing("500ms/100ms fall4 rise5", 0.5, 0.1, 4, 5),
    Timing("500ms/100ms fall5 rise5", 0.5, 0.1, 5, 5),
    Timing("400ms/100ms fall3 rise5", 0.4, 0.1, 3, 5),
    Timing("400ms/100ms fall4 rise5", 0.4, 0.1, 4, 5),
    Timing("400ms/100ms fall5 rise5 (chosen)", 0.4, 0.1, 5, 5),
    Timing("300ms/100ms fall4 rise5", 0.3, 0.1, 4, 5),
]

NOISE = 0.05
NOISE_MINUTES = 10.0


def main() -> None:
    sys.path.insert(0, str(REPO))
    from bench.common import machine, percentile

    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=2000, help="failover/recovery trials")
    ap.add_argument("--noise-trials", type=int, default=300, help="10-minute noise trials")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="also write JSON here")
    args = ap.parse_args()

    print(f"machine: {machine()}")
    print(f"command: python {' '.join(sys.argv)}")
    results: dict[str, object] = {"machine": machine(), "command": " ".join(sys.argv),
                                  "noise": NOISE, "noise_minutes": NOISE_MINUTES,
                                  "candidates": []}
    header = (f"{'timing':32s} {'fail p50':>8s} {'p99':>6s} {'max':>6s} | {'rec p50':>7s} "
              f"{'p99':>6s} {'max':>6s} | {'noise: trials w/ withdraw':>25s} "
              f"{'exp/day':>8s} | probes/s")
    print(header)
    for timing in CANDIDATES:
        rng = random.Random(args.seed)
        down = asyncio.run(_edges(timing, rng, args.trials, failing_from=True))
        up = asyncio.run(_edges(timing, rng, args.trials, failing_from=False))
        withdraws = asyncio.run(_noise(timing, rng, args.noise_trials))
        hit = sum(1 for w in withdraws if w)
        per_day = _expected_per_day(timing)
        row = {
            "timing": timing.__dict__ | {"jitter": timing.jitter, "timeout": timing.timeout},
            "failover_ms": _ms(down, percentile),
            "recovery_ms": _ms(up, percentile),
            "noise_trials": len(withdraws),
            "noise_trials_with_withdraw": hit,
            "noise_withdraws_total": sum(withdraws),
            "expected_withdraws_per_day": per_day,
            "probes_per_second": 1 / timing.interval,
        }
        results["candidates"].append(row)  # type: ignore[attr-defined]
        f, r = row["failover_ms"], row["recovery_ms"]
        print(f"{timing.label:32s} {f['p50']:8.0f} {f['p99']:6.0f} {f['max']:6.0f} | "
              f"{r['p50']:7.0f} {r['p99']:6.0f} {r['max']:6.0f} | "
              f"{hit:>14d} of {len(withdraws):<4d} ({sum(withdraws):3d} total) "
              f"{per_day:8.3f} | {1 / timing.interval:5.1f}")
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


def _ms(values: list[float], percentile: object) -> dict[str, float]:
    pct = percentile  # bench.common.percentile, passed in (imported after sys.path is set)
    ms = [v * 1000 for v in values]
    return {"p50": pct(ms, 50), "p90": pct(ms, 90), "p99": pct(ms, 99),  # type: ignore[operator]
            "max": max(ms), "n": len(ms)}


def _expected_per_day(t: Timing) -> float:
    """Withdraws per day from the counting rule: while UP, each failure (probability p per
    steady run, one run per interval) is followed by fast re-checks; the service goes DOWN
    when the next ``fall - 1`` runs fail too. After a withdraw the service must rise again,
    which takes far less than a day, so the rate is runs/day * p * p**(fall-1)."""
    runs_per_day = 86400 / t.interval
    return runs_per_day * NOISE * NOISE ** (t.fall - 1)


class _ScriptProbe:
    """Fails when ``failing(now)`` says so, at once (a refused connection)."""

    def __init__(self, clock: object, failing: object) -> None:
        self._clock = clock
        self._failing = failing

    async def run(self, timeout: float) -> object:  # noqa: ASYNC109  # the probe contract
        from healthchecks.result import ProbeResult, Status

        bad = self._failing(self._clock.now())  # type: ignore[attr-defined,operator]
        return ProbeResult(Status.FAIL if bad else Status.OK, 0.0, "refused" if bad else "ok")


def _scheduler(t: Timing, clock: object, probe: object, *, start_up: bool,
               rng: random.Random, on_events: object) -> object:
    from anycastd.core.health import CheckParams, CheckState, Policy, ServiceHealth, ServiceParams
    from anycastd.engine.scheduler import CheckSpec, Scheduler

    params = ServiceParams("svc", (CheckParams("c", rise=t.rise, fall=t.fall),),
                           Policy.parse("all"), CheckState.UP if start_up else CheckState.DOWN,
                           None)
    spec = CheckSpec("svc", "c", probe, interval=t.interval,  # type: ignore[arg-type]
                     fast_interval=t.fast_interval, timeout=t.timeout, jitter=t.jitter)
    return Scheduler([spec], {"svc": ServiceHealth.initial(params, 0.0)},
                     clock=clock, rng=rng, on_events=on_events,  # type: ignore[arg-type]
                     stagger=True)


async def _edges(t: Timing, rng: random.Random, trials: int, failing_from: bool) -> list[float]:
    """failing_from=True: OK then failing from t_edge (measure -> DOWN); False: failing then
    OK from t_edge (measure -> UP)."""
    from anycastd.core.health import ServiceState, ServiceTransition
    from anycastd.testing.clock import FakeClock

    want = ServiceState.DOWN if failing_from else ServiceState.UP
    out: list[float] = []
    for _ in range(trials):
        clock = FakeClock()
        settle = 5 * t.interval  # steady state first (stagger + rise/fall done)
        edge = settle + rng.uniform(0, 4 * t.interval)
        seen: list[float] = []

        def failing(now: float, edge: float = edge) -> bool:
            return now >= edge if failing_from else now < edge

        def on_events(events: object, seen: list[float] = seen, edge: float = edge) -> None:
            for e in events:  # type: ignore[attr-defined]
                if isinstance(e, ServiceTransition) and e.new is want and e.at >= edge:
                    seen.append(e.at)

        sched = _scheduler(t, clock, _ScriptProbe(clock, failing), start_up=failing_from,
                           rng=rng, on_events=on_events)
        task = asyncio.create_task(sched.run())  # type: ignore[attr-defined]
        horizon = edge + 20 * t.interval + 10
        while not seen and clock.now() < horizon:
            await clock.run_until(clock.now() + t.fast_interval)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if not seen:
            raise AssertionError(f"{t.label}: no transition within {horizon - edge:.1f} s")
        out.append(seen[0] - edge)
    return out


async def _noise(t: Timing, rng: random.Random, trials: int) -> list[int]:
    from anycastd.core.health import ServiceState, ServiceTransition
    from anycastd.testing.clock import FakeClock

    out: list[int] = []
    for _ in range(trials):
        clock = FakeClock()
        downs: list[float] = []

        def failing(_now: float) -> bool:
            return rng.random() < NOISE

        def on_events(events: object, downs: list[float] = downs) -> None:
            for e in events:  # type: ignore[attr-defined]
                if isinstance(e, ServiceTransition) and e.new is ServiceState.DOWN:
                    downs.append(e.at)

        sched = _scheduler(t, clock, _ScriptProbe(clock, failing), start_up=True, rng=rng,
                           on_events=on_events)
        task = asyncio.create_task(sched.run())  # type: ignore[attr-defined]
        await clock.run_until(NOISE_MINUTES * 60)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        out.append(len(downs))
    return out


if __name__ == "__main__":
    main()
