"""observe.api: a real aiohttp server on 127.0.0.1 (port 0), a real client, no mocks.

The daemon side is a small stand-in holding real ``ServiceHealth`` values: flags posted to
the API change the health, and ``/status`` shows the result.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from anycastd.core.health import (
    CheckParams,
    CheckState,
    ServiceHealth,
    ServiceParams,
    ServiceState,
)
from anycastd.observe.api import (
    DEFAULT_HOST,
    ApiServer,
    Endpoint,
    FlagKind,
    create_app,
    fetch_status,
    post_flag,
)
from anycastd.observe.metrics import Metrics
from anycastd.observe.status import build_status


class Node:
    """What the daemon hands the API: status, liveness, flags (at a fixed time)."""

    def __init__(self) -> None:
        params = ServiceParams("dns", (CheckParams("udp"),), start_state=CheckState.UP)
        self.health = {"dns": ServiceHealth.initial(params, 0.0)}
        self.now = 10.0
        self.is_alive = True
        self.calls: list[tuple[str, FlagKind, bool]] = []

    def status(self) -> dict[str, Any]:
        return build_status("edge1", 1_700_000_000.0, self.health, self.now, version="1.2.3")

    def alive(self) -> bool:
        return self.is_alive

    def set_flag(self, name: str, kind: FlagKind, on: bool) -> bool:
        self.calls.append((name, kind, on))
        h = self.health.get(name)
        if h is None:
            return False
        step = h.set_maintenance(on, self.now) if kind == "maintenance" else (
            h.set_draining(on, self.now)
        )
        self.health[name] = step.health
        return True


@pytest.fixture
def node() -> Node:
    return Node()


@pytest.fixture
def metrics() -> Metrics:
    m = Metrics(version="1.2.3")
    m.set_service_states({"dns": ServiceState.UP})
    m.set_peer("r1", up=True)
    return m


@pytest.fixture
async def server(node: Node, metrics: Metrics) -> AsyncIterator[ApiServer]:
    app = create_app(
        status_provider=node.status, alive=node.alive, set_flag=node.set_flag, metrics=metrics
    )
    srv = ApiServer(app)
    await srv.start(DEFAULT_HOST, 0)
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


# ---------------------------------------------------------------- GET


async def test_status_returns_the_providers_document(
    server: ApiServer, client: aiohttp.ClientSession
) -> None:
    async with client.get(server.url + "/status") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        body = await resp.json()
    assert body["node"] == "edge1"
    assert body["services"]["dns"]["state"] == "up"
    assert body["services"]["dns"]["since_seconds"] == 10.0


async def test_metrics_is_prometheus_text(
    server: ApiServer, client: aiohttp.ClientSession
) -> None:
    async with client.get(server.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == prometheus_client.CONTENT_TYPE_LATEST
        text = await resp.text()
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    assert values[("anycastd_bgp_peer_up", (("peer", "r1"),))] == 1
    assert values[("anycastd_service_state", (("service", "dns"), ("state", "up")))] == 1
    assert values[("anycastd_build_info", (("version", "1.2.3"),))] == 1


async def test_metrics_reflect_values_at_scrape_time(
    server: ApiServer, client: aiohttp.ClientSession, metrics: Metrics
) -> None:
    metrics.set_peer("r1", up=False)
    async with client.get(server.url + "/metrics") as resp:
        assert 'anycastd_bgp_peer_up{peer="r1"} 0.0' in await resp.text()


async def test_no_metrics_route_when_metrics_are_disabled(
    node: Node, client: aiohttp.ClientSession
) -> None:
    srv = ApiServer(create_app(status_provider=node.status, alive=node.alive,
                               set_flag=node.set_flag))  # fmt: skip
    await srv.start("127.0.0.1", 0)
    try:
        async with client.get(srv.url + "/metrics") as resp:
            assert resp.status == 404
            assert (await resp.json())["error"] == "not_found"
        async with client.get(srv.url + "/status") as resp:
            assert resp.status == 200
    finally:
        await srv.stop()


async def test_healthz_follows_alive(
    server: ApiServer, client: aiohttp.ClientSession, node: Node
) -> None:
    async with client.get(server.url + "/healthz") as resp:
        assert (resp.status, await resp.text()) == (200, "ok\n")
    node.is_alive = False
    async with client.get(server.url + "/healthz") as resp:
        assert resp.status == 503


async def test_unknown_path_and_wrong_method_are_json_errors(
    server: ApiServer, client: aiohttp.ClientSession
) -> None:
    async with client.get(server.url + "/nope") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"] == "not_found"
    async with client.get(server.url + "/services/dns/maintenance") as resp:
        assert resp.status == 405
        assert (await resp.json())["error"] == "method_not_allowed"


async def test_a_failing_provider_is_a_500_without_traceback(
    client: aiohttp.ClientSession, node: Node
) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("secret internals")

    srv = ApiServer(create_app(status_provider=broken, alive=node.alive,
                               set_flag=node.set_flag))  # fmt: skip
    await srv.start("127.0.0.1", 0)
    try:
        async with client.get(srv.url + "/status") as resp:
            assert resp.status == 500
            body = await resp.text()
        assert json.loads(body)["error"] == "internal_error"
        assert "secret internals" not in body
        async with client.get(srv.url + "/healthz") as resp:  # the server keeps serving
            assert resp.status == 200
    finally:
        await srv.stop()


# ---------------------------------------------------------------- flags


@pytest.mark.parametrize(
    "case", [("maintenance", "maintenance", "maintenance"), ("drain", "draining", "draining")]
)
async def test_post_flag_on_then_off(
    server: ApiServer,
    client: aiohttp.ClientSession,
    node: Node,
    case: tuple[FlagKind, str, str],
) -> None:
    kind, field, state = case
    url = f"{server.url}/services/dns/{kind}"
    async with client.post(url, json={"on": True}) as resp:
        assert resp.status == 200
        assert await resp.json() == {"service": "dns", "kind": kind, "on": True, "state": state}
    async with client.get(server.url + "/status") as resp:
        svc = (await resp.json())["services"]["dns"]
    assert (svc["state"], svc[field]) == (state, True)
    async with client.post(url, json={"on": False}) as resp:
        assert (await resp.json())["state"] == "up"
    assert node.calls == [("dns", kind, True), ("dns", kind, False)]


async def test_post_flag_unknown_service_is_404(
    server: ApiServer, client: aiohttp.ClientSession
) -> None:
    async with client.post(server.url + "/services/nope/maintenance", json={"on": True}) as r:
        assert r.status == 404
        assert await r.json() == {"error": "unknown_service", "message": "no service named 'nope'"}


JSON = {"Content-Type": "application/json"}

@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "JSON object"),
        (b"{not json", "not JSON"),
        (b"[true]", "JSON object"),
        (b"{}", '"on" must be true or false, got null'),
        (b'{"on": "yes"}', '"on" must be true or false, got "yes"'),
        (b'{"on": 1}', '"on" must be true or false, got 1'),
        (b'{"on": true, "force": true}', "unknown key(s) force"),
        (b"\xff\xfe", "not JSON"),
    ],
)
async def test_post_flag_bad_body_is_400_with_a_clear_message(
    server: ApiServer, client: aiohttp.ClientSession, node: Node, body: bytes, message: str
) -> None:
    async with client.post(server.url + "/services/dns/drain", data=body, headers=JSON) as resp:
        assert resp.status == 400
        err = await resp.json()
    assert err["error"] == "bad_request"
    assert message in err["message"]
    assert node.calls == []  # nothing was applied


async def test_post_flag_oversized_body_is_rejected(
    server: ApiServer, client: aiohttp.ClientSession, node: Node
) -> None:
    async with client.post(
        server.url + "/services/dns/drain", data=b" " * 10_000, headers=JSON
    ) as resp:
        assert resp.status == 413
    assert node.calls == []


async def test_post_flag_without_a_json_content_type_is_415(
    server: ApiServer, client: aiohttp.ClientSession, node: Node
) -> None:
    # a browser's "simple" cross-origin POST (text/plain) must not set a flag
    async with client.post(
        server.url + "/services/dns/maintenance", data=b'{"on": true}',
        headers={"Content-Type": "text/plain"},
    ) as resp:
        assert resp.status == 415
    assert node.calls == []


# ---------------------------------------------------------------- server lifecycle


async def test_start_binds_the_given_port_and_stop_frees_it(node: Node) -> None:
    with socket.socket() as s:  # find a free port, then let the server take it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = ApiServer(create_app(status_provider=node.status, alive=node.alive,
                               set_flag=node.set_flag))  # fmt: skip
    await srv.start("127.0.0.1", port)
    assert srv.addresses == [("127.0.0.1", port)]
    await srv.start("127.0.0.1", port)  # idempotent
    await srv.stop()
    await srv.stop()
    assert srv.addresses == []
    with socket.socket() as s:  # the port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


async def test_start_on_a_busy_port_raises_oserror(node: Node, server: ApiServer) -> None:
    _, port = server.addresses[0]
    other = ApiServer(create_app(status_provider=node.status, alive=node.alive,
                                 set_flag=node.set_flag))  # fmt: skip
    with pytest.raises(OSError):  # noqa: PT011  # errno differs between kernels
        await other.start("127.0.0.1", port)
    assert other.addresses == []


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
@pytest.mark.parametrize("host", ["::1", "[::1]"])
async def test_listens_on_ipv6_loopback(
    node: Node, client: aiohttp.ClientSession, host: str
) -> None:
    srv = ApiServer(create_app(status_provider=node.status, alive=node.alive,
                               set_flag=node.set_flag))  # fmt: skip
    await srv.start(host, 0)
    try:
        assert srv.addresses[0][0] == "::1"
        assert srv.url.startswith("http://[::1]:")
        async with client.get(srv.url + "/healthz") as resp:
            assert resp.status == 200
    finally:
        await srv.stop()


# ---------------------------------------------------------------- CLI client


async def test_sync_client_fetches_status_and_posts_flags(server: ApiServer, node: Node) -> None:
    host, port = server.addresses[0]
    where = Endpoint(host=host, port=port)
    doc = await asyncio.to_thread(fetch_status, where)
    assert doc["services"]["dns"]["state"] == "up"
    code, body = await asyncio.to_thread(post_flag, where, "dns", "drain", True)
    assert (code, body["state"]) == (200, "draining")
    code, body = await asyncio.to_thread(post_flag, where, "nope", "drain", True)
    assert (code, body["error"]) == (404, "unknown_service")


async def test_sync_client_unreachable_daemon_raises_oserror() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(ConnectionRefusedError):
        await asyncio.to_thread(fetch_status, Endpoint(host="127.0.0.1", port=port), 2.0)
