"""Command line: ``anycastd run | check-config | probe | status | maintenance | drain``,
``ospf render``, ``demo``.

Exit codes follow sysexits(3): 0 ok, 1 a probe found the service unhealthy, 64 usage,
66 the config file is missing, 69 cannot start or reach the daemon (check-config: vtysh -C
did not answer), 70 internal error (a bug: the only case with a traceback), 77 no permission
on the control socket, 78 the config is invalid. ``status --check`` adds 1 (a service
draining or in maintenance) and 2 (a service down). A user error is one clear message on
stderr, never a traceback.

``anycastd run`` exits 70 after a bug ended one of the daemon's tasks: the daemon has then
withdrawn every prefix (fail closed, ``keep`` ignored) and logged the bug as one CRITICAL
``task_crashed`` event that carries the traceback (journald/Loki keep it; stderr gets none).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from anycastd import __version__
from anycastd.config import DEFAULT_CONFIG_PATH, ConfigError, ConfigNotFound
from anycastd.errors import StartupError

if TYPE_CHECKING:  # the schema (pydantic) loads only when a command reads the config
    from anycastd.config import Config
    from anycastd.observe.api import Endpoint

EX_OK = 0
EX_UNHEALTHY = 1
EX_USAGE = 64
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_NOPERM = 77
EX_CONFIG = 78
#: ``status --check``: a service draining or in maintenance (planned), a service down
CHECK_PLANNED = 1
CHECK_DOWN = 2


class UsageError(Exception):
    """Bad command line; exit 64."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EX_USAGE)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="anycastd",
        description="Health-checked anycast: loopback addresses, IPVS and BGP kept honest.",
    )
    p.add_argument("--version", action="version", version=f"anycastd {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "-c", "--config", type=Path, default=DEFAULT_CONFIG_PATH, metavar="PATH",
            help="main config file; conf.d/*.toml beside it is merged "
            f"(default {DEFAULT_CONFIG_PATH})",
        )

    run = sub.add_parser("run", help="run the daemon (health checks and transitions)")
    with_config(run)
    run.add_argument(
        "--for", dest="duration", metavar="DURATION", default=None,
        help='stop by itself after DURATION (e.g. "30s"); for demos and soak tests',
    )
    run.add_argument(
        "--dry-run", action="store_true",
        help="run checks and plan every change, log it, but change nothing on this node "
        "(no addresses, no IPVS, no BGP)",
    )

    check = sub.add_parser("check-config", help="validate the configuration and summarise it")
    with_config(check)
    check.add_argument(
        "--dump", action="store_true", help="print the effective merged config (JSON)"
    )
    check.add_argument("-q", "--quiet", action="store_true", help="print nothing when valid")

    probe = sub.add_parser("probe", help="run one service's checks once and print the results")
    with_config(probe)
    probe.add_argument("service", help="service name as in the config")

    def with_socket(sp: argparse.ArgumentParser | argparse._MutuallyExclusiveGroup) -> None:
        sp.add_argument(
            "--socket", metavar="PATH", type=Path, default=None,
            help="the daemon's control socket (default: api.socket from the config, "
            "runtime_dir/api.sock); skips reading the config",
        )

    status = sub.add_parser("status", help="show the running daemon's state (GET /status)")
    with_config(status)
    where = status.add_mutually_exclusive_group()
    with_socket(where)
    where.add_argument(
        "--api", metavar="HOST:PORT", default=None,
        help="read the state from the read-only TCP listener instead of the control "
        "socket; skips reading the config (which may be mid-edit exactly when you need this)",
    )
    status.add_argument("--json", action="store_true", help="print the raw status document")
    status.add_argument("--checks", action="store_true", help="also list every check")
    status.add_argument(
        "--check", action="store_true",
        help="for monitoring: exit 0 when every enabled service is up, 1 when one is "
        "draining or in maintenance, 2 when one is down (69: daemon not reachable)",
    )

    for kind, what in (("maintenance", "maintenance"), ("drain", "operator drain")):
        flag = sub.add_parser(
            kind, help=f"turn {what} of a service on or off (through the control socket)")
        with_config(flag)
        with_socket(flag)
        flag.add_argument("service", help="service name as in the config")
        flag.add_argument("switch", choices=("on", "off"))

    ospf = sub.add_parser("ospf", help="OSPF: print the FRR/Quagga configuration anycastd renders")
    ospf_sub = ospf.add_subparsers(dest="ospf_command", metavar="ACTION", parser_class=_Parser)
    render = ospf_sub.add_parser(
        "render", help="print the configuration anycastd would apply for the given state"
    )
    with_config(render)
    render.add_argument(
        "--state", choices=("up", "draining", "maintenance", "down"), default="up",
        help="the state every service is assumed to be in (default up: the full publication)",
    )
    render.add_argument(
        "--check", action="store_true",
        help="also validate the render with the daemon's own checker (FRR: vtysh -C)",
    )

    demo = sub.add_parser(
        "demo",
        help="the anycast demo: a router (FRR), two anycastd edges and a client in network "
        "namespaces (root)",
    )
    demo.add_argument("--ospf", action="store_true",
                      help="the same story over OSPF (FRR zebra + ospfd) instead of BGP")
    return p


