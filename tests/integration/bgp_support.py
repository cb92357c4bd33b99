"""BGP integration support: an FRR bgpd peer, and the speaker harness run inside a netns.

Harness: ``python -m tests.integration.bgp_support harness SETTINGS_JSON RUNTIME_DIR`` runs an
ExabgpSpeaker in the current namespace and takes one JSON request a line on stdin, answering
one JSON line on stdout. The test runs it with ``ip netns exec`` (same PID), so killing it
by PID is killing "anycastd".

The speaker never announces on its own (issue 8): after a read-back it calls ``on_resync``
and the controller's pass sends its verdict. The harness plays that controller: on every
``on_resync`` it sends the last route set the test asked for (its current verdict) again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from anycastd.bgp.speaker import ExabgpSpeaker
from anycastd.errors import ActuatorError
from anycastd.lab.netns import Netns, stop_process, wait_for
from anycastd.model import Attributes, BgpSettings, Neighbor, Route

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
EXABGP = str(VENV_BIN / "exabgp")


# -- the speaker harness, as seen from the test ---------------------------------------------


def route_to_json(route: Route) -> dict[str, Any]:
    return {"prefix": route.prefix, "attributes": asdict(route.attributes),
            "neighbors": list(route.neighbors)}


def route_from_json(data: dict[str, Any]) -> Route:
    attrs = data.get("attributes", {})
    return Route(
        prefix=data["prefix"],
        attributes=Attributes(
            med=attrs.get("med"),
            local_preference=attrs.get("local_preference"),
            communities=tuple(attrs.get("communities", ())),
            large_communities=tuple(attrs.get("large_communities", ())),
            as_path_prepend=attrs.get("as_path_prepend", 0),
            next_hop=attrs.get("next_hop"),
        ),
        neighbors=tuple(data.get("neighbors", ())),
    )


def settings_to_json(settings: BgpSettings) -> str:
    return json.dumps(asdict(settings))


def settings_from_json(text: str) -> BgpSettings:
    data = json.loads(text)
    neighbors = tuple(
        Neighbor(**{**n, "families": tuple(n["families"])}) for n in data.pop("neighbors")
    )
    return BgpSettings(**data, neighbors=neighbors)


class SpeakerDriver:
    """Runs the harness (the "anycastd" process) in a namespace and talks to it."""

    def __init__(self, ns: Netns, settings: BgpSettings, runtime_dir: Path) -> None:
        self.runtime_dir = runtime_dir
        runtime_dir.mkdir(parents=True, exist_ok=True)
        self.stderr = open(runtime_dir / "harness.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = ns.popen(
            [sys.executable, "-m", "tests.integration.bgp_support", "harness",
             settings_to_json(settings), str(runtime_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
            cwd=str(REPO), text=True, bufsize=1,
        )
        ready = self._read()
        assert ready.get("ready"), ready

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"harness exited: {self.log_tail()}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def call(self, op: str, **kwargs: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **kwargs}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def set_routes(self, routes: Sequence[Route]) -> dict[str, Any]:
        return self.call("set_routes", routes=[route_to_json(r) for r in routes])

    def status(self) -> dict[str, Any]:
        return self.call("status")

    def wait_peers_up(self, addresses: Sequence[str], timeout: float = 20) -> None:
        wait_for(lambda: all(self.status()["peers"].get(a) for a in addresses), timeout=timeout)

    def log_tail(self) -> str:
        self.stderr.flush()
        return (self.runtime_dir / "harness.log").read_text()[-3000:]

    def kill(self) -> None:
        """SIGKILL "anycastd": no cleanup code of ours runs."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=5)

    def stop(self) -> None:
        stop_process(self.proc)
        self.stderr.close()


def process_alive(pid: int) -> bool:
    """False for a gone or zombie process (PID 1 here reaps lazily)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@contextlib.contextmanager
def started(*things: Any) -> Iterator[None]:
    try:
        yield
    finally:
        for thing in reversed(things):
            with contextlib.suppress(Exception):
                thing.stop()


# -- the harness itself (runs inside the namespace) ----------------------------------------


async def _harness(settings_json: str, runtime_dir: str) -> None:
    settings = settings_from_json(settings_json)
    wish: list[Route] | None = None
    passes: set[asyncio.Task[None]] = set()
    resyncs = 0

    async def controller_pass() -> None:
        if wish is not None:
            with contextlib.suppress(ActuatorError):
                await speaker.set_routes(wish)

    def on_resync() -> None:
        nonlocal resyncs
        resyncs += 1
        task = asyncio.get_running_loop().create_task(controller_pass())
        passes.add(task)
        task.add_done_callback(passes.discard)

    speaker = ExabgpSpeaker(settings, Path(runtime_dir), restart_backoff=(0.2, 2.0),
                            on_resync=on_resync)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def reply(data: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(data) + "\n")
        sys.stdout.flush()

    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(speaker.run())
        reply({"ready": True, "pid": os.getpid()})
        while line := await reader.readline():
            request = json.loads(line)
            op = request["op"]
            try:
                if op == "set_routes":
                    routes = [route_from_json(r) for r in request["routes"]]
                    wish = routes
                    wall, started_at = time.time(), time.perf_counter()
                    await speaker.set_routes(routes)
                    reply({"ok": True, "elapsed": time.perf_counter() - started_at,
                           "t_call": wall})
                elif op == "status":
                    reply({
                        "ok": True,
                        "connected": speaker.connected,
                        "peers": {a: p.up for a, p in speaker.peers.items()},
                        "exabgp_pid": speaker.exabgp_pid,
                        "exabgp_starts": speaker.exabgp_starts,
                        "standby_pid": speaker.exabgp_standby[0],
                        "standby_starts": speaker.exabgp_standby[1],
                        "commands_sent": speaker.commands_sent,
                        "sent": len(speaker.sent),
                        "resyncs": resyncs,
                    })
                elif op == "update_settings":
                    await speaker.update_settings(settings_from_json(request["settings"]))
                    reply({"ok": True})
                elif op == "resync":
                    await speaker.resync()
                    reply({"ok": True})
                else:
                    reply({"ok": False, "error": f"unknown op {op}"})
            except Exception as exc:  # reported to the test, whatever it is
                reply({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        task.cancel()


def main(argv: list[str]) -> None:
    if argv[:1] != ["harness"] or len(argv) != 3:
        raise SystemExit("usage: bgp_support harness SETTINGS_JSON RUNTIME_DIR")
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(_harness(argv[1], argv[2]))


if __name__ == "__main__":
    main(sys.argv[1:])
