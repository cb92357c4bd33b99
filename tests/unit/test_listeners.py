"""The daemon's API listeners (engine/listeners.py): bound at start, served after the first
pass, and nothing left behind (socket file, port) whichever way the daemon ends."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from anycastd.config import loads
from anycastd.engine.listeners import Listeners
from anycastd.errors import StartupError


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _listeners(tmp_path: Path, port: int | None = None) -> Listeners:
    port = _free_port() if port is None else port
    config = loads(f'[global]\nnode = "t"\nruntime_dir = "{tmp_path}"\n'
                   f'[api]\nlisten = "127.0.0.1:{port}"\n')
    return Listeners(config.api, config.global_.runtime_dir)


async def _get(port: int, path: str = "/healthz") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return data


def _port(listeners: Listeners) -> int:
    socks = listeners._socks
    assert socks is not None
    return int(socks[0][0].getsockname()[1])


async def test_a_request_before_the_first_pass_waits_and_is_answered(tmp_path: Path) -> None:
    listeners = _listeners(tmp_path)
    listeners.bind()
    port = _port(listeners)
    first_pass = asyncio.Event()
    serving = asyncio.create_task(listeners.serve(
        first_pass, status=dict, alive=lambda: True, set_flag=lambda *_: True, metrics=None))
    early = asyncio.create_task(_get(port))
    await asyncio.sleep(0.05)
    assert not early.done(), "answered before the first pass"
    first_pass.set()
    async with asyncio.timeout(10):
        assert (await early).startswith(b"HTTP/1.1 200")
        await serving
    assert listeners.path.is_socket()
    await listeners.close()
    assert not listeners.path.exists()


async def test_a_stop_before_the_api_was_served_leaves_nothing(tmp_path: Path) -> None:
    listeners = _listeners(tmp_path)
    listeners.bind()
    port = _port(listeners)
    assert listeners.path.is_socket()
    serving = asyncio.create_task(listeners.serve(
        asyncio.Event(), status=dict, alive=lambda: True, set_flag=lambda *_: True,
        metrics=None))
    await asyncio.sleep(0.01)
    serving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await serving
    await listeners.close()
    assert not listeners.path.exists()
    with socket.socket() as again:  # the port is free again
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))


async def test_a_taken_port_is_a_startup_error_that_binds_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listeners = _listeners(tmp_path, taken.getsockname()[1])
        with pytest.raises(StartupError, match=r"cannot listen on 127\.0\.0\.1:\d+ "
                                               r"\(api\.listen\)"):
            listeners.bind()
    assert not listeners.path.exists()
    await listeners.close()
