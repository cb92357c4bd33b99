"""The schema: frozen pydantic models, one a section or check type. Models are frozen and
hashable, so two loads of an unchanged service compare equal."""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    SecretStr,
    Strict,
    model_validator,
)
from pydantic_core import PydanticCustomError

from anycastd.config.ospf import OspfGlobal
from anycastd.config.scalars import (
    U32,
    AbsPath,
    Asn,
    Bool,
    Community,
    Duration,
    Host,
    IPAddress,
    IPv4Addr,
    LargeCommunity,
    Name,
    Policy,
    Port,
    PositiveDuration,
    Prefix,
    Str,
    StrMap,
    _dedupe,
    _duration_ser,
    _err,
    _Seconds,
    _str_ser,
    _url_validator,
    _v_area,
    _v_duration,
    _v_graceful_restart,
    _v_hold_time,
    _v_ifname,
    _v_listen,
    _v_next_hop,
    _v_qname,
    _v_qtype,
    _v_rcode,
    _v_regex,
    _v_whole_seconds,
)
from anycastd.model import GRACEFUL_SHUTDOWN

_TIMING_KEYS = ("interval", "fast_interval", "timeout", "rise", "fall", "jitter")

#: Default health timing (issue 9), chosen with bench/bench_timing.py (anycastd's scheduler
#: and engine on virtual time) and checked end to end by bench/bench_failover.py: a hard
#: failure is DOWN within interval + jitter + (fall - 1) x fast_interval = 0.84 s at worst
#: (p99 805 ms simulated), recovery likewise within interval + jitter + (rise - 1) x
#: fast_interval, and a check failing at random 5 % of the time needs 5 failures in a row
#: to withdraw (0.07 expected withdraws a day; fall 4 would be 1 a day, fall 2 432 a day).
#: Steady cost: 2.5 probes a second per check. See docs/configuration.md, "Default timing".
DEFAULT_INTERVAL = 0.4
DEFAULT_FAST_INTERVAL = 0.1  # and never more than the interval (see _resolve_timing)
DEFAULT_RISE = 5
DEFAULT_FALL = 5


# --------------------------------------------------------------------------- models


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class _CheckBase(_Model):
    """Fields every check has. Timing values are the effective ones (inherited from the
    service where the check does not set them)."""

    name: Name
    interval: PositiveDuration = DEFAULT_INTERVAL
    fast_interval: PositiveDuration = DEFAULT_FAST_INTERVAL
    timeout: PositiveDuration = DEFAULT_INTERVAL / 2
    rise: Annotated[int, Strict(), Field(ge=1)] = DEFAULT_RISE
    fall: Annotated[int, Strict(), Field(ge=1)] = DEFAULT_FALL
    jitter: Duration = DEFAULT_INTERVAL / 10

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and "name" not in data and isinstance(data.get("type"), str):
            return {**data, "name": data["type"]}
        return data

    def probe_options(self) -> dict[str, Any]:
        """The type options (no name/type/timing), as keyword arguments for the matching
        healthchecks probe: addresses and paths as str, sequences as tuples, None kept."""
        common = {"type", *_CheckBase.model_fields}
        return {
            key: _plain(getattr(self, key)) for key in type(self).model_fields if key not in common
        }


def _plain(value: object) -> object:
    if isinstance(value, IPv4Address | IPv6Address | Path):
        return str(value)
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


class TcpCheck(_CheckBase):
    type: Literal["tcp"]
    host: Host
    port: Port


