"""Real-server health (``engine.backends``): unchecked servers count as up, checked ones follow
their checks, and the daemon turns that into IPVS weights."""

from __future__ import annotations

from pathlib import Path

from anycastd.config import Config, loads
from anycastd.core.health import ServiceState
from anycastd.engine.backends import Backends
from anycastd.model import VirtualService
from tests.unit.configs import DAEMON_HEAD
from tests.unit.test_daemon import Node, running, wait_for

WEB = """
[services.web]
prefixes = ["192.0.2.10/32"]
interval = "50ms"
timeout = "25ms"
rise = 1
fall = 1
drain_time = "0s"
[[services.web.checks]]
type = "file"
path = "{tmp}/web-ok"
[services.web.ipvs]
port = 80
min_healthy = 1
[[services.web.ipvs.real_servers]]
address = "10.1.0.1"
[[services.web.ipvs.real_servers]]
address = "10.1.0.2"
weight = 7
checks = [ {{ type = "file", path = "{tmp}/rs2-ok" }} ]
"""

RS1, RS2 = ("web", "10.1.0.1", 80), ("web", "10.1.0.2", 80)
VS = VirtualService("tcp", "192.0.2.10", 80)


def config(tmp: Path, start_state: str = "down") -> Config:
    web = WEB.format(tmp=tmp).replace("rise = 1", f'rise = 1\nstart_state = "{start_state}"')
    return loads(DAEMON_HEAD.format(tmp=tmp) + web)


def test_real_server_without_checks_counts_as_up(tmp_path: Path) -> None:
    backends = Backends(config(tmp_path))
    assert backends.up({})[RS1] is True
    assert RS1 in backends.unchecked
    assert RS1 not in backends.keys.values()


def test_real_server_with_checks_is_down_until_its_checks_pass(tmp_path: Path) -> None:
    backends = Backends(config(tmp_path))
    (name,) = backends.keys
    assert name == "web/10.1.0.2:80"
    health = backends.initial({}, 0.0)
    assert backends.up(health)[RS2] is False  # start_state down: not proven yet

    health[name] = health[name].feed("file-0", True, "present", 1.0).health  # rise = 1
    assert backends.up(health)[RS2] is True
    health[name] = health[name].feed("file-0", False, "absent", 2.0).health  # fall = 1
    assert backends.up(health)[RS2] is False


def test_real_server_health_missing_from_the_scheduler_fails_closed(tmp_path: Path) -> None:
    backends = Backends(config(tmp_path, start_state="up"))
    assert backends.up({})[RS2] is False
    assert backends.up(backends.initial({}, 0.0))[RS2] is True  # start_state up: trusted


def test_initial_carries_an_unchanged_real_servers_health_over(tmp_path: Path) -> None:
    backends = Backends(config(tmp_path))
    first = backends.initial({}, 0.0)
    (name,) = first
    first[name] = first[name].feed("file-0", True, "present", 1.0).health
    assert Backends(config(tmp_path)).initial(first, 5.0)[name] is first[name]


async def test_failing_real_server_gets_weight_zero_and_passing_one_its_weight(
    tmp_path: Path,
) -> None:
    node = Node(tmp_path, DAEMON_HEAD.format(tmp=tmp_path) + WEB.format(tmp=tmp_path))
    node.flag("web-ok").touch()
    async with running(node):
        await wait_for(lambda: node.announced() == {"192.0.2.10/32": ()})
        assert weights(node) == {"10.1.0.1": 1, "10.1.0.2": 0}  # rs2's file is missing

        node.flag("rs2-ok").touch()
        await wait_for(lambda: weights(node) == {"10.1.0.1": 1, "10.1.0.2": 7})
        node.flag("rs2-ok").unlink()
        await wait_for(lambda: weights(node) == {"10.1.0.1": 1, "10.1.0.2": 0})
        assert node.announced() == {"192.0.2.10/32": ()}  # one healthy server is enough


def weights(node: Node) -> dict[str, int]:
    svc = node.ipvs.observe().services.get(VS)
    if svc is None:
        return {}
    return {ors.server.address: ors.server.weight for ors in svc.real_servers}


def test_initial_carries_a_renamed_services_real_server_health_over(tmp_path: Path) -> None:
    first = Backends(config(tmp_path)).initial({}, 0.0)
    first["web/10.1.0.2:80"] = first["web/10.1.0.2:80"].feed("file-0", True, "ok", 1.0).health
    www = loads(DAEMON_HEAD.format(tmp=tmp_path) + WEB.format(tmp=tmp_path).replace("services.web",
                                                                             "services.www"))
    renamed = Backends(www)
    after = renamed.initial(first, 5.0, {"www": "web"})
    assert after["www/10.1.0.2:80"].state is ServiceState.UP
    assert renamed.up(after)[("www", "10.1.0.2", 80)] is True
    assert Backends(www).initial(first, 5.0)["www/10.1.0.2:80"].state is ServiceState.DOWN
