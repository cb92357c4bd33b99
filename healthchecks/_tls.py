"""SSL context construction shared by the HTTP and TLS probes."""

from __future__ import annotations

import ssl


def client_context(
    *,
    verify: bool,
    ca_file: str | None = None,
    client_cert: str | None = None,
    client_key: str | None = None,
) -> ssl.SSLContext:
    """A client context: system trust (or ``ca_file``), optional client certificate.

    With ``verify`` off neither the chain nor the host name is checked; the handshake
    still happens, so a broken TLS stack on the target still fails the probe.
    Raises OSError / ssl.SSLError when a file is missing or unusable.
    """
    if verify:
        ctx = ssl.create_default_context(cafile=ca_file)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if client_cert is not None:
        ctx.load_cert_chain(client_cert, client_key)
    return ctx


def strip_port(host: str) -> str:
    """Host part of a Host header value (``example.com:8443``, ``[::1]:443``)."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host
