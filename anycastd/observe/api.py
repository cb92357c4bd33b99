"""The HTTP API: status, metrics, liveness and operator flags, embedded in the daemon's loop.

Rule: the API holds no state of its own and never touches the health engine: it calls the
callables the daemon hands in (``status_provider``, ``alive``, ``set_flag``) and renders a
:class:`~anycastd.observe.metrics.Metrics`. It is served with aiohttp's ``AppRunner`` +
``SockSite`` on sockets bound by ``observe.sockets``, inside the daemon's event loop (never
``web.run_app``, which would own the loop and the signals).

Two listeners, two applications::

    TCP (api.listen, read-only)           unix socket (api.socket, the control socket)
    GET  /status                          GET  /status
    GET  /metrics (metrics enabled)       GET  /healthz
    GET  /healthz                         POST /services/{name}/maintenance  {"on": bool}
    POST /services/...  -> 403 read_only  POST /services/{name}/drain        {"on": bool}
                                               -> 200 {"service", "kind", "on", "state"};
                                                  404 unknown service; 400 bad body

Errors are JSON: ``{"error": "<short code>", "message": "<what to do>"}``.

Security: there is no authentication on either. A Prometheus scrape, or anyone else who
reaches the TCP port, can read the state but never change it. The operator flags are served
only on the control socket, mode 0660 with a configurable group (``api.socket_group``): the
file system decides who may drain a service.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from aiohttp import web

from anycastd.observe.metrics import CONTENT_TYPE, Metrics
from anycastd.observe.sockets import listen_tcp, listen_unix, unlink

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "FLAG_KINDS",
    "AliveCheck",
    "ApiServer",
    "Endpoint",
    "FlagKind",
    "FlagSetter",
    "StatusProvider",
    "create_app",
    "fetch_status",
    "post_flag",
]

log = logging.getLogger("anycastd.api")

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 9180

FlagKind = Literal["maintenance", "drain"]
FLAG_KINDS: Final[tuple[FlagKind, ...]] = ("maintenance", "drain")

#: Returns the status document (a fresh JSON-ready dict).
StatusProvider = Callable[[], Mapping[str, Any]]
#: True while the daemon's main loop is alive.
AliveCheck = Callable[[], bool]
#: ``set_flag(service, kind, on)``: apply an operator flag; False for an unknown service.
FlagSetter = Callable[[str, FlagKind, bool], bool]

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_STATUS_KEY: Final[web.AppKey[StatusProvider]] = web.AppKey("status_provider")
_ALIVE_KEY: Final[web.AppKey[AliveCheck]] = web.AppKey("alive")
_FLAG_KEY: Final[web.AppKey[FlagSetter]] = web.AppKey("set_flag")
_METRICS_KEY: Final = web.AppKey("metrics", Metrics)

_MAX_BODY: Final = 4096


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)


@web.middleware
async def _json_errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Every error as JSON (aiohttp's own 404/405 included); a handler bug is a 500 that
    is logged, never a traceback to the client."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        return _error(exc.status, code, f"{request.method} {request.path}: {exc.reason}")
    except Exception:
        log.exception("API handler failed: %s %s", request.method, request.path)
        return _error(500, "internal_error", "the daemon failed to answer; see its log")


async def _status(request: web.Request) -> web.Response:
    doc = request.app[_STATUS_KEY]()
    return web.json_response(doc, dumps=lambda d: json.dumps(d, sort_keys=False) + "\n")


async def _metrics(request: web.Request) -> web.Response:
    metrics = request.app[_METRICS_KEY]
    # rendering walks every series (a histogram per check): off the event loop, so a
    # scrape of 10k checks does not delay probe starts; metric values are lock protected
    body = await asyncio.to_thread(metrics.render)
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = CONTENT_TYPE
    return resp


async def _healthz(request: web.Request) -> web.Response:
    if request.app[_ALIVE_KEY]():
        return web.Response(text="ok\n")
    return web.Response(text="not alive\n", status=503)


def _parse_on(raw: bytes) -> bool | str:
    """The ``on`` flag of a body, or a message saying what is wrong with it."""
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        return 'the body is not JSON; send {"on": true} or {"on": false}'
    if not isinstance(body, dict):
        return 'the body must be a JSON object: {"on": true} or {"on": false}'
    unknown = sorted(set(body) - {"on"})
    if unknown:
        return f'unknown key(s) {", ".join(unknown)}; the body is {{"on": true|false}}'
    on = body.get("on")
    if not isinstance(on, bool):
        return f'"on" must be true or false, got {json.dumps(on)}'
    return on


def _flag_route(kind: FlagKind) -> _Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if request.content_type != "application/json":
            # A browser may send a "simple" cross-origin POST (text/plain, form) without
            # asking first; requiring JSON makes it ask (CORS preflight), and we never allow.
            return _error(415, "unsupported_media_type",
                          'send Content-Type: application/json with {"on": true|false}')
        if request.content_length is not None and request.content_length > _MAX_BODY:
            return _error(413, "body_too_large", f"the body is limited to {_MAX_BODY} bytes")
        parsed = _parse_on(await request.content.read(_MAX_BODY + 1))
        if isinstance(parsed, str):
            return _error(400, "bad_request", parsed)
        if not request.app[_FLAG_KEY](name, kind, parsed):
            return _error(404, "unknown_service", f"no service named {name!r}")
        state: object = None
        try:
            state = request.app[_STATUS_KEY]()["services"][name]["state"]
        except (KeyError, TypeError):
            state = None
        return web.json_response({"service": name, "kind": kind, "on": parsed, "state": state})

    return handler


async def _read_only(request: web.Request) -> web.Response:
    return _error(403, "read_only", "this listener is read-only; operator flags are set over "
                  "the control socket (api.socket), e.g. `anycastd drain SERVICE on`")


def create_app(
    *,
    status_provider: StatusProvider,
    alive: AliveCheck,
    set_flag: FlagSetter,
    metrics: Metrics | None = None,
    control: bool = True,
) -> web.Application:
    """The API application. ``metrics`` None: no ``/metrics`` route (metrics disabled).
    ``control`` False: the flag routes answer 403 (the TCP listener)."""
    app = web.Application(middlewares=[_json_errors], client_max_size=_MAX_BODY)
    app[_STATUS_KEY] = status_provider
    app[_ALIVE_KEY] = alive
    app[_FLAG_KEY] = set_flag
    app.router.add_get("/status", _status)
    app.router.add_get("/healthz", _healthz)
    if metrics is not None:
        app[_METRICS_KEY] = metrics
        app.router.add_get("/metrics", _metrics)
    for kind in FLAG_KINDS:
        route = _flag_route(kind) if control else _read_only
        app.router.add_post(f"/services/{{name}}/{kind}", route)
    return app


class ApiServer:
    """Serves an application on one TCP listener, inside the running loop.

    ``start`` binds (raises OSError when it cannot: the daemon should refuse to start),
    ``stop`` closes the listener and waits up to ``shutdown_timeout`` for requests in
    flight. Both are idempotent.
    """

    def __init__(self, app: web.Application, *, shutdown_timeout: float = 2.0) -> None:
        self._app = app
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None
        self._path: Path | None = None  # the unix socket to remove at stop

    async def start(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
        """Listen on ``host`` (an IPv4/IPv6 address, ``[v6]`` brackets allowed) and
        ``port`` (0: any free port; see :attr:`addresses`)."""
        if self._runner is None:
            await self.serve(listen_tcp(host, port))

    async def start_unix(self, path: Path, *, group: str = "", mode: int = 0o660) -> None:
        """Listen on the unix socket ``path`` with ``mode`` and ``group``
        (:func:`~anycastd.observe.sockets.listen_unix`: a live socket, an unknown group or
        one this process may not chown to raise OSError)."""
        if self._runner is None:
            await self.serve([listen_unix(path, group=group, mode=mode)], path=path)

    async def serve(self, socks: list[socket.socket], *, path: Path | None = None) -> None:
        """Serve on sockets already listening (``observe.sockets``; the daemon binds them
        at start and serves them after its first pass). ``path``: the unix socket's file,
        removed at :meth:`stop`. The sockets belong to the server from here on."""
        if self._runner is not None:
            return
        runner = web.AppRunner(
            self._app, access_log=None, shutdown_timeout=self._shutdown_timeout
        )
        try:
            await runner.setup()
            for sock in socks:
                await web.SockSite(runner, sock).start()
        except BaseException:
            await runner.cleanup()
            for sock in socks:
                sock.close()
            if path is not None:
                unlink(path)
            raise
        self._runner = runner
        self._path = path

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        path, self._path = self._path, None
        if path is not None:
            unlink(path)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) pairs; empty when not started."""
        if self._runner is None:
            return []
        return [(str(a[0]), int(a[1])) for a in self._runner.addresses]

    @property
    def url(self) -> str:
        """``http://host:port`` of the first listener, or ``unix:PATH`` (logs and tests)."""
        if self._path is not None:
            return f"unix:{self._path}"
        host, port = self.addresses[0]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# --------------------------------------------------------------------------- client
