"""The HTTP API: status, metrics, liveness and operator flags, embedded in the daemon's loop.

Rule: the API holds no state of its own and never touches the health engine: it calls the
callables the daemon hands in (``status_provider``, ``alive``, ``set_flag``) and renders a
:class:`~anycastd.observe.metrics.Metrics`. It is served with aiohttp's ``AppRunner`` +
``TCPSite`` inside the daemon's event loop (never ``web.run_app``, which would own the
loop and the signals).

Routes::

    GET  /status                          200 JSON status document (observe/status.py)
    GET  /metrics                         200 Prometheus text (only when metrics enabled)
    GET  /healthz                         200 "ok" while alive(), else 503 "not alive"
    POST /services/{name}/maintenance     body {"on": true|false}
    POST /services/{name}/drain           body {"on": true|false}
         -> 200 {"service", "kind", "on", "state"}; 404 unknown service; 400 bad body

Errors are JSON: ``{"error": "<short code>", "message": "<what to do>"}``.

Security: there is no authentication. The default listener is 127.0.0.1:9180; keep it on
loopback and put a reverse proxy (TLS, auth) in front for remote access. Anyone who can
reach the port can put services into maintenance or drain.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Literal

from aiohttp import web

from anycastd.observe.metrics import CONTENT_TYPE, Metrics

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "FLAG_KINDS",
    "AliveCheck",
    "ApiServer",
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


def create_app(
    *,
    status_provider: StatusProvider,
    alive: AliveCheck,
    set_flag: FlagSetter,
    metrics: Metrics | None = None,
) -> web.Application:
    """The API application. ``metrics`` None: no ``/metrics`` route (metrics disabled)."""
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
        app.router.add_post(f"/services/{{name}}/{kind}", _flag_route(kind))
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

    async def start(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
        """Listen on ``host`` (an IPv4/IPv6 address, ``[v6]`` brackets allowed) and
        ``port`` (0: any free port; see :attr:`addresses`)."""
        if self._runner is not None:
            return
        runner = web.AppRunner(
            self._app, access_log=None, shutdown_timeout=self._shutdown_timeout
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, host.strip("[]"), port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The bound (host, port) pairs; empty when not started."""
        if self._runner is None:
            return []
        return [(str(a[0]), int(a[1])) for a in self._runner.addresses]

    @property
    def url(self) -> str:
        """``http://host:port`` of the first listener (for logs and tests)."""
        host, port = self.addresses[0]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


# --------------------------------------------------------------------------- client
# For the CLI (`anycastd status`, `anycastd maintenance|drain`): synchronous, stdlib only,
# so the command starts fast and needs no event loop.


def _base(host: str, port: int) -> str:
    host = host.strip("[]")
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _request(req: urllib.request.Request, timeout: float) -> tuple[int, Any]:
    import urllib.error

    # the daemon is local: never through an http_proxy from the environment
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        # the URL is built from the validated [api] listen address: always http://host:port
        with opener.open(req, timeout=timeout) as resp:
            try:
                return int(resp.status), json.loads(resp.read())
            except ValueError as exc:  # something else listens on the port
                raise RuntimeError(f"the answer is not anycastd's JSON: {exc}") from None
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read())
        except ValueError:
            return exc.code, {"error": "http_error", "message": str(exc.reason)}


def fetch_status(host: str, port: int, timeout: float = 5.0) -> dict[str, Any]:
    """GET /status of a running daemon. Raises OSError (URLError) when it is not reachable,
    RuntimeError for an error answer."""
    req = urllib.request.Request(f"{_base(host, port)}/status")  # noqa: S310  # see _request
    code, body = _request(req, timeout)
    if code != 200 or not isinstance(body, dict):
        raise RuntimeError(f"/status answered {code}: {body}")
    return body


def post_flag(
    host: str, port: int, service: str, kind: FlagKind, on: bool, *, timeout: float = 5.0
) -> tuple[int, dict[str, Any]]:
    """POST /services/{service}/{kind}; returns (HTTP status, JSON body)."""
    from urllib.parse import quote

    req = urllib.request.Request(  # noqa: S310  # see _request
        f"{_base(host, port)}/services/{quote(service, safe='')}/{kind}",
        data=json.dumps({"on": on}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    code, body = _request(req, timeout)
    return code, body if isinstance(body, dict) else {"body": body}
