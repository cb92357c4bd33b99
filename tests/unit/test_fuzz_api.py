"""Fuzzed API requests (issue 13) against the real aiohttp application on 127.0.0.1 (port 0):
malformed JSON, wrong content types, huge bodies, unknown paths and methods, raw garbage on
the socket and slow clients. Every answer is a 2xx for a valid request or a 4xx -- never a
5xx, never a crash -- the server keeps answering, and its memory stays bounded.

Examples per run: ``ANYCASTD_FUZZ_EXAMPLES`` (default 200)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from anycastd.core.health import CheckParams, CheckState, ServiceHealth, ServiceParams
from anycastd.observe.api import ApiServer, FlagKind, create_app
from anycastd.observe.metrics import Metrics
from anycastd.observe.status import build_status
from tests.integration.fault_support import record_section

EXAMPLES = int(os.environ.get("ANYCASTD_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


class Node:
    def __init__(self) -> None:
        params = ServiceParams("dns", (CheckParams("udp"),), start_state=CheckState.UP)
        self.health = {"dns": ServiceHealth.initial(params, 0.0)}
        self.flags = 0

    def status(self) -> dict[str, Any]:
        return build_status("edge1", 1_700_000_000.0, self.health, 10.0, version="1")

    def alive(self) -> bool:
        return True

    def set_flag(self, name: str, kind: FlagKind, on: bool) -> bool:
        if name not in self.health:
            return False
        self.flags += 1
        h = self.health[name]
        step = h.set_maintenance(on, 10.0) if kind == "maintenance" else h.set_draining(on, 10.0)
        self.health[name] = step.health
        return True


class Server:
    """The real app and ApiServer, served by an event loop in a thread."""

    def __init__(self) -> None:
        self.node = Node()
        self.loop = asyncio.new_event_loop()
        self.server: ApiServer | None = None
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)
        assert self.server is not None
        self.port = self.server.addresses[0][1]

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        app = create_app(status_provider=self.node.status, alive=self.node.alive,
                         set_flag=self.node.set_flag, metrics=Metrics(version="1"))
        self.server = ApiServer(app)
        self.loop.run_until_complete(self.server.start("127.0.0.1", 0))
        ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        assert self.server is not None
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def raw(self, data: bytes, *, timeout: float = 5.0, pause: float = 0.0,
            half_close: bool = False) -> bytes:
        """Send ``data`` (in two halves ``pause`` apart: a slow client), read the answer.
        b"RESET" when the server closed with part of the request unread: the kernel then
        resets the connection and may drop the answer it had already sent."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            half = len(data) // 2 if pause else len(data)
            out = b""
            try:
                s.sendall(data[:half])
                if pause:
                    time.sleep(pause)
                s.sendall(data[half:])
                if half_close:  # aiohttp takes a half-close for a client gone away
                    s.shutdown(socket.SHUT_WR)
                while chunk := s.recv(65536):
                    out += chunk
            except ConnectionResetError:
                return out or b"RESET"
            except OSError:  # closed by the server meanwhile (EPIPE, ENOTCONN)
                pass
            return out

    def healthz(self) -> bool:
        answer = self.raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return answer.startswith(b"HTTP/1.1 200")


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = Server()
    yield srv
    srv.stop()


_STATUS = re.compile(rb"^HTTP/1\.[01] (\d{3})")


def status_of(answer: bytes) -> int | None:
    m = _STATUS.match(answer)
    return int(m.group(1)) if m else None


PATHS = st.one_of(
    st.sampled_from(["/status", "/healthz", "/metrics", "/services/dns/maintenance",
                     "/services/dns/drain", "/services/nope/drain", "/services//drain",
                     "/", "/services/dns", "/../../etc/passwd", "/status?x=1",
                     "/services/%00/drain", "/services/" + "a" * 5000 + "/drain"]),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=60)
    .map(lambda s: "/" + s),
)
METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS",
                           "TRACE", "CONNECT", "BREW", "get"])
