"""The OSPF actuator: anycastd's routes published by the node's FRR (or Quagga) ``ospfd``.

Rule: the only writer of anycastd's part of the routing daemon's configuration. What is
published, and why (docs/ospf.md has the measurements):

* The anycast /32 (/128) is already an address on the interface (the loopback actuator puts
  it there before IPVS and the route, and takes it away after). zebra sees it as a
  *connected* route. A static or kernel route for the same prefix would never be
  redistributed while the address exists (zebra redistributes only the route it selects,
  and connected wins; measured). So anycastd publishes the connected route itself, through
  ``redistribute connected route-map NAME`` in ``router ospf``, and gates it with prefix
  lists it owns: a prefix is published exactly while it is in one of them. The address is a
  precondition by construction: without it there is no connected route to redistribute.
* One prefix list a metric, ``NAME-M<metric>``, and one ``route-map NAME`` entry a metric
  the configuration uses (``match ip address prefix-list NAME-M<m>``, ``set metric <m>``,
  ``set metric-type``). The route-map changes only on reload; a health edge moves prefixes
  between lists (added to the new list before being removed from the old, so a metric change
  never passes through "not published").

Ownership: anycastd owns the prefix lists named ``NAME-M<digits>``, the route-map ``NAME``
and the line ``redistribute connected route-map NAME`` in ``router ospf``, nothing else. It
never creates ``router ospf`` (the operator's OSPF instance), never rewrites another
``redistribute connected`` (it refuses, naming it), and never touches other lists or maps.

Read-back (``observe``): the routes are the prefix-list entries of ``NAME-M<m>`` while the
route-map and the ``redistribute`` line are exactly as rendered; otherwise every entry is
reported with metric 0 (a metric no state has), so the planner re-applies the whole set: a
hand-edited route-map or a lost ``redistribute`` line is drift, repaired on the next pass.

Apply (FRR, ``mode = "apply"``): render the whole target; compute the commands from the
running configuration to the target (none: no write at all); validate the render with
``vtysh -C`` (a rejected render changes nothing, reported with vtysh's own text); send the
commands in one configuration session (never a daemon restart, never ``write``). Reads and
writes go straight to the daemons' vty sockets in vtysh's own protocol (a line and a NUL;
the answer ends with three NULs and the status): well under a millisecond a command, where
each ``vtysh`` process costs ~40 ms. The session stops at the first command the daemon
rejects; the commands that ran before it are then undone (the same diff, back to what was
read before), and the daemon's error text is reported: a rejected apply changes nothing.

Render only (``mode = "render"``, and the Quagga dialect): the target is written to
``render_file`` (atomically, only when its text changes) and read back from it; loading it
into the daemon is the operator's part.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from anycastd.errors import PermanentError, TransientError
from anycastd.model import OspfRoute

__all__ = [
    "ACTUATOR",
    "FrrOspf",
    "OspfActuator",
    "OspfSettings",
    "Parsed",
    "commands",
    "parse",
    "render",
]

ACTUATOR = "frr"

#: How long a read-back serves as "what the daemon holds" for the next apply (seconds): the
#: controller observes, plans and applies within one pass.
FRESH = 2.0

Dialect = Literal["frr", "quagga"]


@dataclass(frozen=True)
class OspfSettings:
    """What the actuator needs from ``[ospf]`` and the services' ``[ospf]`` tables."""

    name: str = "ANYCASTD-OSPF"
    metrics: tuple[int, ...] = ()  # every metric a state may use: one route-map entry each
    metric_type: str = "type-2"
    dialect: Dialect = "frr"
    mode: Literal["apply", "render"] = "apply"
    render_file: Path | None = None
    vtysh: str = "vtysh"
    pathspace: str | None = None
    instance: int | None = None
    timeout: float = 10.0
    #: after a removal, how long to wait for ospfd to flush its LSA before the address goes
    withdraw_wait: float = 0.2
    #: where FRR's daemons listen (``DIR/ospfd.vty``); the pathspace is added to it
    vty_dir: Path = Path("/var/run/frr")

    def vty_socket(self, daemon: str) -> Path:
        """``DIR[/pathspace]/DAEMON.vty``; an ospfd instance (``ospfd -n N``, for
        ``instance = N``) listens on ``ospfd-N.vty`` (FRR's libfrr names it so)."""
        base = self.vty_dir / self.pathspace if self.pathspace else self.vty_dir
        if daemon == "ospfd" and self.instance is not None:
            return base / f"{daemon}-{self.instance}.vty"
        return base / f"{daemon}.vty"

    @property
    def show(self) -> str:
        """``show ip ospf`` (or ``show ip ospf N``: an instance's ospfd answers only the
        instanced form of its show commands)."""
        return "show ip ospf" if self.instance is None else f"show ip ospf {self.instance}"

    @property
    def router_line(self) -> str:
        return "router ospf" if self.instance is None else f"router ospf {self.instance}"

    def list_name(self, metric: int) -> str:
        return f"{self.name}-M{metric}"

    @property
    def redistribute(self) -> str:
        return f"redistribute connected route-map {self.name}"


