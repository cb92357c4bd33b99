"""The OSPF actuator's vty socket and commands for a multi-instance ospfd (``ospfd -n N``):
FRR names that daemon's socket ``DIR/ospfd-N.vty`` and answers only the instanced ``show ip
ospf N ...`` commands. A small vty server on a Unix socket in tmp_path stands for ospfd."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

from anycastd.actuators import frr


def test_the_socket_of_an_instance_is_named_like_frr_names_it() -> None:
    base = frr.OspfSettings(vty_dir=Path("/run/frr"))
    assert base.vty_socket("ospfd") == Path("/run/frr/ospfd.vty")
    assert frr.OspfSettings(vty_dir=Path("/run/frr"), instance=3).vty_socket("ospfd") == Path(
        "/run/frr/ospfd-3.vty")
    assert frr.OspfSettings(vty_dir=Path("/run/frr"), instance=3, pathspace="ns1").vty_socket(
        "ospfd") == Path("/run/frr/ns1/ospfd-3.vty")


@contextlib.contextmanager
def vty_server(path: Path, answer: str) -> Iterator[list[str]]:
    """One connection: every line (NUL-terminated) is recorded and answered with ``answer``
    and status 0, as FRR's vty does."""
    lines: list[str] = []
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    srv.settimeout(10.0)

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = srv.accept()
            with conn:
                buf = b""
                while chunk := conn.recv(4096):
                    buf += chunk
                    while b"\0" in buf:
                        line, _, buf = buf.partition(b"\0")
                        lines.append(line.decode())
                        conn.sendall(answer.encode() + b"\0\0\0\0")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield lines
    finally:
        srv.close()
        thread.join(10.0)


def test_an_instance_is_read_through_its_own_socket_with_instanced_commands(
    tmp_path: Path,
) -> None:
    lsa = {"asExternalLinkStates": [{"linkStateId": "192.0.2.1", "networkMask": 32,
                                     "lsaAge": 3}]}
    settings = frr.OspfSettings(vty_dir=tmp_path, instance=3, withdraw_wait=1.0)
    with vty_server(tmp_path / "ospfd-3.vty", json.dumps(lsa)) as lines:
        assert frr.FrrOspf(settings).originated() == {"192.0.2.1/32"}
    assert lines == ["enable", "show ip ospf 3 database external self-originate json"]
