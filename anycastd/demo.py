"""``anycastd demo``: the daemon's main job on a built-in default, self-contained.

It starts a small HTTP service on 127.0.0.1 (an ephemeral port), runs anycastd on a built-in
config that health-checks it (tcp + http, interval 500 ms, rise 2, fall 2), then stops the
service and starts it again, narrating in plain words what anycastd decides and when.
Nothing outside this process is touched: no addresses, no routes, no BGP.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Sequence

from aiohttp import web

from anycastd.config import loads
from anycastd.core.health import Event, ServiceTransition
from anycastd.engine.daemon import Daemon
from anycastd.engine.world import dry_run_world
from anycastd.observe.logs import configure as configure_logging

DEMO_CONFIG = """
[global]
node = "demo"
log_format = "logfmt"
log_level = "info"
[api]
enabled = false
[metrics]
enabled = false

[services.demo-web]
prefixes = ["192.0.2.80/32"]
interval = "500ms"
timeout = "300ms"
jitter = "50ms"
rise = 2
fall = 2
drain_time = "1s"
  [[services.demo-web.checks]]
  name = "port-open"
  type = "tcp"
  host = "127.0.0.1"
  port = {port}
  [[services.demo-web.checks]]
  name = "healthz"
  type = "http"
  url = "http://127.0.0.1:{port}/healthz"
  body_regex = "^ok"
"""


def _say(text: str) -> None:
    sys.stdout.write(f"\n>>> {text}\n")
    sys.stdout.flush()


async def _serve(port: int = 0) -> tuple[web.AppRunner, int]:
    """Start the demo web service on 127.0.0.1:``port`` (0: any free port)."""

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    bound = runner.addresses[0]
    return runner, int(bound[1])


async def _wait_state(states: list[str], want: str, limit: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if states and states[-1] == want:
            return time.monotonic() - start
        await asyncio.sleep(0.02)
    raise TimeoutError(f"service did not become {want} within {limit}s")


async def run_demo() -> int:
    configure_logging("logfmt", "info", sys.stdout)
    runner, port = await _serve()
    config = loads(DEMO_CONFIG.format(port=port), source="<built-in demo config>")
    states: list[str] = []

    def observe(events: Sequence[Event]) -> None:
        for ev in events:
            if isinstance(ev, ServiceTransition):
                states.append(ev.new.value)
                word = "UP: this node would announce" if ev.new.value == "up" else (
                    f"{ev.new.value.upper()}: this node would withdraw")
                _say(f"service demo-web is {word} 192.0.2.80/32 ({ev.reason})")

    daemon = Daemon(config, None, observers=[observe], world_factory=dry_run_world)
    _say(f"a web service listens on 127.0.0.1:{port}; anycastd checks it every 500 ms "
         "(rise 2, fall 2) and starts it DOWN until proven healthy")
    task = asyncio.create_task(daemon.run())
    try:
        took = await _wait_state(states, "up", 10)
        _say(f"proven healthy after {took:.2f}s")
        await asyncio.sleep(1.5)
        _say("stopping the web service now")
        await runner.cleanup()
        took = await _wait_state(states, "down", 10)
        _say(f"anycastd noticed in {took:.2f}s (bound: fall 2 x 500 ms + timeout)")
        await asyncio.sleep(1.5)
        _say("starting the web service again")
        runner, _ = await _serve(port)
        took = await _wait_state(states, "up", 10)
        _say(f"back UP after {took:.2f}s. Demo done.")
    except TimeoutError as exc:
        logging.getLogger("anycastd.demo").error("demo failed: %s", exc)  # noqa: TRY400
        return 1
    finally:
        daemon.request_stop()
        await task
        await runner.cleanup()
    return 0