def load(path: Path) -> Config:
    # Imported here so `anycastd --version` stays fast.
    from anycastd.config import load_config

    return load_config(path)


def _cmd_check_config(args: argparse.Namespace) -> int:
    from anycastd.config import dump, summarize

    config = load(args.config)
    if args.dump:
        print(dump(config))
    elif not args.quiet:
        print(summarize(config))
    return _check_ospf(config, quiet=args.quiet or args.dump)


def _ospf_render(config: Config, state: str) -> tuple[str, str] | None:
    """(render, description) of the OSPF configuration with every service in ``state``;
    None when no service has [ospf]."""
    from anycastd.actuators.frr import render
    from anycastd.core.desired import compute
    from anycastd.core.health import ServiceState
    from anycastd.engine.world import ospf_settings

    settings = ospf_settings(config)
    if settings is None:
        return None
    desired = compute(config, dict.fromkeys(config.services, ServiceState(state)))
    where = f"vtysh -N {settings.pathspace}" if settings.pathspace else "vtysh"
    how = (f"render to {settings.render_file}" if settings.mode == "render"
           else f"apply through {where}")
    return render(settings, desired.ospf_routes), f"{settings.dialect}, {how}"


def _check_ospf(config: Config, *, quiet: bool) -> int:
    """check-config's OSPF part: the render validated by the daemon's checker (FRR)."""
    from anycastd.actuators.frr import FrrOspf
    from anycastd.engine.world import ospf_settings
    from anycastd.errors import ActuatorError

    rendered = _ospf_render(config, "up")
    settings = ospf_settings(config)
    if rendered is None or settings is None:
        return EX_OK
    if settings.dialect != "frr":
        if not quiet:
            print(f"ospf: {rendered[1]} (Quagga: not validated, no daemon to ask)")
        return EX_OK
    try:
        FrrOspf(settings).check(rendered[0])
    except ActuatorError as exc:
        if "not found" in exc.message:
            sys.stderr.write(f"anycastd: ospf: {exc.message}: the render was not validated\n")
            return EX_OK
        if exc.transient:  # vtysh did not answer: nothing was judged, so not EX_CONFIG
            sys.stderr.write(f"anycastd: ospf: {exc.message}: the render could not be "
                             "validated (try again; the config was not judged)\n")
            return EX_UNAVAILABLE
        sys.stderr.write(f"anycastd: invalid configuration (1 problem):\n"
                         f"{config.sources[0] if config.sources else ''}: ospf: {exc.message}\n")
        return EX_CONFIG
    if not quiet:
        print(f"ospf: {rendered[1]}; render accepted by {settings.vtysh} -C")
    return EX_OK


def _cmd_ospf(args: argparse.Namespace) -> int:
    if args.ospf_command != "render":
        raise UsageError("usage: anycastd ospf render [-c PATH] [--state STATE] [--check]")
    config = load(args.config)
    rendered = _ospf_render(config, args.state)
    if rendered is None:
        raise UsageError(f"no service in {args.config} has [services.NAME.ospf]")
    sys.stdout.write(rendered[0])
    if args.check:
        return _check_ospf(config, quiet=True)
    return EX_OK


def _cmd_probe(args: argparse.Namespace) -> int:
    from anycastd.engine.oneshot import probe_service

    config = load(args.config)
    if args.service not in config.services:
        known = ", ".join(sorted(config.services)) or "none"
        raise UsageError(f"no service {args.service!r} in {args.config} (services: {known})")
    healthy, lines = asyncio.run(probe_service(config.services[args.service]))
    print("\n".join(lines))
    return EX_OK if healthy else EX_UNHEALTHY


def _cmd_run(args: argparse.Namespace) -> int:
    from anycastd.bgp import standby

    if not args.dry_run:
        # a managed ExaBGP imports itself on the other core while anycastd does (~0.15 s of
        # a start; bench/README_startup.md); ended below if the daemon never takes it
        standby.prewarm(args.config)
    try:
        return _run(args)
    finally:
        standby.discard()


def _run(args: argparse.Namespace) -> int:
    from anycastd.durations import DurationError, parse_duration
    from anycastd.engine.daemon import run_daemon
    from anycastd.engine.world import build_world, dry_run_world

    duration: float | None = None
    if args.duration is not None:
        try:
            duration = parse_duration(args.duration)
        except DurationError as exc:
            raise UsageError(f"--for: {exc}") from None
    config = load(args.config)
    world = dry_run_world if args.dry_run else build_world
    # EX_SOFTWARE (70) after a crash that the daemon already failed closed and logged
    return asyncio.run(
        run_daemon(config, config_path=args.config, duration=duration, world_factory=world)
    )


