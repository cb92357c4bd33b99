"""Config check models -> healthchecks probe objects.

The only place that knows both schemas. The config's check options are named like the
probe fields on purpose (docs/configuration.md), so this is a table, not logic: a new probe
type is one line here plus its config model.
"""

from __future__ import annotations

from typing import Any

from anycastd import config as cfg
from anycastd.engine.scheduler import CheckSpec
from healthchecks.dns import DnsProbe
from healthchecks.exec import ExecProbe
from healthchecks.file import FileProbe
from healthchecks.http import HttpProbe
from healthchecks.link import LinkProbe
from healthchecks.listen import ListenProbe
from healthchecks.process import ProcessProbe
from healthchecks.result import Probe
from healthchecks.tcp import TcpProbe
from healthchecks.tls import TlsProbe

_PROBES: dict[type[Any], type[Any]] = {
    cfg.TcpCheck: TcpProbe,
    cfg.HttpCheck: HttpProbe,
    cfg.HttpsCheck: HttpProbe,
    cfg.DnsCheck: DnsProbe,
    cfg.TlsCheck: TlsProbe,
    cfg.ExecCheck: ExecProbe,
    cfg.FileCheck: FileProbe,
    cfg.ProcessCheck: ProcessProbe,
    cfg.ListenCheck: ListenProbe,
    cfg.LinkCheck: LinkProbe,
}

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
    probe: Probe = _PROBES[type(check)](**options)
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