CTYPES = st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded",
                          "multipart/form-data; boundary=x", "application/json; charset=utf-8",
                          "", "application/json\x00", "*/*"])
BODIES = st.one_of(
    st.just(b'{"on": true}'), st.just(b'{"on": false}'), st.binary(max_size=300),
    st.text(max_size=300).map(str.encode),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                 lambda inner: st.lists(inner, max_size=3)
                 | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                 max_leaves=8).map(lambda v: json.dumps(v).encode()),
    st.integers(4000, 200_000).map(lambda n: b'{"on": true, "x": "' + b"a" * n + b'"}'),
)


def _max_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _generation_high_water() -> None:
    """Draw the same kinds of examples without sending them: hypothesis's own generation
    reaches ~210 MB of peak RSS from a fresh example database, which would otherwise be
    counted as the server's growth below (seen in CI: 'max RSS grew 209232 KiB')."""

    @FUZZ
    @given(METHODS, PATHS, CTYPES, BODIES, st.booleans())
    def draw(method: str, path: str, ctype: str, body: bytes, lie_length: bool) -> None:
        pass

    draw()


def test_fuzzed_requests_get_2xx_or_4xx_and_the_server_stays_up(server: Server) -> None:
    seen: dict[str, int] = {}
    _generation_high_water()
    rss0 = _max_rss_kib()

    @FUZZ
    @given(METHODS, PATHS, CTYPES, BODIES, st.booleans())
    # one request known to succeed and one known to fail, whatever the generator draws: the
    # 2xx/4xx assertions below must not depend on luck (~0.4 % of runs drew no 2xx)
    @example("GET", "/status", "", b"", False)
    @example("GET", "/nope", "", b"", False)
    def run(method: str, path: str, ctype: str, body: bytes, lie_length: bool) -> None:
        length = len(body) // 2 if lie_length and body else len(body)
        head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                f"Content-Length: {length}\r\n").encode("latin-1", "replace")
        if ctype:
            head += b"Content-Type: " + ctype.encode("latin-1", "replace") + b"\r\n"
        answer = server.raw(head + b"\r\n" + body)
        code = status_of(answer)
        key = "reset (answered before the body was read)" if answer == b"RESET" else (
            f"{code // 100}xx" if code is not None else "")
        assert key, answer[:200]
        assert code is None or code < 500, answer[:400]
        seen[key] = seen.get(key, 0) + 1

    run()
    assert server.healthz()
    assert seen.get("4xx", 0) > 0, seen
    assert seen.get("2xx", 0) > 0, seen
    grown = _max_rss_kib() - rss0
    assert grown < 200_000, f"max RSS grew {grown} KiB"
    record_section("fuzz", "API: method x path x content type x body", {**seen,
                   "max_rss_growth_kib": grown})


def test_raw_garbage_and_slow_clients_never_crash_the_server(server: Server) -> None:
    seen: dict[str, int] = {}

    @FUZZ
    @given(st.binary(max_size=2000) | st.text(max_size=500).map(str.encode),
           st.sampled_from([0.0, 0.0, 0.0, 0.05]))
    def run(data: bytes, pause: float) -> None:
        answer = server.raw(data, pause=pause, half_close=True)
        code = status_of(answer)
        key = ("reset" if answer == b"RESET" else "no answer (closed)") if code is None else (
            f"{code // 100}xx")
        assert code is None or code < 500, answer[:400]
        seen[key] = seen.get(key, 0) + 1

    run()
    assert server.healthz()
    record_section("fuzz", "API: raw bytes on the socket, slow clients", seen)


def test_a_huge_body_is_refused_without_reading_it(server: Server) -> None:
    head = (b"POST /services/dns/drain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n")
    answer = server.raw(head + b"{" * 65536, timeout=1.0)
    assert status_of(answer) == 413, answer[:200]
    assert server.healthz()
