"""The BGP speaker: anycastd's only writer to ExaBGP.

It serves a unix socket in the runtime directory; the relay (``anycastd-exabgp-relay``, run by
ExaBGP as its API ``process``) connects to it. Managed mode also writes ExaBGP's config,
validates it, and runs ExaBGP as a supervised child that dies with anycastd (fail closed:
PR_SET_PDEATHSIG), through :class:`~anycastd.bgp.supervisor.ExabgpSupervisor`. External
mode only serves the socket: same code path otherwise.

State kept: ``desired`` (what the controller asked for) and ``sent`` (what ExaBGP
acknowledged, or reported in ``show adj-rib out`` after a reconnect). ``set_routes`` sends
only the difference; a steady state sends nothing.

Rule (issue 8, "the routing state never lies"): announcements come only from a controller
pass (``set_routes``). ``desired`` may be stale (the service behind it went down while the
relay was away), so on its own -- after a relay (re)connect, a session "up", a settings
reload -- the speaker reads the adj-rib-out back, may only WITHDRAW what ``sent`` holds and
``desired`` does not, and then wakes the controller (``on_resync``), whose next pass has
just observed the addresses and backends and announces what is right. An unexpected error
in a background loop is logged CRITICAL and reported (``on_fatal``) while the relay socket
keeps being served, so the daemon can still withdraw through it (fail closed).

Issue 13 (docs/reliability.md): on every connect the speaker tells the relay its dead-man
hold (``relay hold SECONDS``, ``[bgp] relay_hold``): a relay left without anycastd that long
withdraws what anycastd announced. A relay socket removed by hand is bound again within
``SOCKET_WATCH``. Managed mode with graceful restart: ExaBGP runs ``manual-eor``, and the
speaker sends End-of-RIB to a neighbor once the first controller pass of its session has
ended (``end_of_pass``; also a pass that planned nothing), so a GR helper keeps the stale
routes until anycastd has re-announced (a hitless restart), and drops them right then.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import shutil
import sys
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anycastd.bgp.client import ACTUATOR, ApiConnection, CommandError
from anycastd.bgp.commands import apply_command, diff_rib, parse_adj_rib_out, render_config
from anycastd.bgp.protocol import FatalCallback, PeerCallback, PeerState, ResyncCallback, Speaker
from anycastd.bgp.supervisor import ExabgpSupervisor
from anycastd.core.rib import PlanError, resolve
from anycastd.errors import ActuatorError, PermanentError, TransientError
from anycastd.model import ALL_NEIGHBORS, BgpSettings, ResolvedAttributes, Rib, RibKey, Route

log = logging.getLogger("anycastd.bgp")

#: After a step that withdrew a route, the controller waits this long before its pass goes on
#: to IPVS and the addresses (``ExabgpSpeaker.withdraw_settle``). ExaBGP answers ``done``
#: once an UPDATE is queued, not once it is on the wire; measured against FRR
#: (bench/README_failover.md) the address otherwise left ``lo`` up to 4 ms BEFORE the peer
#: had the withdraw (p50 0.7 ms before), breaking "never announced while the address is
#: missing" as the peer sees it. ExaBGP writes within 2-5 ms (PLATFORM.md), so 50 ms is a
#: wide margin and costs nothing that matters: the withdraw itself is not delayed, only the
#: clean-up after it.
WITHDRAW_SETTLE = 0.05
#: How often the relay socket's path is checked (removed by hand -> bound again).
SOCKET_WATCH = 1.0


def default_relay_argv() -> list[str]:
    """The relay next to this interpreter (console script), else ``python -m``."""
    script = Path(sys.executable).parent / "anycastd-exabgp-relay"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "anycastd.bgp.relay"]


class ExabgpSpeaker:
    """Owns the ExaBGP API. Run ``run()`` as a task for the daemon's lifetime."""

    withdraw_settle = WITHDRAW_SETTLE

    def __init__(
        self,
        settings: BgpSettings,
        runtime_dir: Path,
        *,
        socket_name: str = "exabgp.sock",
        relay_argv: Sequence[str] | None = None,
        command_timeout: float = 10.0,
        on_peer_change: PeerCallback | None = None,
        restart_backoff: tuple[float, float] = (0.5, 30.0),
        env: Mapping[str, str] | None = None,
        socket_mode: int = 0o600,
        exabgp_log_level: str = "WARNING",
        on_resync: ResyncCallback | None = None,
        on_fatal: FatalCallback | None = None,
    ) -> None:
        self.settings = settings
        self.runtime_dir = Path(runtime_dir)
        self.socket_path = self.runtime_dir / socket_name
        self.config_path = self.runtime_dir / "exabgp.conf"
        self.relay_argv = list(relay_argv) if relay_argv else default_relay_argv()
        self.command_timeout = command_timeout
        self.on_peer_change = on_peer_change
        self.on_resync = on_resync
        self.on_fatal = on_fatal
        # who may connect as the relay: ExaBGP's user (external mode: maybe not ours)
        self.socket_mode = socket_mode
        self._supervisor = ExabgpSupervisor(
            settings.exabgp, self.config_path, env=env, log_level=exabgp_log_level,
            restart_backoff=restart_backoff, on_exit=self._exabgp_exited,
        )
        self._routes: tuple[Route, ...] = ()
        self._desired: Rib = {}
        # until the controller has said what it wants, a (re)connect only reads back: an
        # anycastd restart adopts what ExaBGP announces instead of withdrawing it (no flap)
        self._desired_known = False
        self._sent: Rib = {}
        # external mode: prefixes anycastd has announced through this ExaBGP (kept in the
        # runtime dir, which lives exactly as long as the operator's ExaBGP's RIB can)
        self._owned_path = self.runtime_dir / f"{socket_name}.owned"
        self._owned: set[str] = self._load_owned()
        self._peers: dict[str, PeerState] = {
            n.address: PeerState(address=n.address, name=n.label) for n in settings.neighbors
        }
        self._conn: ApiConnection | None = None
        self._relay_exabgp_pid: int | None = None
        # managed mode with graceful restart: neighbors whose session came up and still wait
        # for our End-of-RIB (sent when the next controller pass ends: ExaBGP runs manual-eor)
        self._eor_owed: set[str] = set()
        self._server: asyncio.Server | None = None
        self._socket_inode: int | None = None
        self._write_lock = asyncio.Lock()
        self._resync_wanted = asyncio.Event()
        self._connected_event = asyncio.Event()
        self._synced = False
        self._ever_synced = False
        self.commands_sent = 0

    # -- public surface ---------------------------------------------------------------------
    @property
    def peers(self) -> Mapping[str, PeerState]:
        return dict(self._peers)

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed.is_set()

    @property
    def exabgp_pid(self) -> int | None:
        """Managed mode: the running ExaBGP's pid (None while it is not running)."""
        return self._supervisor.exabgp_pid

    @property
    def exabgp_starts(self) -> int:
        """Managed mode: how many times ExaBGP has been started."""
        return self._supervisor.exabgp_starts

    @property
    def exabgp_standby(self) -> tuple[int | None, int]:
        """Managed mode: (the warm standby ExaBGP's pid or None, starts that used one)."""
        return self._supervisor.standby_pid, self._supervisor.standby_starts

    @property
    def ever_synced(self) -> bool:
        """``sent`` has been read back at least once since the speaker started."""
        return self._ever_synced

    @property
    def synced(self) -> bool:
        """Connected, and ``sent`` has been read back from ExaBGP since the connect: only
        then does ``sent`` say what the peers are offered (start-up adoption waits for it)."""
        return self.connected and self._synced

    @property
    def desired(self) -> Mapping[RibKey, ResolvedAttributes]:
        return dict(self._desired)

    @property
    def sent(self) -> Mapping[RibKey, ResolvedAttributes]:
        return dict(self._sent)

    async def wait_connected(self) -> None:
        """Return once a relay is connected (wrap in ``asyncio.timeout``)."""
        await self._connected_event.wait()

    async def set_routes(self, routes: Iterable[Route]) -> None:
        routes = tuple(routes)
        try:
            desired = resolve(routes, self.settings)
        except (PlanError, ValueError) as exc:
            raise PermanentError(ACTUATOR, str(exc)) from exc
        self._routes = routes
        self._desired = desired
        self._desired_known = True
        new = {prefix for _, prefix in desired} - self._owned
        if new:
            self._owned |= new
            self._save_owned()
        async with self._write_lock:
            await self._push()

    async def end_of_pass(self) -> None:
        """Send the End-of-RIB each new session owes. Not from ``set_routes``: a pass may
        have no BgpStep (every service down), or a withdraw step before its announce step.
        Unsent (not ``synced``, the relay lost): still owed after the next pass."""
        if not self._eor_owed or not self.synced:
            return
        try:
            async with self._write_lock:
                await self._send_eor()
        except TransientError as exc:
            log.warning("bgp_end_of_rib_deferred", extra={"error": str(exc)})

    async def resync(self) -> None:
        """Read ``sent`` back from ExaBGP, withdraw what is not desired, call ``on_resync``.

        Never announces and never changes attributes: ``desired`` is the last wish of the
        controller and may be stale. ``on_resync`` is called whether or not the read-back or
        the withdraw succeeded (``sent`` or ``synced`` may have changed either way); a
        failure is raised after it."""
        try:
            async with self._write_lock:
                await self._read_back()
                await self._push(withdraw_only=True)
        finally:
            if self.on_resync is not None:
                self.on_resync()

    async def validate(self, settings: BgpSettings | None = None) -> None:
        """Managed mode: write ExaBGP's config for ``settings`` (default: the current ones)
        and check it with ``exabgp validate``; only a valid file replaces the live one.
        PermanentError carrying ExaBGP's message otherwise."""
        settings = settings or self.settings
        text = render_config(settings, self.relay_argv, str(self.socket_path))
        await self._supervisor.validate(text)

    async def update_settings(self, settings: BgpSettings) -> None:
        """Apply a reloaded ``[bgp]`` section without touching unchanged sessions.

        Managed mode: the new ExaBGP config is validated first (PermanentError: the old one
        keeps running), then ExaBGP reloads it (SIGUSR1: new neighbors connect, removed ones
        close, unchanged ones stay up); the adj-rib-out is then read back, what is not desired
        withdrawn, and the controller woken (``on_resync``): its next ``set_routes`` gives new
        neighbors their routes. A change of mode or executable needs a new speaker
        (PermanentError)."""
        if settings == self.settings:
            return
        if (settings.mode, settings.exabgp) != (self.settings.mode, self.settings.exabgp):
            raise PermanentError(ACTUATOR, "changing [bgp] mode or exabgp needs a restart")
        try:
            desired = resolve(self._routes, settings)
        except (PlanError, ValueError) as exc:
            raise PermanentError(ACTUATOR, str(exc)) from exc
        if settings.mode == "managed":
            await self.validate(settings)
        old_hold, self.settings = self.settings.relay_hold, settings
        self._desired = desired
        known = {n.address for n in settings.neighbors}
        # a removed neighbor's routes go with its session; never withdraw through it
        self._sent = {k: v for k, v in self._sent.items()
                      if k[0] in known or k[0] == ALL_NEIGHBORS}
        for address in list(self._peers):
            if address not in known:
                del self._peers[address]
        for n in settings.neighbors:
            old = self._peers.get(n.address)
            self._peers[n.address] = (
                replace(old, name=n.label) if old else PeerState(address=n.address, name=n.label)
            )
        if settings.mode == "managed":
            self._supervisor.reload()
        if self._conn is not None and settings.relay_hold != old_hold:
            self._tell_hold(self._conn)
        log.info("bgp_settings_updated", extra={"neighbors": sorted(known)})
        self._resync_wanted.set()

    async def run(self) -> None:
        """Serve the relay socket (and in managed mode run ExaBGP) until cancelled."""
        text: str | None = None
        if self.settings.mode == "managed":
            if shutil.which(self.settings.exabgp) is None:
                raise PermanentError(ACTUATOR, f"exabgp executable {self.settings.exabgp!r} "
                                     "not found")
            # no `exabgp validate` before the start: ExaBGP's own parse checks the file and
            # the supervisor explains a rejection (``verify``), raised from here
            text = render_config(self.settings, self.relay_argv, str(self.socket_path))
            self._supervisor.install(text)
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        self._server = await self._serve_socket()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._resync_loop())
                tg.create_task(self._guarded("socket_watch", self._watch_socket))
                if text is not None:
                    tg.create_task(self._guarded(
                        "supervise", lambda: self._supervisor.run(verify=text)))
        except* PermanentError as group:  # ExaBGP rejected its config at start
            raise group.exceptions[0] from None
        finally:
            if self._server is not None:
                self._server.close()
            if self._conn is not None:
                self._conn.close()
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()

    async def _serve_socket(self) -> asyncio.Server:
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        server = await asyncio.start_unix_server(self._on_connect, path=str(self.socket_path))
        os.chmod(self.socket_path, self.socket_mode)
        self._socket_inode = self.socket_path.stat().st_ino
        return server

    async def _watch_socket(self) -> None:
        """The relay socket removed or replaced by hand (issue 13: a tmpfiles clean-up, an
        operator): the connected relay is unaffected, but the next relay (ExaBGP respawns it)
        could never connect and anycastd could never withdraw again. Checked every
        ``SOCKET_WATCH`` seconds; a missing or foreign path is bound again."""
        while True:
            await asyncio.sleep(SOCKET_WATCH)
            try:
                inode: int | None = self.socket_path.stat().st_ino
            except OSError:
                inode = None
            if inode == self._socket_inode:
                continue
            log.warning("relay_socket_rebound", extra={"path": str(self.socket_path),
                                                       "found": "missing" if inode is None
                                                       else "another file"})
            old = self._server
            try:
                self.runtime_dir.mkdir(parents=True, exist_ok=True)
                self._server = await self._serve_socket()
            except OSError as exc:  # tried again on the next tick
                log.error("relay_socket_bind_failed", extra={"error": str(exc)})  # noqa: TRY400
                continue
            if old is not None:
                old.close()  # stops listening only: the connected relay stays

    # -- connection and events --------------------------------------------------------------
    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # the relay's first line names its ExaBGP: "relay hello <exabgp pid>"
        try:
            async with asyncio.timeout(self.command_timeout):
                hello = (await reader.readline()).decode("ascii", "replace").split()
            exabgp_pid = int(hello[2]) if hello[:2] == ["relay", "hello"] else None
        except (TimeoutError, OSError, ValueError, IndexError):
            exabgp_pid = None
        if exabgp_pid is None:
            log.warning(
                "relay_rejected", extra={"detail": "not a relay on the ExaBGP socket; closed"}
            )
            writer.close()
            return
        conn = ApiConnection(reader, writer, self._on_event, timeout=self.command_timeout)
        conn.relay_takes_hold = "hold" in hello[3:]
        self._tell_hold(conn)
        conn.exabgp_pid = exabgp_pid
        old, self._conn = self._conn, conn
        if old is not None:
            old.close()
        if exabgp_pid != self._relay_exabgp_pid:
            # another ExaBGP: its sessions are new. Its relay replays the states it knows
            # (none yet after a restart); until then every peer is down. The same ExaBGP
            # (relay respawned, anycastd restarted) keeps its sessions: no blip.
            self._relay_exabgp_pid = exabgp_pid
            for address in list(self._peers):
                self._set_peer(replace(self._peers[address], up=False, state="unknown",
                                       reason="new ExaBGP"))
        log.info("relay_connected", extra={"exabgp_pid": exabgp_pid})
        self._synced = False
        self._connected_event.set()
        self._resync_wanted.set()
        try:
            await conn.run()
        except Exception as exc:  # a bug in an event handler: report, go on
            self._fatal("connection", exc)
        finally:
            if self._conn is conn:
                self._conn = None
                self._connected_event.clear()
                log.warning("relay_disconnected")

    def _on_event(self, event: dict[str, Any]) -> None:
        if event.get("type") != "state":
            return
        try:
            neighbor = event["neighbor"]
            address = str(neighbor["address"]["peer"])
            state = str(neighbor["state"])
        except (KeyError, TypeError):
            return
        if not _is_peer_address(address) or (
            self.settings.neighbors and address not in self._peers
        ):
            # issue 13 (fuzzing): a malformed event, or a neighbor anycastd does not speak to
            # (the operator's ExaBGP), must not add peers (status, metric labels) without end
            return
        previous = self._peers.get(address) or PeerState(address=address, name=address)
        up = state == "up"
        reason = str(neighbor.get("reason", ""))
        self._set_peer(replace(previous, up=up, state=state, reason=reason))
        if up:
            # the session has just (re)started: check what ExaBGP sends it
            if self.settings.mode == "managed" and self.settings.graceful_restart:
                self._eor_owed.add(address)
            self._resync_wanted.set()
        else:
            self._eor_owed.discard(address)

    def _tell_hold(self, conn: ApiConnection) -> None:
        """The relay's dead-man timer (issue 13): if anycastd is gone for ``relay_hold``
        seconds the relay withdraws what anycastd announced. Relays that predate it do not
        say "hold" in their hello and are not told (they would pass the line to ExaBGP)."""
        if conn.relay_takes_hold:
            conn.notify(f"relay hold {float(self.settings.relay_hold)!r}")

    def _exabgp_exited(self) -> None:
        # ExaBGP's RIB died with it: nothing is announced any more
        self._sent = {}
        for address in list(self._peers):
            self._set_peer(replace(self._peers[address], up=False, state="down",
                                   reason="ExaBGP exited"))

    def _set_peer(self, peer: PeerState) -> None:
        old = self._peers.get(peer.address)
        self._peers[peer.address] = peer
        if old is None or old.up != peer.up:
            log.info(
                "bgp_session",
                extra={"peer": peer.name, "peer_address": peer.address,
                       "state": "up" if peer.up else "down", "reason": peer.reason},
            )
            if self.on_peer_change is not None:
                self.on_peer_change(peer)

    async def _resync_loop(self) -> None:
        while True:
            await self._resync_wanted.wait()
            self._resync_wanted.clear()
            try:
                await self.resync()
            except ActuatorError as exc:
                log.warning("bgp_resync_failed", extra={"error": str(exc)})
            except Exception as exc:  # a bug: report it and keep serving
                # the loop waits for the next (re)connect or session event, so a bug that
                # repeats is reported once per event, never in a busy loop
                self._fatal("resync", exc)

    async def _guarded(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        """Run a background loop; an unexpected error is reported, and the loop's end must
        not take the relay socket down with the TaskGroup (the daemon still withdraws
        through it)."""
        try:
            await body()
        except PermanentError:
            raise  # the first ExaBGP rejected its config: a start-up error (``run``)
        except Exception as exc:  # see the docstring
            self._fatal(name, exc)
        await asyncio.Event().wait()  # until cancelled: the other loops and the socket go on

    def _fatal(self, task: str, exc: Exception) -> None:
        log.critical("speaker_task_failed", exc_info=exc, extra={"task": task})
        if self.on_fatal is not None:
            try:
                self.on_fatal(exc)
            except Exception:  # the report must not become a second failure
                log.critical("speaker_on_fatal_failed", exc_info=True)

    # -- the writer -------------------------------------------------------------------------
    async def _read_back(self) -> None:
        conn = self._require_conn()
        lines = await conn.command("show adj-rib out extensive")
        problems: list[str] = []
        observed = parse_adj_rib_out(
            lines, self.settings.local_as, all_neighbors=not self.settings.neighbors,
            problems=problems,
        )
        if problems:
            # kept as routes with attributes that equal no wish: withdrawn or re-announced
            log.warning("bgp_read_back_malformed",
                        extra={"count": len(problems), "line": problems[0][:300]})
        if self.settings.neighbors:
            # routes of neighbors anycastd does not speak to are not its business (external
            # mode: the operator's other peers; managed: a neighbor a reload just removed)
            mine = {n.address for n in self.settings.neighbors}
            observed = {k: v for k, v in observed.items() if k[0] in mine}
        if self.settings.mode == "external":
            foreign = {k for k in observed if k[1] not in self._owned}
            if foreign:
                log.info("bgp_foreign_routes_left_alone",
                         extra={"prefixes": sorted({k[1] for k in foreign})})
            observed = {k: v for k, v in observed.items() if k not in foreign}
        self._sent = observed
        self._synced = self._ever_synced = True

    def _load_owned(self) -> set[str]:
        try:
            data = json.loads(self._owned_path.read_text())
        except (OSError, ValueError):
            return set()
        return {str(p) for p in data} if isinstance(data, list) else set()

    def _save_owned(self) -> None:
        if self.settings.mode != "external":
            return
        try:
            self.runtime_dir.mkdir(parents=True, exist_ok=True)
            tmp = self._owned_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(sorted(self._owned)))
            os.replace(tmp, self._owned_path)
        except OSError as exc:
            log.warning("bgp_owned_record_failed", extra={"error": str(exc)})

    async def _push(self, *, withdraw_only: bool = False) -> None:
        if not self._desired_known:
            return
        # Withdraw-only: the same plan over the entries of ``desired`` that ``sent`` already
        # holds (as they are held), so only the withdraws of ``sent - desired`` remain.
        desired = (
            {k: v for k, v in self._sent.items() if k in self._desired}
            if withdraw_only else self._desired
        )
        commands = diff_rib(desired, self._sent, self.settings.local_as)
        if not commands:
            return
        conn = self._require_conn()
        first_error: PermanentError | None = None
        for command in commands:
            # An announce counts from the moment it is written: ExaBGP may act on it even if
            # its answer never comes (timeout, lost connection), and the controller must
            # then withdraw it before the address goes. A withdraw counts once answered.
            # Either way the next read-back replaces ``sent`` with the truth.
            announce = any(attrs is not None for _, attrs in command.changes)
            before = {key: self._sent.get(key) for key, _ in command.changes}
            if announce:
                apply_command(self._sent, command)
            try:
                await conn.command(command.text)
            except PermanentError as exc:
                if announce:  # rejected: ExaBGP did not take it
                    for key, attrs in before.items():
                        if attrs is None:
                            self._sent.pop(key, None)
                        else:
                            self._sent[key] = attrs
                log.error(  # noqa: TRY400 - the command is the whole story, not a traceback
                    "exabgp_command_rejected", extra={"command": command.text}
                )
                first_error = first_error or exc
                continue
            self.commands_sent += 1
            if not announce:
                apply_command(self._sent, command)
        if first_error is not None:
            raise first_error

    async def _send_eor(self) -> None:
        """End-of-RIB to each neighbor whose session came up since the last controller pass
        (managed mode with graceful restart): only now are its routes complete, so a
        graceful-restart helper may drop what is still stale. Under ``_write_lock``."""
        if not self._eor_owed:
            return
        conn = self._require_conn()
        families = {n.address: n.effective_families for n in self.settings.neighbors}
        for address in sorted(self._eor_owed):
            try:
                for family in families.get(address, ()):
                    await conn.command(f"neighbor {address} announce eor {family}")
            except CommandError:
                # ExaBGP answers "error" when the session is not established (any more):
                # its next "up" owes a new End-of-RIB; the pass itself did not fail
                log.warning("bgp_end_of_rib_refused", extra={"peer_address": address})
            else:
                log.info("bgp_end_of_rib_sent", extra={"peer_address": address})
            self._eor_owed.discard(address)

    def _require_conn(self) -> ApiConnection:
        conn = self._conn
        if conn is None or conn.closed.is_set():
            raise TransientError(ACTUATOR, "ExaBGP is not connected; routes are sent on connect")
        return conn


def _is_peer_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


if TYPE_CHECKING:

    def _exabgp_is_a_speaker(speaker: ExabgpSpeaker) -> Speaker:  # mypy checks the Protocol
        return speaker
