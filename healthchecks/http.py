"""HTTP(S) probe (aiohttp): OK when the status is expected and the body matches.

Contract and why:

* One fresh session and connection per run (no pooling): a health check must exercise
  connect + TLS handshake every time, not reuse a connection that predates an outage.
* Redirects are not followed: the probe reports what *this* server answered; add 301/302
  to ``expect_status`` if a redirect is the healthy answer.
* ``host_header`` sets Host; SNI (and the name verified against the certificate) is
  ``sni`` if given, else the host of ``host_header``, else the URL's host. This is what
  checking a virtual host on a backend address (``https://10.1.0.10/`` with
  ``host_header="www.example.com"``) needs.
* ``body_regex`` (Python ``re.search``) is matched against at most the first 64 KiB of
  the body, decoded as UTF-8 with replacement, so a huge body cannot eat memory or time.
* TLS problems (bad chain, name mismatch) are FAIL; an unreadable CA/client cert file is
  ERROR (misconfiguration: says nothing about the target).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from dataclasses import dataclass, field
from functools import partial

import aiohttp
from yarl import URL

from healthchecks._base import Stage, guarded, one_line, os_reason, str_pairs
from healthchecks._tls import client_context, strip_port
from healthchecks.result import ProbeResult, Status

__all__ = ["BODY_LIMIT", "HttpProbe"]

BODY_LIMIT = 64 * 1024


def _status_set(codes: frozenset[int]) -> str:
    return "{" + ", ".join(str(c) for c in sorted(codes)) + "}"


@dataclass(frozen=True, slots=True)
class HttpProbe:
    url: str
    method: str = "GET"
    expect_status: frozenset[int] = field(default_factory=lambda: frozenset({200}))
    body_regex: str | None = None
    host_header: str | None = None
    sni: str | None = None
    verify: bool = True
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "expect_status", frozenset(self.expect_status))
        object.__setattr__(self, "headers", str_pairs(self.headers))
        object.__setattr__(self, "method", self.method.upper())
        url = URL(self.url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"url must be http:// or https:// with a host, got {self.url!r}")
        if not self.expect_status:
            raise ValueError("expect_status must not be empty")
        if any(not 100 <= c <= 599 for c in self.expect_status):
            raise ValueError(f"expect_status must be HTTP codes 100..599: {self.expect_status}")
        if self.body_regex is not None:
            try:
                re.compile(self.body_regex)
            except re.error as exc:
                raise ValueError(f"body_regex {self.body_regex!r}: {exc}") from exc
        if self.client_key is not None and self.client_cert is None:
            raise ValueError("client_key needs client_cert")

    def describe(self) -> str:
        return f"http {self.method} {self.url}"

    def _server_hostname(self) -> str | None:
        if self.sni is not None:
            return self.sni
        if self.host_header is not None:
            return strip_port(self.host_header)
        return None  # aiohttp uses the URL's host

    async def run(self, timeout: float) -> ProbeResult:  # noqa: ASYNC109 (contract)
        return await guarded(self._check, timeout)

    async def _check(self, stage: Stage) -> tuple[Status, str]:
        https = URL(self.url).scheme == "https"
        ssl_arg: ssl.SSLContext | bool = False
        if https:
            stage.name = "tls setup"
            # In a thread: loading the system trust store is file I/O that would otherwise
            # stall every other check on the event loop.
            try:
                ssl_arg = await asyncio.to_thread(
                    partial(
                        client_context,
                        verify=self.verify,
                        ca_file=self.ca_file,
                        client_cert=self.client_cert,
                        client_key=self.client_key,
                    )
                )
            except (OSError, ssl.SSLError) as exc:
                return Status.ERROR, f"tls setup: {exc}"
        headers = dict(self.headers)
        if self.host_header is not None:
            headers["Host"] = self.host_header

        # Our own deadline (in guarded) bounds the run; aiohttp's default 5 minute total
        # timeout is switched off so there is exactly one clock.
        connector = aiohttp.TCPConnector(force_close=True, limit=1, use_dns_cache=False)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None)
        ) as session:
            stage.name = "request"
            try:
                async with session.request(
                    self.method,
                    self.url,
                    headers=headers,
                    allow_redirects=False,
                    ssl=ssl_arg,
                    server_hostname=self._server_hostname() if https else None,
                ) as resp:
                    if resp.status not in self.expect_status:
                        return (
                            Status.FAIL,
                            f"status {resp.status} not in {_status_set(self.expect_status)}",
                        )
                    if self.body_regex is None:
                        return Status.OK, f"status {resp.status}"
                    stage.name = "reading body"
                    body = bytearray()
                    while len(body) < BODY_LIMIT:
                        chunk = await resp.content.read(BODY_LIMIT - len(body))
                        if not chunk:
                            break
                        body += chunk
            except aiohttp.ClientConnectorCertificateError as exc:
                err, detail = exc.certificate_error, str(exc.certificate_error)
                if isinstance(err, ssl.SSLCertVerificationError):
                    detail = err.verify_message  # without the "[SSL: ...] (_ssl.c)" noise
                return Status.FAIL, f"certificate verify failed: {detail}"
            except aiohttp.ClientSSLError as exc:
                return Status.FAIL, f"tls: {exc}"
            except aiohttp.ClientConnectorError as exc:
                return Status.FAIL, f"connect: {os_reason(exc.os_error)}"
            except aiohttp.ClientError as exc:
                return Status.FAIL, f"{stage.name}: {type(exc).__name__}: {exc}"

        text = body.decode("utf-8", "replace")
        if re.search(self.body_regex, text) is None:
            return Status.FAIL, one_line(f"body does not match /{self.body_regex}/")
        return Status.OK, f"status {resp.status}, body matches"
