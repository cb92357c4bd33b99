"""``python -m healthchecks <probe> [options]``: run one probe by hand.

Prints one Nagios-style line, ``OK - tcp 127.0.0.1:80 - 0.4ms``, and exits like a Nagios
plugin: 0 OK, 2 CRITICAL (FAIL or TIMEOUT), 3 UNKNOWN (ERROR, and usage errors, which
argparse would otherwise report as 2 and so be mistaken for CRITICAL). User errors print
a message, never a traceback.
"""

# Probe modules are imported inside make_probe on purpose: a manual run loads only the
# probe it needs (aiohttp/dnspython/cryptography together cost ~0.5s of startup).

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from healthchecks.result import Probe, ProbeResult, Status

EXIT_OK = 0
EXIT_CRITICAL = 2
EXIT_UNKNOWN = 3

_LABELS = {
    Status.OK: ("OK", EXIT_OK),
    Status.FAIL: ("CRITICAL", EXIT_CRITICAL),
    Status.TIMEOUT: ("CRITICAL", EXIT_CRITICAL),
    Status.ERROR: ("UNKNOWN", EXIT_UNKNOWN),
}

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_UNKNOWN, f"UNKNOWN - {self.prog}: {message}\n")


def duration(text: str) -> float:
    """Seconds from ``2``, ``1.5s``, ``250ms``, ``7d`` (same units as the config)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", text)
    if m is None:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (e.g. 2s, 250ms, 7d)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def _pair(sep: str) -> Callable[[str], tuple[str, str]]:
    def parse(text: str) -> tuple[str, str]:
        key, found, value = text.partition(sep)
        if not found or not key.strip():
            raise argparse.ArgumentTypeError(f"expected NAME{sep}VALUE, got {text!r}")
        return key.strip(), value.strip() if sep == ":" else value

    return parse


def _status_codes(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid status list {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m healthchecks",
        description="Run one health probe and print a Nagios-style line.",
    )
    parser.add_argument("--timeout", type=duration, default=5.0, help="deadline (default 5s)")
    # Accept --timeout after the probe name too; SUPPRESS keeps the top-level default
    # unless it is given there.
    common = _Parser(add_help=False)
    common.add_argument("--timeout", type=duration, default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="probe", required=True, metavar="PROBE")

    tcp = sub.add_parser("tcp", parents=[common], help="TCP connect")
    tcp.add_argument("--host", required=True)
    tcp.add_argument("--port", type=int, required=True)

    http = sub.add_parser("http", parents=[common], aliases=["https"], help="HTTP(S) request")
    http.add_argument("--url", required=True)
    http.add_argument("--method", default="GET")
    http.add_argument(
        "--expect-status", type=_status_codes, action="extend", metavar="CODES",
        help="accepted codes, comma separated or repeated (default 200)",
    )  # fmt: skip
    http.add_argument("--body-regex")
    http.add_argument("--host-header")
    http.add_argument("--sni")
    http.add_argument("--insecure", action="store_true", help="do not verify the certificate")
    http.add_argument("--ca-file")
    http.add_argument("--client-cert")
    http.add_argument("--client-key")
    http.add_argument(
        "--header", type=_pair(":"), action="append", default=[], metavar="'NAME: VALUE'"
    )

    dns = sub.add_parser("dns", parents=[common], help="DNS query")
    dns.add_argument("--server", required=True)
    dns.add_argument("--port", type=int, default=53)
    dns.add_argument("--qname", required=True)
    dns.add_argument("--qtype", default="A")
    dns.add_argument("--rcode", default="NOERROR")
    dns.add_argument("--expect", action="append", default=[], help="required answer (repeat)")
    dns.add_argument("--transport", choices=["udp", "tcp"], default="udp")

    tls = sub.add_parser("tls", parents=[common], help="TLS handshake and certificate lifetime")
    tls.add_argument("--host", required=True)
    tls.add_argument("--port", type=int, required=True)
    tls.add_argument("--server-name")
    tls.add_argument("--min-remaining", type=duration, default=0.0)
    tls.add_argument("--insecure", action="store_true", help="do not verify the certificate")
    tls.add_argument("--ca-file")

    exe = sub.add_parser("exec", parents=[common], help="run a program (no shell); exit 0 is OK")
    exe.add_argument("--env", type=_pair("="), action="append", metavar="NAME=VALUE")
    exe.add_argument("--cwd")
    exe.add_argument("--output-limit", type=int, default=4096)
    exe.add_argument("argv", nargs=argparse.REMAINDER, help="-- program [args...]")

    file = sub.add_parser("file", parents=[common], help="path present/absent")
    file.add_argument("--path", required=True)
    file.add_argument("--expect", choices=["present", "absent"], default="present")

    proc = sub.add_parser(
        "process", parents=[common],
        help="a process is alive (by --pidfile, --unit, or -- exact argv)",
    )  # fmt: skip
    which = proc.add_mutually_exclusive_group()
    which.add_argument("--pidfile")
    which.add_argument("--unit", help="systemd unit (cgroup under system.slice)")
    proc.add_argument("--proc-root", default="/proc", help=argparse.SUPPRESS)
    proc.add_argument("--cgroup-root", default="/sys/fs/cgroup", help=argparse.SUPPRESS)
    proc.add_argument("argv", nargs=argparse.REMAINDER, help="-- exact command line to match")

    listen = sub.add_parser(
        "listen", parents=[common], help="a local socket listens (kernel table, no connect)"
    )
    listen.add_argument("--address", required=True, help="IP literal; 0.0.0.0/:: = wildcard")
    listen.add_argument("--port", type=int, required=True)
    listen.add_argument("--protocol", choices=["tcp", "udp"], default="tcp")
    listen.add_argument("--netns", help="network namespace name (default: our own)")

    link = sub.add_parser("link", parents=[common], help="an interface is up (IFF_UP, operstate)")
    link.add_argument("--interface", required=True)
    link.add_argument("--netns", help="network namespace name (default: our own)")
    return parser


def make_probe(args: argparse.Namespace) -> Probe:
    """Build the probe the arguments name; raises ValueError for invalid options.

    Imports are per probe so a quick manual check only loads what it needs.
    """
    kind: str = args.probe
    if kind == "tcp":
        from healthchecks.tcp import TcpProbe

        return TcpProbe(args.host, args.port)
    if kind in ("http", "https"):
        from healthchecks.http import HttpProbe

        return HttpProbe(
            url=args.url,
            method=args.method,
            expect_status=frozenset(args.expect_status or [200]),
            body_regex=args.body_regex,
            host_header=args.host_header,
            sni=args.sni,
            verify=not args.insecure,
            ca_file=args.ca_file,
            client_cert=args.client_cert,
            client_key=args.client_key,
            headers=tuple(args.header),
        )
    if kind == "dns":
        from healthchecks.dns import DnsProbe

        return DnsProbe(
            server=args.server,
            qname=args.qname,
            port=args.port,
            qtype=args.qtype,
            rcode=args.rcode,
            expect=frozenset(args.expect),
            transport=args.transport,
        )
    if kind == "tls":
        from healthchecks.tls import TlsProbe

        return TlsProbe(
            host=args.host,
            port=args.port,
            server_name=args.server_name,
            min_remaining=args.min_remaining,
            verify=not args.insecure,
            ca_file=args.ca_file,
        )
    if kind == "exec":
        from healthchecks.exec import ExecProbe

        argv = list(args.argv)
        if argv[:1] == ["--"]:
            argv = argv[1:]
        return ExecProbe(
            argv=tuple(argv),
            env=tuple(args.env) if args.env else None,
            cwd=args.cwd,
            output_limit=args.output_limit,
        )
    if kind == "file":
        from healthchecks.file import FileProbe

        return FileProbe(path=args.path, expect=args.expect)
    if kind == "process":
        from healthchecks.process import ProcessProbe

        argv = list(args.argv)
        if argv[:1] == ["--"]:
            argv = argv[1:]
        return ProcessProbe(
            pidfile=args.pidfile,
            cmdline=tuple(argv) if argv else None,
            unit=args.unit,
            proc_root=args.proc_root,
            cgroup_root=args.cgroup_root,
        )
    if kind == "listen":
        from healthchecks.listen import ListenProbe

        return ListenProbe(args.address, args.port, args.protocol, netns=args.netns)
    if kind == "link":
        from healthchecks.link import LinkProbe

        return LinkProbe(args.interface, netns=args.netns)
    raise ValueError(f"unknown probe {kind!r}")  # unreachable: argparse restricts choices


def format_line(probe: Probe, result: ProbeResult) -> str:
    label, _ = _LABELS[result.status]
    parts = [label, probe.describe()]
    if result.reason:
        parts.append(result.reason)
    parts.append(f"{result.latency * 1000:.1f}ms")
    return " - ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        probe = make_probe(args)
    except ValueError as exc:
        print(f"UNKNOWN - {args.probe}: {exc}", file=sys.stderr)
        return EXIT_UNKNOWN
    result = asyncio.run(probe.run(args.timeout))
    print(format_line(probe, result))
    return _LABELS[result.status][1]


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(EXIT_UNKNOWN)