class OspfActuator(Protocol):
    """Read back and set the OSPF route set anycastd publishes."""

    settings: OspfSettings

    def observe(self) -> frozenset[OspfRoute]: ...

    def apply(self, routes: frozenset[OspfRoute]) -> None: ...

    def settle(self, prefixes: frozenset[str]) -> bool:
        """Wait (at most ``settings.withdraw_wait``) until the routing daemon no longer
        originates an LSA for ``prefixes``; True when it does not."""
        ...


# --- render (pure) ---------------------------------------------------------------------------


def _entries(settings: OspfSettings) -> dict[int, tuple[str, tuple[str, ...]]]:
    """route-map sequence -> (action, lines), one entry a metric, lowest metric first."""
    out: dict[int, tuple[str, tuple[str, ...]]] = {}
    for i, metric in enumerate(sorted(set(settings.metrics))):
        out[10 * (i + 1)] = ("permit", (
            f"match ip address prefix-list {settings.list_name(metric)}",
            f"set metric {metric}",
            f"set metric-type {settings.metric_type}",
        ))
    return out


def _family(prefix: str) -> str:
    return "ipv6" if ":" in prefix else "ip"


def render(settings: OspfSettings, routes: Iterable[OspfRoute]) -> str:
    """The configuration fragment anycastd owns, in the settings' dialect.

    FRR: integrated ``frr.conf`` syntax (blocks end with ``exit``). Quagga: the ``ospfd.conf``
    syntax (the statements are the same; blocks end at the next ``!``)."""
    by_metric: dict[int, list[str]] = {}
    for r in routes:
        if ":" in r.prefix:
            continue  # OSPFv2 carries IPv4 only (IPv6 would be ospf6d's; not supported)
        by_metric.setdefault(r.metric, []).append(r.prefix)
    end = ["exit"] if settings.dialect == "frr" else []
    where = "frr.conf (integrated)" if settings.dialect == "frr" else "ospfd.conf"
    lines = [
        f"! anycastd: OSPF publication of anycast prefixes ({where} syntax)",
        f"! owned by anycastd: prefix-lists {settings.name}-M*, route-map {settings.name},",
        f"! and '{settings.redistribute}' in {settings.router_line}",
        "!",
    ]
    for metric in sorted(by_metric):
        prefixes = sorted(set(by_metric[metric]), key=_prefix_key)
        for i, prefix in enumerate(prefixes):
            lines.append(
                f"ip prefix-list {settings.list_name(metric)} seq {5 * (i + 1)} permit {prefix}"
            )
    if by_metric:
        lines.append("!")
    for seq, (action, body) in _entries(settings).items():
        lines.append(f"route-map {settings.name} {action} {seq}")
        lines += [f" {b}" for b in body]
        lines += [*end, "!"]
    lines += [settings.router_line, f" {settings.redistribute}", *end, "!", ""]
    return "\n".join(lines)


def _prefix_key(prefix: str) -> tuple[int, ...]:
    addr, _, length = prefix.partition("/")
    return (*(int(x) for x in addr.split(".")), int(length or 32))


# --- parse (pure) ----------------------------------------------------------------------------

_LIST = re.compile(
    r"^ip prefix-list (?P<name>\S+)(?: seq \d+)? (?P<action>permit|deny) (?P<prefix>\S+)"
    r"(?P<rest>.*)$"
)
_RMAP = re.compile(r"^route-map (?P<name>\S+) (?P<action>permit|deny) (?P<seq>\d+)\s*$")


