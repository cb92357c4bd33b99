"""The two listeners: the TCP one (status, metrics) is read-only, the operator flags are
served only on the control socket, whose mode and group decide who may use them.

Real aiohttp servers (127.0.0.1 port 0, a unix socket in tmp_path), the CLI's own client.
"""

from __future__ import annotations

import asyncio
import grp
import os
import socket
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from anycastd.observe.api import ApiServer, Endpoint, create_app, fetch_status, post_flag
from anycastd.observe.metrics import Metrics
from tests.unit.test_api import Node


def app(node: Node, *, control: bool) -> ApiServer:
    return ApiServer(create_app(status_provider=node.status, alive=node.alive,
                                set_flag=node.set_flag, metrics=Metrics(), control=control))


@pytest.fixture
async def tcp() -> AsyncIterator[tuple[ApiServer, Node]]:
    node = Node()
    server = app(node, control=False)
    await server.start("127.0.0.1", 0)
    try:
        yield server, node
    finally:
        await server.stop()


async def test_the_tcp_listener_serves_status_but_refuses_flags(
    tcp: tuple[ApiServer, Node],
) -> None:
    server, node = tcp
    host, port = server.addresses[0]
    where = Endpoint(host=host, port=port)
    assert (await asyncio.to_thread(fetch_status, where))["services"]["dns"]["state"] == "up"
    for kind in ("maintenance", "drain"):
        code, body = await asyncio.to_thread(post_flag, where, "dns", kind, True)  # type: ignore[arg-type]
        assert (code, body["error"]) == (403, "read_only")
        assert "control socket" in body["message"]
    assert node.calls == []  # nothing reached the daemon


async def test_the_control_socket_is_0660_with_its_group_and_serves_flags(
    tmp_path: Path,
) -> None:
    node = Node()
    path = tmp_path / "run" / "api.sock"
    group = grp.getgrgid(65534).gr_name  # nogroup: not the test's own group
    server = app(node, control=True)
    await server.start_unix(path, group=group)
    try:
        st = path.stat()
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_gid == 65534
        where = Endpoint(path=path)
        code, body = await asyncio.to_thread(post_flag, where, "dns", "maintenance", True)
        assert (code, body["state"]) == (200, "maintenance")
        doc = await asyncio.to_thread(fetch_status, where)
        assert doc["services"]["dns"]["state"] == "maintenance"
    finally:
        await server.stop()
    assert not path.exists()  # removed at stop


async def test_a_stale_socket_is_replaced_but_a_live_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))  # a socket file nobody listens on (a crashed daemon's)
    first = app(Node(), control=True)
    await first.start_unix(path)
    try:
        second = app(Node(), control=True)
        with pytest.raises(OSError, match="another process answers"):
            await second.start_unix(path)
        # the first daemon's socket is intact
        assert (await asyncio.to_thread(fetch_status, Endpoint(path=path)))["services"]
    finally:
        await first.stop()


async def test_an_unknown_socket_group_is_an_error(tmp_path: Path) -> None:
    server = app(Node(), control=True)
    with pytest.raises(OSError, match="no group named 'no-such-group-acd'"):
        await server.start_unix(tmp_path / "api.sock", group="no-such-group-acd")
    assert not (tmp_path / "api.sock").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_the_cli_without_permission_on_the_socket_exits_77(tmp_path: Path) -> None:
    from anycastd.cli import EX_NOPERM, main

    # EACCES on connect, from the socket's mode or a directory on the way: one answer
    path = tmp_path / "api.sock"
    err = tmp_path / "stderr"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen(1)
        os.chmod(path, 0o660)  # root's group: nobody is not in it
        pid = os.fork()
        if pid == 0:  # the child: become nobody, run the CLI, report its exit code
            code = 99
            try:
                sys.stderr = err.open("w")  # pytest's capture is not the child's
                os.setgroups([])
                os.setresgid(65534, 65534, 65534)
                os.setresuid(65534, 65534, 65534)
                code = main(["drain", "--socket", str(path), "web", "on"])
                sys.stderr.flush()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == EX_NOPERM, err.read_text()
    assert "permission denied" in err.read_text()
    assert "Traceback" not in err.read_text()
