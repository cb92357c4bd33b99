"""Config check models -> healthchecks probe objects.

The only place that knows both schemas. The config's check options are named like the
probe fields on purpose (docs/configuration.md), so this is a table, not logic: a new probe
type is one line here plus its config model.
"""

from __future__ import annotations

import importlib
from typing import Any

from anycastd import config as cfg
from anycastd.engine.scheduler import CheckSpec
from healthchecks.result import Probe

# check model -> (module, probe class). Imported on first use: aiohttp, dnspython and
# cryptography cost ~0.1 s of every start on a node that runs none of those checks.
_PROBES: dict[type[Any], tuple[str, str]] = {
    cfg.TcpCheck: ("healthchecks.tcp", "TcpProbe"),
    cfg.HttpCheck: ("healthchecks.http", "HttpProbe"),
    cfg.HttpsCheck: ("healthchecks.http", "HttpProbe"),
    cfg.DnsCheck: ("healthchecks.dns", "DnsProbe"),
    cfg.TlsCheck: ("healthchecks.tls", "TlsProbe"),
    cfg.ExecCheck: ("healthchecks.exec", "ExecProbe"),
    cfg.FileCheck: ("healthchecks.file", "FileProbe"),
    cfg.ProcessCheck: ("healthchecks.process", "ProcessProbe"),
    cfg.ListenCheck: ("healthchecks.listen", "ListenProbe"),
    cfg.LinkCheck: ("healthchecks.link", "LinkProbe"),
}


def _probe_class(check: cfg.Check) -> type[Any]:
    module, name = _PROBES[type(check)]
    cls: type[Any] = getattr(importlib.import_module(module), name)
    return cls


# Options the config keeps as ordered tuples but the probe compares as sets.
_AS_SET = ("expect_status",)


def build_probe(check: cfg.Check) -> Probe:
    options = check.probe_options()
    for key in _AS_SET:
        if key in options:
            options[key] = frozenset(options[key])
    if isinstance(check, cfg.DnsCheck):
        options["expect"] = frozenset(options["expect"])
    if isinstance(check, cfg.ExecCheck) and not options.get("env"):
        options["env"] = None  # inherit anycastd's environment
    probe: Probe = _probe_class(check)(**options)
    return probe


def check_spec(owner: str, check: cfg.Check) -> CheckSpec:
    """What the scheduler runs for ``check`` (effective timing from the config model);
    ``owner`` is the service, or the real server's engine name."""
    return CheckSpec(
        service=owner,
        check=check.name,
        probe=build_probe(check),
        interval=check.interval,
        fast_interval=check.fast_interval,
        timeout=check.timeout,
        jitter=check.jitter,
    )
