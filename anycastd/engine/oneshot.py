"""``anycastd probe SERVICE``: run one service's checks once, as the daemon would.

No hysteresis here (one run cannot have any): the verdict is the service policy applied to
this single round, which is what an operator reproducing a failure wants to see.
"""

from __future__ import annotations

import asyncio

from anycastd.config import ServiceConfig
from anycastd.engine.probes import build_probe
from healthchecks.result import ProbeResult


def _line(label: str, describe: str, result: ProbeResult) -> str:
    return (
        f"{result.status.value.upper():7} {label:24} {result.latency * 1000:8.1f}ms  "
        f"{describe}: {result.reason}"
    )


async def probe_service(service: ServiceConfig) -> tuple[bool, list[str]]:
    """Run every check (and every real server's checks) once, concurrently."""
    jobs: list[tuple[str, str, asyncio.Task[ProbeResult]]] = []
    async with asyncio.TaskGroup() as tg:
        for check in service.checks:
            probe = build_probe(check)
            jobs.append((check.name, probe.describe(), tg.create_task(probe.run(check.timeout))))
        if service.ipvs is not None:
            for rs in service.ipvs.real_servers:
                for check in rs.checks:
                    probe = build_probe(check)
                    label = f"{rs.address}/{check.name}"
                    jobs.append((label, probe.describe(), tg.create_task(probe.run(check.timeout))))

    n_checks = len(service.checks)
    passed = sum(1 for _, _, task in jobs[:n_checks] if task.result().ok)
    healthy = passed >= service.min_passing
    lines = [_line(label, desc, task.result()) for label, desc, task in jobs]
    verdict = "healthy" if healthy else "UNHEALTHY"
    lines.append(
        f"service {service.name}: {verdict} ({passed}/{n_checks} checks passed, "
        f"policy {service.policy} needs {service.min_passing})"
    )
    if service.ipvs is not None:
        up = 0
        for rs in service.ipvs.real_servers:
            own = [t.result().ok for label, _, t in jobs[n_checks:]
                   if label.startswith(f"{rs.address}/")]
            up += all(own)
        lines.append(
            f"real servers passing: {up}/{len(service.ipvs.real_servers)} "
            f"(min_healthy {service.ipvs.min_healthy})"
        )
        healthy = healthy and up >= service.ipvs.min_healthy
    return healthy, lines