HttpMethod = Literal["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]


class HttpCheck(_CheckBase):
    type: Literal["http"]
    url: Annotated[str, PlainValidator(_url_validator("http"))]
    method: HttpMethod = "GET"
    expect_status: Annotated[
        tuple[Annotated[int, Strict(), Field(ge=100, le=599)], ...], Field(min_length=1)
    ] = (200,)
    body_regex: Annotated[str, PlainValidator(_v_regex)] | None = None
    host_header: Host | None = None
    headers: StrMap = ()


class HttpsCheck(HttpCheck):
    type: Literal["https"]  # type: ignore[assignment]  # the discriminator narrows per class
    url: Annotated[str, PlainValidator(_url_validator("https"))]
    sni: Host | None = None
    verify: Bool = True
    ca_file: AbsPath | None = None
    client_cert: AbsPath | None = None
    client_key: AbsPath | None = None


class DnsCheck(_CheckBase):
    type: Literal["dns"]
    server: IPAddress
    port: Port = 53
    qname: Annotated[str, PlainValidator(_v_qname)]
    qtype: Annotated[str, PlainValidator(_v_qtype)] = "A"
    rcode: Annotated[str, PlainValidator(_v_rcode)] = "NOERROR"
    expect: tuple[Str, ...] = ()
    transport: Literal["udp", "tcp"] = "udp"


class TlsCheck(_CheckBase):
    type: Literal["tls"]
    host: Host
    port: Port = 443
    server_name: Host | None = None
    min_remaining: Duration = 7 * 86400.0
    verify: Bool = True
    ca_file: AbsPath | None = None


class ExecCheck(_CheckBase):
    type: Literal["exec"]
    argv: Annotated[tuple[Annotated[str, Strict(), Field(min_length=1)], ...], Field(min_length=1)]
    env: StrMap = ()
    cwd: AbsPath | None = None
    output_limit: Annotated[int, Strict(), Field(ge=0)] = 4096

    @model_validator(mode="after")
    def _program_path(self) -> ExecCheck:
        # "./check.sh" works from the operator's shell and fails under systemd (cwd /)
        program = self.argv[0]
        if "/" in program and not program.startswith("/") and self.cwd is None:
            raise _err(
                "relative_program",
                f"argv[0] {program!r} is relative to an unknown directory: give an absolute "
                "path, a bare name looked up on PATH, or set cwd",
            )
        return self


class FileCheck(_CheckBase):
    type: Literal["file"]
    path: AbsPath
    expect: Literal["present", "absent"] = "present"


_UNIT_RE = re.compile(r"[A-Za-z0-9:_.@\\-]+(/[A-Za-z0-9:_.@\\-]+)*")


def _v_unit(value: object) -> str:
    if not isinstance(value, str) or not _UNIT_RE.fullmatch(value) or ".." in value.split("/"):
        raise _err("unit", f"expected a systemd unit name (like nginx.service), got {value!r}")
    return value


class ProcessCheck(_CheckBase):
    """A watched process: its exit is an event (pidfd), not a poll."""

    type: Literal["process"]
    pidfile: AbsPath | None = None
    cmdline: Annotated[
        tuple[Annotated[str, Strict(), Field(min_length=1)], ...], Field(min_length=1)
    ] | None = None
    unit: Annotated[str, PlainValidator(_v_unit)] | None = None

    @model_validator(mode="after")
    def _one_target(self) -> ProcessCheck:
        if sum(x is not None for x in (self.pidfile, self.cmdline, self.unit)) != 1:
            raise _err("process_target", "give exactly one of pidfile, cmdline or unit")
        return self


class ListenCheck(_CheckBase):
    """A socket listening (TCP) or bound (UDP) on address:port, from the kernel's socket
    table (sock_diag), without connecting."""

    type: Literal["listen"]
    address: IPAddress
    port: Port
    protocol: Literal["tcp", "udp"] = "tcp"


class LinkCheck(_CheckBase):
    """An interface administratively up with carrier; its changes are events (rtnetlink)."""

    type: Literal["link"]
    interface: Annotated[str, PlainValidator(_v_ifname)]


Check = Annotated[
    TcpCheck | HttpCheck | HttpsCheck | DnsCheck | TlsCheck | ExecCheck | FileCheck
    | ProcessCheck | ListenCheck | LinkCheck,
    Field(discriminator="type"),
]
_CHECK_MODELS: dict[str, type[_CheckBase]] = {
    "tcp": TcpCheck,
    "http": HttpCheck,
    "https": HttpsCheck,
    "dns": DnsCheck,
    "tls": TlsCheck,
    "exec": ExecCheck,
    "file": FileCheck,
    "process": ProcessCheck,
    "listen": ListenCheck,
    "link": LinkCheck,
}

#: Event-driven and cheap checks have timing of their own: a service's timing keys are tuned
#: for probes that cost a connection and do not apply to them (only the check's own keys
#: do). process: the exit is an event, the interval only finds a restarted process; listen:
#: one kernel table dump serves every check, so 100 ms costs little; link: changes are
#: events, the interval is a safety net. fall 1 where the failure is definitive (the
#: kernel says so), rise > 1 so a restart proves itself.
TYPE_TIMING: dict[str, dict[str, Any]] = {
    "process": {"interval": "1s", "fast_interval": "200ms", "rise": 2, "fall": 1},
    "listen": {"interval": "100ms", "fast_interval": "100ms", "rise": 3, "fall": 2},
    "link": {"interval": "5s", "fast_interval": "1s", "rise": 3, "fall": 1},
}
CHECK_TYPES: tuple[str, ...] = tuple(_CHECK_MODELS)


class Damping(_Model):
    """Route-flap style damping: ``penalty`` per up->down, halved every ``half_life``."""

    penalty: Annotated[int, Strict(), Field(ge=1)] = 1000
    half_life: PositiveDuration = 60.0
    suppress: Annotated[int, Strict(), Field(ge=1)] = 2000
    reuse: Annotated[int, Strict(), Field(ge=1)] = 750
    max_suppress: PositiveDuration = 600.0


class BgpStateAttrs(_Model):
    """Announcement attributes for one service state. ``neighbors`` None = all neighbors."""

    announce: Bool = True
    med: U32 | None = None
    local_preference: U32 | None = None
    communities: Annotated[tuple[Community, ...], AfterValidator(_dedupe)] = ()
    large_communities: Annotated[tuple[LargeCommunity, ...], AfterValidator(_dedupe)] = ()
    as_path_prepend: Annotated[int, Strict(), Field(ge=0, le=10)] = 0
    neighbors: Annotated[tuple[Str, ...], Field(min_length=1)] | None = None


class ServiceBgp(_Model):
    """Per-state BGP attributes. Defaults: maintenance is withdrawn (announce = false);
    draining always carries graceful-shutdown (65535:0) in addition to its communities."""

    up: BgpStateAttrs = BgpStateAttrs()
    draining: BgpStateAttrs = BgpStateAttrs(communities=(GRACEFUL_SHUTDOWN,))
    maintenance: BgpStateAttrs = BgpStateAttrs(announce=False)

    @model_validator(mode="before")
    @classmethod
    def _state_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        maintenance = data.get("maintenance", {})
        if isinstance(maintenance, dict):
            data["maintenance"] = {"announce": False, **maintenance}
        draining = data.get("draining", {})
        if isinstance(draining, dict) and isinstance(draining.get("communities", []), list):
            communities = [*draining.get("communities", []), "graceful-shutdown"]
            data["draining"] = {**draining, "communities": communities}
        return data

    def for_state(self, state: str) -> BgpStateAttrs | None:
        """Attributes for a user-visible state; None for states that are never announced."""
        return {"up": self.up, "draining": self.draining, "maintenance": self.maintenance}.get(
            state
        )


class OspfMetric(_Model):
    up: Annotated[int, Strict(), Field(ge=1, le=65535)] = 10
    draining: Annotated[int, Strict(), Field(ge=1, le=65535)] = 100
    maintenance: Annotated[int, Strict(), Field(ge=1, le=65535)] = 65535


class OspfConfig(_Model):
    area: Annotated[str, PlainValidator(_v_area)] = "0.0.0.0"  # noqa: S104 -- an OSPF area id
    metric: OspfMetric = OspfMetric()


class RealServer(_Model):
    address: IPAddress
    port: Port | None = None  # resolved to the virtual port when absent (None for fwmark)
    weight: Annotated[int, Strict(), Field(ge=0, le=65535)] = 1
    forwarding: Literal["nat", "dr", "tunnel"] = "nat"
    checks: tuple[Check, ...] = ()


Scheduler = Literal["rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh"]


class IpvsConfig(_Model):
    protocol: Literal["tcp", "udp", "fwmark"] = "tcp"
    port: Port | None = None
    fwmark: Annotated[int, Strict(), Field(ge=1, le=4294967295)] | None = None
    scheduler: Scheduler = "wlc"
    persistence: Annotated[
        float, PlainValidator(_v_duration), AfterValidator(_v_whole_seconds), _duration_ser
    ] = 0.0
    min_healthy: Annotated[int, Strict(), Field(ge=0)] = 1
    on_backend_fail: Literal["weight0", "remove"] = "weight0"
    real_servers: Annotated[tuple[RealServer, ...], Field(min_length=1)]

    @model_validator(mode="before")
    @classmethod
    def _real_server_port(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("port"), int):
            return data
        servers = data.get("real_servers")
        if not isinstance(servers, list):
            return data
        resolved = [{"port": data["port"], **rs} if isinstance(rs, dict) else rs for rs in servers]
        return {**data, "real_servers": resolved}


# --- the real-server role (issue 14; docs/lvs.md) -------------------------------------------


class RealServerRole(_Model):
    """This node is a backend of an LVS director for the service's prefixes (its VIPs):
    the VIP goes on ``global.interface`` while the service is healthy, never announced,
    with what the forwarding method needs on a backend (``anycastd.core.realserver``)."""

    forwarding: Literal["dr", "tunnel"]
    tunnel: Literal["ipip", "gre"] | None = None  # required with forwarding = "tunnel"


class PolicyRoute(_Model):
    """One route in a service's own routing table (``[[services.NAME.policy_routing.routes]]``)."""

    to: Prefix
    via: IPAddress | None = None
    dev: Annotated[str, PlainValidator(_v_ifname)] | None = None


class PolicyRouting(_Model):
    """Traffic from the service's prefixes (and/or with ``fwmark``) uses routing table
    ``table``, which holds ``routes``; present while the service is served (docs/lvs.md)."""

    table: Annotated[int, Strict(), Field(ge=1, le=4294967295)]
    priority: Annotated[int, Strict(), Field(ge=1, le=32765)] = 1000
    from_prefixes: Bool = True
    fwmark: Annotated[int, Strict(), Field(ge=1, le=4294967295)] | None = None
    routes: Annotated[tuple[PolicyRoute, ...], Field(min_length=1)]


class ServiceConfig(_Model):
    """One service. ``checks`` (and real-server checks) carry effective timing values."""

    name: Name
    prefixes: Annotated[tuple[Prefix, ...], Field(min_length=1)]
    shared_prefixes: Bool = False
    policy: Policy = "all"
    interval: PositiveDuration = DEFAULT_INTERVAL
    fast_interval: PositiveDuration = DEFAULT_FAST_INTERVAL
    timeout: PositiveDuration = DEFAULT_INTERVAL / 2
    rise: Annotated[int, Strict(), Field(ge=1)] = DEFAULT_RISE
    fall: Annotated[int, Strict(), Field(ge=1)] = DEFAULT_FALL
    jitter: Duration = DEFAULT_INTERVAL / 10
    start_state: Literal["down", "up"] = "down"
    disabled: Bool = False
    maintenance_file: AbsPath | None = None
    drain_file: AbsPath | None = None
    drain_time: Duration = 10.0
    # A failure withdraws at once (peers that ignore 65535:0 would keep sending traffic to
    # a dead service for the whole drain); this opts back into demote-then-drain.
    drain_on_failure: Bool = False
    shutdown: Literal["withdraw", "drain-then-withdraw", "keep"] = "drain-then-withdraw"
    damping: Damping | None = None
    checks: tuple[Check, ...] = ()
    bgp: ServiceBgp = ServiceBgp()
    ospf: OspfConfig | None = None
    ipvs: IpvsConfig | None = None
    real_server: RealServerRole | None = None
    policy_routing: PolicyRouting | None = None

    @model_validator(mode="before")
    @classmethod
    def _inherit_timing(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        service = _resolve_timing(data, {})
        explicit = {k: service[k] for k in _TIMING_KEYS if k in data and k in service}
        data.update({k: v for k, v in service.items() if k not in data})
        data["checks"] = _resolve_checks(data.get("checks"), explicit)
        ipvs = data.get("ipvs")
        if isinstance(ipvs, dict) and isinstance(ipvs.get("real_servers"), list):
            servers = [
                {**rs, "checks": _resolve_checks(rs["checks"], explicit)}
                if isinstance(rs, dict) and "checks" in rs
                else rs
                for rs in ipvs["real_servers"]
            ]
            data["ipvs"] = {**ipvs, "real_servers": servers}
        if data["checks"] is None:
            del data["checks"]
        return data

    @property
    def min_passing(self) -> int:
        """How many checks must pass for the service to be healthy under its policy."""
        if self.policy == "all":
            return len(self.checks)
        if self.policy == "any":
            return min(1, len(self.checks))
        return int(self.policy.split()[1])


def _parsed(value: object) -> float | None:
    try:
        return _v_duration(value)
    except PydanticCustomError:
        return None


def _resolve_timing(own: Mapping[str, Any], inherited: Mapping[str, Any]) -> dict[str, Any]:
    """Effective timing for a check (or the service when *inherited* is empty).

    Own value > the service's explicit value > a default derived from the interval:
    timeout = min(1s, interval/2), fast_interval = min(100ms, interval), jitter = interval/10;
    the interval itself defaults to 400 ms, or to twice a timeout set without an interval.
    Values that do not parse are left out (their own error is reported once, where written).
    """
    out: dict[str, Any] = {}
    if "interval" in own:
        interval = _parsed(own["interval"])
    elif "interval" in inherited:
        interval = inherited["interval"]
    else:
        # a timeout set without an interval keeps its meaning: the interval grows to twice
        # the timeout rather than the timeout becoming an error against the 400 ms default
        timeout = _parsed(own["timeout"]) if "timeout" in own else inherited.get("timeout")
        interval = DEFAULT_INTERVAL if timeout is None else max(DEFAULT_INTERVAL, 2 * timeout)
    if interval is not None:
        out["interval"] = _Seconds(interval)
    derived: dict[str, float | None] = {
        "timeout": None if interval is None else min(1.0, interval / 2),
        "fast_interval": None if interval is None else min(DEFAULT_FAST_INTERVAL, interval),
        "jitter": None if interval is None else interval / 10,
    }
    for key, default in derived.items():
        if key in own:
            value = _parsed(own[key])
        elif key in inherited:
            value = inherited[key]
        else:
            value = default
        if value is not None:
            out[key] = _Seconds(value)
    for key in ("rise", "fall"):
        value = own.get(key, inherited.get(key))
        if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            out[key] = value
    return out


def _resolve_checks(checks: object, service: Mapping[str, Any]) -> object:
    if not isinstance(checks, list):
        return checks
    resolved: list[object] = []
    for index, raw in enumerate(checks):
        if not isinstance(raw, dict):
            resolved.append(raw)
            continue
        check = dict(raw)
        if "name" not in check and isinstance(check.get("type"), str):
            check["name"] = f"{check['type']}-{index}"
        kind = check.get("type")
        own_defaults = TYPE_TIMING.get(kind) if isinstance(kind, str) else None
        if own_defaults is not None:  # see TYPE_TIMING: the service's keys do not apply
            timing = _resolve_timing({**own_defaults, **check}, {})
        else:
            timing = _resolve_timing(check, service)
        check.update({k: v for k, v in timing.items() if k not in check})
        resolved.append(check)
    return resolved


Family = Literal["ipv4 unicast", "ipv6 unicast"]


class BgpNeighbor(_Model):
    name: Annotated[str, Strict(), Field(min_length=1)]  # defaults to the address
    address: IPAddress
    peer_as: Asn
    local_address: IPAddress | None = None
    hold_time: Annotated[
        float, PlainValidator(_v_duration), AfterValidator(_v_hold_time), _duration_ser
    ] = 9.0
    md5_password: SecretStr | None = None
    families: Annotated[tuple[Family, ...], Field(min_length=1)]  # default: address family

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        try:
            address = ip_address(data.get("address"))
        except ValueError:
            return data
        data.setdefault("name", str(address))
        data.setdefault("families", [f"ipv{address.version} unicast"])
        return data


class BgpConfig(_Model):
    mode: Literal["managed", "external"] = "managed"
    router_id: IPv4Addr | None = None
    local_as: Asn | None = None
    next_hop: Annotated[
        Literal["self"] | IPv4Address | IPv6Address, PlainValidator(_v_next_hop), _str_ser
    ] = "self"
    exabgp: Annotated[str, Strict(), Field(min_length=1)] = "exabgp"
    graceful_restart: Annotated[
        float, PlainValidator(_v_duration), AfterValidator(_v_graceful_restart), _duration_ser
    ] = 0.0
    # issue 13: the relay's dead-man hold (0 = off); see docs/reliability.md
    relay_hold: Duration = 15.0
    neighbors: tuple[BgpNeighbor, ...] = ()

    def neighbor(self, ref: str) -> BgpNeighbor | None:
        """The neighbor named *ref* or with address *ref*."""
        for n in self.neighbors:
            if ref in (n.name, str(n.address)):
                return n
        try:
            address = ip_address(ref)
        except ValueError:
            return None
        return next((n for n in self.neighbors if n.address == address), None)


def _hostname() -> str:
    return socket.gethostname()


class GlobalConfig(_Model):
    node: Annotated[str, Strict(), Field(min_length=1)] = Field(default_factory=_hostname)
    state_dir: AbsPath = Path("/var/lib/anycastd")
    runtime_dir: AbsPath = Path("/run/anycastd")
    log_format: Literal["json", "logfmt"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    interface: Annotated[str, PlainValidator(_v_ifname)] = "lo"
    reconcile_interval: PositiveDuration = 30.0
    maintenance_file: AbsPath | None = None
    max_concurrent_checks: Annotated[int, Strict(), Field(ge=1)] = 256
    manage_sysctls: Bool = False


class ApiConfig(_Model):
    enabled: Bool = True
    listen: Annotated[str, PlainValidator(_v_listen)] = "127.0.0.1:9180"
    #: the control socket (status and the operator flags); None: runtime_dir/api.sock
    socket: AbsPath | None = None
    #: the control socket's group (mode 0660); "": the daemon's own group
    socket_group: Annotated[str, Strict(), Field(pattern=r"^([a-z_][a-z0-9_.-]{0,31})?$")] = ""

    def socket_path(self, runtime_dir: Path) -> Path:
        """Where the control socket is: ``socket``, or ``runtime_dir/api.sock``."""
        return self.socket if self.socket is not None else Path(runtime_dir) / "api.sock"

    @property
    def host(self) -> str:
        host, _, _ = self.listen.rpartition(":")
        return host.strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class MetricsConfig(_Model):
    enabled: Bool = True


class Config(_Model):
    """The whole validated configuration. ``services`` is keyed by service name;
    ``sources`` lists the files loaded (main first); ``service_sources`` the file that
    defined each service."""

    global_: GlobalConfig = Field(default_factory=GlobalConfig, alias="global")
    api: ApiConfig = ApiConfig()
    metrics: MetricsConfig = MetricsConfig()
    bgp: BgpConfig | None = None
    ospf: OspfGlobal | None = None  # [ospf] (anycastd.config.ospf)
    services: dict[str, ServiceConfig] = Field(default_factory=dict)
    sources: tuple[Path, ...] = ()
    service_sources: dict[str, Path] = Field(default_factory=dict)

    model_config = ConfigDict(
        frozen=True, extra="forbid", hide_input_in_errors=True, populate_by_name=True
    )

    def __hash__(self) -> int:
        return hash(
            (
                self.global_,
                self.api,
                self.metrics,
                self.bgp,
                self.ospf,
                tuple(sorted(self.services.items())),
                self.sources,
                tuple(sorted(self.service_sources.items())),
            )
        )


_SECTIONS: dict[str, type[BaseModel]] = {
    "global": GlobalConfig,
    "api": ApiConfig,
    "metrics": MetricsConfig,
    "bgp": BgpConfig,
    "ospf": OspfGlobal,
}