def _endpoint(args: argparse.Namespace) -> Endpoint:
    """The control socket (``--socket``, or from the config), or the read-only TCP
    listener (``status --api``). A malformed ``--api`` is a usage error."""
    from anycastd.observe.api import Endpoint

    if getattr(args, "api", None) is not None:
        from anycastd.config.scalars import _v_listen

        try:
            _v_listen(args.api)
        except ValueError:
            raise UsageError(f"--api {args.api!r}: expected HOST:PORT or [V6]:PORT, e.g. "
                             "127.0.0.1:9180") from None
        host, _, port = args.api.rpartition(":")
        return Endpoint(host=host.strip("[]"), port=int(port))
    if args.socket is not None:
        return Endpoint(path=args.socket)
    config = load(args.config)
    if not config.api.enabled:
        raise UsageError("the API is disabled in the config (api.enabled = false)")
    return Endpoint(path=config.api.socket_path(config.global_.runtime_dir))


def _unreachable(endpoint: Endpoint, exc: Exception) -> int:
    if isinstance(exc, PermissionError):
        sys.stderr.write(f"anycastd: permission denied on {endpoint}: run as root or as a "
                         "member of the socket's group (api.socket_group)\n")
        return EX_NOPERM
    sys.stderr.write(f"anycastd: daemon not reachable at {endpoint}: {exc}\n")
    return EX_UNAVAILABLE


def _check_code(doc: dict[str, object]) -> int:
    """``status --check``: 0 every enabled service up, 1 one planned out (draining,
    maintenance), 2 one down."""
    services = doc.get("services")
    states = {s.get("state") for s in services.values() if isinstance(s, dict)} if (
        isinstance(services, dict)) else set()
    if "down" in states:
        return CHECK_DOWN
    if states & {"draining", "maintenance"}:
        return CHECK_PLANNED
    return EX_OK


def _cmd_status(args: argparse.Namespace) -> int:
    import json

    from anycastd.observe.api import fetch_status
    from anycastd.observe.status import render_text

    endpoint = _endpoint(args)
    try:
        doc = fetch_status(endpoint)
    except (OSError, RuntimeError) as exc:  # RuntimeError: an answer that is not a status
        return _unreachable(endpoint, exc)
    print(json.dumps(doc, indent=2) if args.json else render_text(doc, checks=args.checks))
    return _check_code(doc) if args.check else EX_OK


def _cmd_flag(args: argparse.Namespace) -> int:
    from anycastd.observe.api import post_flag

    endpoint = _endpoint(args)
    try:
        code, body = post_flag(endpoint, args.service, args.command, args.switch == "on")
    except (OSError, RuntimeError) as exc:
        return _unreachable(endpoint, exc)
    if code == 404:
        raise UsageError(f"the daemon has no service {args.service!r}")
    if code != 200:
        sys.stderr.write(f"anycastd: the daemon answered {code}: {body}\n")
        return EX_UNAVAILABLE
    print(f"{args.service}: {args.command} {args.switch} (state now {body.get('state')})")
    return EX_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.ospf:
        from anycastd.demo_ospf import run_ospf_demo

        return run_ospf_demo()
    from anycastd.demo import run_demo

    return asyncio.run(run_demo())


_COMMANDS = {
    "run": _cmd_run,
    "check-config": _cmd_check_config,
    "probe": _cmd_probe,
    "demo": _cmd_demo,
    "ospf": _cmd_ospf,
    "status": _cmd_status,
    "maintenance": _cmd_flag,
    "drain": _cmd_flag,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EX_USAGE
    try:
        return _COMMANDS[args.command](args)
    except ConfigNotFound as exc:
        sys.stderr.write(f"anycastd: {exc}\n")
        return EX_NOINPUT
    except ConfigError as exc:
        n = len(exc.issues)
        sys.stderr.write(
            f"anycastd: invalid configuration ({n} problem{'' if n == 1 else 's'}):\n{exc}\n"
        )
        return EX_CONFIG
    except UsageError as exc:
        sys.stderr.write(f"anycastd: {exc}\n")
        return EX_USAGE
    except StartupError as exc:
        sys.stderr.write(f"anycastd: cannot start: {exc}\n")
        return EX_UNAVAILABLE
    except KeyboardInterrupt:
        return 130
    except Exception:
        # A bug, not a user error: say so and keep the traceback for the report.
        sys.stderr.write("anycastd: internal error (this is a bug, please report it):\n")
        traceback.print_exc()
        return EX_SOFTWARE


if __name__ == "__main__":
    sys.exit(main())