# For the CLI (`anycastd status`, `anycastd maintenance|drain`): synchronous, stdlib only,
# so the command starts fast and needs no event loop. Never through an http_proxy from the
# environment (http.client ignores it): the daemon is local.


@dataclass(frozen=True)
class Endpoint:
    """Where the CLI reaches the daemon: the control socket (``path``) or TCP."""

    path: Path | None = None
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT

    def __str__(self) -> str:
        if self.path is not None:
            return str(self.path)
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._socket_path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _request(
    endpoint: Endpoint, method: str, target: str, body: bytes | None, timeout: float
) -> tuple[int, Any]:
    conn: http.client.HTTPConnection
    if endpoint.path is not None:
        conn = _UnixConnection(endpoint.path, timeout)
    else:
        conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=timeout)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    try:
        conn.request(method, target, body=body, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    except http.client.HTTPException as exc:  # something else listens there
        raise RuntimeError(f"not an HTTP answer: {exc!r}") from None
    finally:
        conn.close()
    try:
        return resp.status, json.loads(raw)
    except ValueError as exc:
        if resp.status >= 400:
            return resp.status, {"error": "http_error", "message": resp.reason}
        raise RuntimeError(f"the answer is not anycastd's JSON: {exc}") from None


def fetch_status(endpoint: Endpoint, timeout: float = 5.0) -> dict[str, Any]:
    """GET /status of a running daemon. Raises OSError when it is not reachable,
    RuntimeError for an error answer."""
    code, body = _request(endpoint, "GET", "/status", None, timeout)
    if code != 200 or not isinstance(body, dict):
        raise RuntimeError(f"/status answered {code}: {body}")
    return body


def post_flag(
    endpoint: Endpoint, service: str, kind: FlagKind, on: bool, *, timeout: float = 5.0
) -> tuple[int, dict[str, Any]]:
    """POST /services/{service}/{kind}; returns (HTTP status, JSON body)."""
    from urllib.parse import quote

    body = json.dumps({"on": on}).encode()
    code, answer = _request(
        endpoint, "POST", f"/services/{quote(service, safe='')}/{kind}", body, timeout)
    return code, answer if isinstance(answer, dict) else {"body": answer}