@dataclass(frozen=True)
class Parsed:
    """anycastd's part of a configuration text (running config or a render)."""

    #: (list name, action, prefix) of the lists named NAME-M<digits>
    lists: frozenset[tuple[str, str, str]] = frozenset()
    #: route-map NAME: sequence -> (action, body lines stripped)
    rmap: Mapping[int, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    has_router: bool = False
    #: every ``redistribute connected ...`` line of the router block (ours or not)
    redistribute: tuple[str, ...] = ()


def parse(settings: OspfSettings, text: str) -> Parsed:
    own_list = re.compile(re.escape(settings.name) + r"-M(\d+)")
    lists: set[tuple[str, str, str]] = set()
    rmap: dict[int, tuple[str, tuple[str, ...]]] = {}
    has_router = False
    redistribute: list[str] = []
    block: str | None = None
    seq = 0
    action = ""
    body: list[str] = []

    def close() -> None:
        if block == "rmap":
            rmap[seq] = (action, tuple(body))

    for raw in text.splitlines():
        line = raw.rstrip()
        if not line or line.startswith("!"):
            if line.startswith("!"):
                close()
                block = None
            continue
        if line.startswith(" "):
            if block is not None:
                item = line.strip()
                if block == "rmap":
                    body.append(item)
                elif block == "router" and item.startswith("redistribute connected"):
                    redistribute.append(item)
            continue
        close()
        block = None
        body = []
        if line == "exit":
            continue
        m = _LIST.match(line)
        if m and own_list.fullmatch(m["name"]) and not m["rest"].strip():
            lists.add((m["name"], m["action"], m["prefix"]))
            continue
        m = _RMAP.match(line)
        if m and m["name"] == settings.name:
            block, seq, action = "rmap", int(m["seq"]), m["action"]
            continue
        if line == settings.router_line:
            block, has_router = "router", True
    close()
    return Parsed(frozenset(lists), rmap, has_router, tuple(redistribute))


def published(settings: OspfSettings, parsed: Parsed) -> frozenset[OspfRoute]:
    """The routes a parsed configuration publishes (see "Read-back" above)."""
    own_list = re.compile(re.escape(settings.name) + r"-M(\d+)")
    intact = (
        dict(parsed.rmap) == _entries(settings)
        and parsed.redistribute == (settings.redistribute,)
    )
    out: set[OspfRoute] = set()
    for name, action, prefix in parsed.lists:
        m = own_list.fullmatch(name)
        if m is None or action != "permit":
            continue
        metric = int(m[1])
        ok = intact and metric in settings.metrics
        out.add(OspfRoute(prefix, metric if ok else 0))
    return frozenset(out)


def commands(settings: OspfSettings, current: Parsed, target: Parsed) -> list[str]:
    """The configuration commands (inside ``configure terminal``) that turn anycastd's part
    of ``current`` into ``target``: additions first, removals last; empty when equal."""
    out: list[str] = []
    for name, action, prefix in sorted(target.lists - current.lists):
        out.append(f"ip prefix-list {name} {action} {prefix}")
    for seq, (action, body) in sorted(target.rmap.items()):
        have = current.rmap.get(seq)
        if have == (action, body):
            continue
        if have is not None:
            out.append(f"no route-map {settings.name} {have[0]} {seq}")
        out += [f"route-map {settings.name} {action} {seq}", *(f" {b}" for b in body), "exit"]
    ours = settings.redistribute
    if (ours in target.redistribute) != (ours in current.redistribute):
        sign = "" if ours in target.redistribute else "no "
        out += [settings.router_line, f" {sign}{ours}", "exit"]
    for seq, (action, _) in sorted(current.rmap.items()):
        if seq not in target.rmap:
            out.append(f"no route-map {settings.name} {action} {seq}")
    for name, action, prefix in sorted(current.lists - target.lists):
        out.append(f"no ip prefix-list {name} {action} {prefix}")
    return out


def foreign_redistribute(settings: OspfSettings, parsed: Parsed) -> str | None:
    """A ``redistribute connected`` line in the router block that is not anycastd's."""
    for line in parsed.redistribute:
        if line != settings.redistribute:
            return line
    return None


# --- the real actuator ----------------------------------------------------------------------


def write_atomic(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` through a temporary file and a rename; False (and no
    write) when the file already holds exactly ``text``."""
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise PermanentError(ACTUATOR, f"cannot read {path}: {exc.strerror}") from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise PermanentError(ACTUATOR, f"cannot write {path}: {exc.strerror}") from None
    return True


class FrrOspf:
    """The real actuator: ``vtysh`` (mode apply, FRR) or the render file (mode render)."""

    def __init__(self, settings: OspfSettings) -> None:
        self.settings = settings
        self.writes = 0  # vtysh configuration sessions and file writes, for tests
        #: renders already accepted by ``vtysh -C``, without their prefix-list lines
        self._validated: set[str] = set()
        #: (monotonic time, parse) of the last read-back, or of what the last apply wrote
        self._last: tuple[float, Parsed] | None = None

    # ---- vtysh

    def _argv(self) -> list[str]:
        argv = [self.settings.vtysh]
        if self.settings.pathspace:
            argv += ["-N", self.settings.pathspace]
        return argv

    def _run(self, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [*self._argv(), *args], capture_output=True, text=True, check=False,
                timeout=self.settings.timeout,
            )
        except FileNotFoundError:
            raise PermanentError(ACTUATOR, f"{self.settings.vtysh}: not found") from None
        except subprocess.TimeoutExpired:
            raise TransientError(
                ACTUATOR, f"vtysh did not answer within {self.settings.timeout:g}s"
            ) from None

    def running(self) -> str:
        """ospfd's running configuration (its vty socket)."""
        return self._vty("ospfd", ["show running-config"])[0][0]

    def _vty(self, daemon: str, lines: Sequence[str], *, stop_on_error: bool = False
             ) -> list[tuple[str, int]]:
        """Send ``lines`` to ``daemon``'s vty socket (vtysh's own protocol: the line and a
        NUL; the answer ends with three NULs and the command's status byte), after
        ``enable``. (answer, status) per line sent, up to the first error if asked."""
        path = self.settings.vty_socket(daemon)
        out: list[tuple[str, int]] = []
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.settings.timeout)
                sock.connect(str(path))
                sock.sendall(b"enable\0")
                answer, status = _vty_answer(sock)
                if status != 0:
                    raise PermanentError(ACTUATOR, f"{daemon}: enable: {answer.strip()}")
                for line in lines:
                    sock.sendall(line.encode() + b"\0")
                    answer, status = _vty_answer(sock)
                    out.append((answer, status))
                    if stop_on_error and status != 0:
                        break
        except FileNotFoundError:
            raise TransientError(ACTUATOR, f"{path}: no such socket ({daemon} not running, "
                                 "or another pathspace/vty_dir)") from None
        except TimeoutError:
            raise TransientError(ACTUATOR, f"{daemon} did not answer within "
                                 f"{self.settings.timeout:g}s") from None
        except OSError as exc:
            raise TransientError(ACTUATOR, f"{path}: {exc.strerror or exc}") from None
        return out

    def check(self, text: str) -> None:
        """Validate ``text`` with ``vtysh -C`` (syntax, no daemon is touched)."""
        fd, tmp = tempfile.mkstemp(prefix="anycastd-ospf-", suffix=".conf")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            proc = self._run(["-C", "-f", tmp])
        finally:
            os.unlink(tmp)
        if proc.returncode != 0:
            raise PermanentError(
                ACTUATOR, f"vtysh rejected the rendered OSPF configuration: {_text(proc)}"
            )

    def _configure(self, cmds: Sequence[str]) -> str | None:
        """Run ``cmds`` in one configuration session of ospfd (the daemon that uses them:
        zebra has no ``set metric-type`` nor ``router ospf``, and no use for the lists); the
        daemon's error text, or None. At the first error nothing more is sent."""
        self.writes += 1
        lines = ["configure terminal", *cmds, "end"]
        for (answer, status), line in zip(self._vty("ospfd", lines, stop_on_error=True),
                                          lines, strict=False):
            if status != 0:
                return f"ospfd: {line.strip()!r}: {answer.strip() or f'status {status}'}"
        return None

    # ---- the Protocol

    def observe(self) -> frozenset[OspfRoute]:
        parsed = parse(self.settings, self._read())
        self._last = (time.monotonic(), parsed)
        return published(self.settings, parsed)

    def _current(self) -> Parsed:
        """What the daemon holds: the read-back of this pass (the controller observes just
        before it applies; one vtysh call less on the withdraw path), else a fresh read."""
        if self._last is not None and time.monotonic() - self._last[0] < FRESH:
            return self._last[1]
        return parse(self.settings, self.running())

    def _read(self) -> str:
        if self.settings.mode == "render":
            path = self.settings.render_file
            assert path is not None  # noqa: S101 -- the config requires it in render mode
            try:
                return path.read_text()
            except FileNotFoundError:
                return ""
            except OSError as exc:
                raise PermanentError(ACTUATOR, f"cannot read {path}: {exc.strerror}") from None
        return self.running()

    def apply(self, routes: frozenset[OspfRoute]) -> None:
        s = self.settings
        text = render(s, routes)
        if s.mode == "render":
            assert s.render_file is not None  # noqa: S101 -- required in render mode
            if write_atomic(s.render_file, text):
                self.writes += 1
            return
        before = self._current()
        self._last = None  # whatever happens next, read again before the next apply
        if not before.has_router:
            raise PermanentError(
                ACTUATOR, f"no '{s.router_line}' in the running configuration: anycastd "
                "publishes through the operator's OSPF instance and never creates one",
            )
        foreign = foreign_redistribute(s, before)
        if foreign is not None:
            raise PermanentError(
                ACTUATOR, f"'{s.router_line}' already has '{foreign}': anycastd does not "
                f"rewrite it (call route-map {s.name} from yours, or remove it)",
            )
        target = parse(s, text)
        cmds = commands(s, before, target)
        if not cmds:
            return  # unchanged: no validation run, no write
        # The prefix-list lines are made from validated values (IPv4 prefixes, integer
        # metrics): a shape (everything else) vtysh -C accepted once is not sent again.
        shape = "\n".join(ln for ln in text.splitlines() if not ln.startswith("ip prefix-list"))
        if shape not in self._validated:
            self.check(text)
            self._validated.add(shape)
        error = self._configure(cmds)
        if error is None:
            self._last = (time.monotonic(), Parsed(target.lists, target.rmap, True,
                                                   _replace_ours(s, before.redistribute)))
            if s.render_file is not None:
                write_atomic(s.render_file, text)
            return
        # undo what ran before the rejected command: back to what was read before
        undo = commands(s, parse(s, self.running()), before)
        undo_error = self._configure(undo) if undo else None
        detail = f"; undoing it failed too: {undo_error}" if undo_error else ""
        raise PermanentError(ACTUATOR, f"the routing daemon rejected the change: {error}{detail}")


    def settle(self, prefixes: frozenset[str]) -> bool:
        s = self.settings
        if s.mode == "render" or not prefixes or s.withdraw_wait <= 0:
            return True
        deadline = time.monotonic() + s.withdraw_wait
        while True:
            if not (self.originated() & prefixes):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def originated(self) -> frozenset[str]:
        """The prefixes of the live AS-external LSAs this router originates."""
        answer = self._vty("ospfd", [f"{self.settings.show} database external self-originate "
                                      "json"])
        try:
            data = json.loads(answer[0][0] or "{}")
        except ValueError:
            return frozenset()
        return frozenset(_external_prefixes(data))


def _external_prefixes(data: object) -> Iterator[str]:
    """``linkStateId/mask`` of the live (not MaxAge) LSAs in ospfd's JSON, at any depth."""
    if isinstance(data, dict):
        lsid, age = data.get("linkStateId"), data.get("lsaAge", 0)
        if isinstance(lsid, str) and isinstance(age, int) and age < 3600:
            mask = data.get("networkMask", 32)
            yield f"{lsid}/{mask}"
        for value in data.values():
            yield from _external_prefixes(value)
    elif isinstance(data, list):
        for value in data:
            yield from _external_prefixes(value)


def _vty_answer(sock: socket.socket) -> tuple[str, int]:
    buf = bytearray()
    while len(buf) < 4 or buf[-4:-1] != b"\0\0\0":
        chunk = sock.recv(65536)
        if not chunk:
            raise TransientError(ACTUATOR, "the daemon closed its vty connection")
        buf += chunk
    return buf[:-4].decode("utf-8", "replace"), buf[-1]


def _replace_ours(settings: OspfSettings, lines: tuple[str, ...]) -> tuple[str, ...]:
    """The router block's ``redistribute connected`` lines once ours is in."""
    return (*(x for x in lines if x != settings.redistribute), settings.redistribute)


def _text(proc: subprocess.CompletedProcess[str]) -> str:
    text = " ".join(x.strip() for x in (proc.stdout, proc.stderr) if x.strip())
    return text or f"exit status {proc.returncode}"
