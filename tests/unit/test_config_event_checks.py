"""Config of the event-driven check types (process, listen, link): their options, their own
timing defaults, and the errors an operator gets."""

from __future__ import annotations

from pathlib import Path

from anycastd.config import ListenCheck, ProcessCheck, loads
from anycastd.engine.probes import build_probe
from healthchecks.link import LinkProbe
from healthchecks.listen import ListenProbe
from healthchecks.process import ProcessProbe
from tests.unit.test_config import issues, keyed

SERVICE = """
[services.web]
prefixes = ["192.0.2.10/32"]
interval = "5s"
rise = 5
"""


def checks(text: str) -> list[object]:
    return list(loads(SERVICE + text).services["web"].checks)


def test_each_type_builds_its_probe_with_the_options_given() -> None:
    process, listen, link = checks(
        '[[services.web.checks]]\ntype = "process"\ncmdline = ["nginx", "-g", "daemon off;"]\n'
        '[[services.web.checks]]\ntype = "listen"\naddress = "127.0.0.1"\nport = 8080\n'
        'protocol = "udp"\n'
        '[[services.web.checks]]\ntype = "link"\ninterface = "eth0"\n'
    )
    assert build_probe(process) == ProcessProbe(cmdline=("nginx", "-g", "daemon off;"))
    assert build_probe(listen) == ListenProbe("127.0.0.1", 8080, "udp")
    assert build_probe(link) == LinkProbe("eth0")


def test_event_checks_take_their_own_timing_not_the_services() -> None:
    # the service says 5 s and rise 5 for its connecting checks; a listen check costs one
    # shared table read, a process exit is an event: they keep their own defaults
    process, listen = checks(
        '[[services.web.checks]]\ntype = "process"\npidfile = "/run/web.pid"\n'
        '[[services.web.checks]]\ntype = "listen"\naddress = "127.0.0.1"\nport = 80\n'
    )
    assert isinstance(process, ProcessCheck)
    assert isinstance(listen, ListenCheck)
    assert (process.interval, process.fast_interval, process.rise, process.fall) == (
        1.0, 0.2, 2, 1)
    assert (listen.interval, listen.fast_interval, listen.rise, listen.fall) == (0.1, 0.1, 3, 2)
    assert listen.timeout == 0.05  # min(1 s, interval / 2), as for every check


def test_an_event_checks_own_timing_keys_apply() -> None:
    (listen,) = checks(
        '[[services.web.checks]]\ntype = "listen"\naddress = "127.0.0.1"\nport = 80\n'
        'interval = "250ms"\nfall = 3\n'
    )
    assert isinstance(listen, ListenCheck)
    assert (listen.interval, listen.fall, listen.rise) == (0.25, 3, 3)


def test_a_process_check_needs_exactly_one_way_to_find_the_process(tmp_path: Path) -> None:
    found = keyed(issues(tmp_path, SERVICE
                         + '[[services.web.checks]]\ntype = "process"\npidfile = "/run/x.pid"\n'
                         'unit = "x.service"\n'))
    assert found == {("anycastd.toml", "services.web.checks[0]"):
                     "give exactly one of pidfile, cmdline or unit"}


def test_a_listen_check_wants_an_ip_address_not_a_name(tmp_path: Path) -> None:
    found = keyed(issues(tmp_path, SERVICE
                         + '[[services.web.checks]]\ntype = "listen"\naddress = "localhost"\n'
                         'port = 80\n'))
    assert list(found) == [("anycastd.toml", "services.web.checks[0].address")]
