"""What a reconcile pass observed, as metric samples (``observe.metrics``).

Rule: reads the pass's values (config, desired, observed, a copy of the speaker's RIB-out),
changes nothing; a function of its arguments. The controller hands :func:`pass_samples`
with its arguments to ``Metrics.set_pass``, so it runs in the scraping thread, only when
scraped (at 10,000 prefixes it is ~0.1 s of Python the event loop should not pay per pass).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping

from anycastd.config import BgpStateAttrs, Config
from anycastd.core.desired import Desired, route_for
from anycastd.core.health import ServiceState
from anycastd.core.plan import Observed
from anycastd.core.rib import normalize_prefix, resolve_attributes
from anycastd.model import ALL_NEIGHBORS, BgpSettings, ResolvedAttributes, RibKey
from anycastd.observe.metrics import AddressSample, PassSamples, RealServerSample, RouteSample

#: The states with announcement attributes, in the order a tie is broken.
_ATTRIBUTE_STATES = (ServiceState.UP, ServiceState.DRAINING, ServiceState.MAINTENANCE)

_Lookup = Callable[[str, ServiceState], ResolvedAttributes | None]


def pass_samples(
    config: Config,
    desired: Desired,
    observed: Observed,
    rib: Mapping[RibKey, ResolvedAttributes] | None,
    settings: BgpSettings | None,
) -> PassSamples:
    """Every sample of one pass; ``rib`` and ``settings`` None without ``[bgp]``."""
    routes = (
        route_samples(config, desired, rib, settings)
        if rib is not None and settings is not None
        else []
    )
    return PassSamples(routes, ipvs_samples(desired, observed),
                       address_samples(desired, observed))  # fmt: skip


def route_samples(
    config: Config,
    desired: Desired,
    rib: Mapping[RibKey, ResolvedAttributes],
    settings: BgpSettings,
) -> list[RouteSample]:
    """One sample per RIB-out entry: which owner's state the attributes are those of.

    The owner's current (effective) state is tried first (an up service whose draining
    attributes equal its up attributes reads ``up``), then up, draining, maintenance of
    each owner; no match (a route left by another config, a foreign ExaBGP's) reads
    ``other``."""
    labels = {n.address: n.label for n in settings.neighbors}
    states = {s.name: s.state for s in desired.services}
    # a state's attributes do not depend on the prefix, and most services share them:
    # resolve each distinct set once
    resolved: dict[BgpStateAttrs, ResolvedAttributes | None] = {}

    def attrs_of(owner: str, state: ServiceState) -> ResolvedAttributes | None:
        svc = config.services.get(owner)
        if svc is None:
            return None
        state_attrs: BgpStateAttrs = getattr(svc.bgp, state.value)
        if state_attrs not in resolved:
            value = None
            with contextlib.suppress(ValueError):  # PlanError is a ValueError
                value = resolve_attributes(
                    route_for("0.0.0.0/0", state_attrs).attributes, settings
                )
            resolved[state_attrs] = value
        return resolved[state_attrs]

    out: list[RouteSample] = []
    for (neighbor, prefix), attrs in rib.items():
        peer = "*" if neighbor == ALL_NEIGHBORS else labels.get(neighbor, neighbor)
        intent = desired.prefix(prefix) or desired.prefix(_canonical(prefix))
        owners = intent.owners if intent is not None else ()
        match = _match(owners, attrs, states, attrs_of)
        if match is None:
            out.append(RouteSample(prefix, peer, owners[0] if owners else "", "other"))
        else:
            out.append(RouteSample(prefix, peer, match[0], match[1].value))
    return out


def _match(
    owners: Iterable[str],
    attrs: ResolvedAttributes,
    states: Mapping[str, ServiceState],
    attrs_of: _Lookup,
) -> tuple[str, ServiceState] | None:
    owners = tuple(owners)
    for owner in owners:  # the owner's current state first
        state = states.get(owner)
        if state is not None and state in _ATTRIBUTE_STATES and (
            attrs_of(owner, state) == attrs
        ):
            return owner, state
    for owner in owners:
        for state in _ATTRIBUTE_STATES:
            if attrs_of(owner, state) == attrs:
                return owner, state
    return None


def _canonical(prefix: str) -> str:
    try:
        return normalize_prefix(prefix)
    except ValueError:
        return prefix


def ipvs_samples(desired: Desired, observed: Observed) -> list[RealServerSample]:
    """The real servers of every configured service's virtual services, as the kernel
    reported them (weights and connection counts); a virtual service not in the kernel
    has no samples."""
    out: list[RealServerSample] = []
    for svc in desired.services:
        for spec in (*svc.live, *svc.idle):
            obs = observed.ipvs.services.get(spec.service)
            if obs is None:
                continue
            for ors in obs.real_servers:
                rs = ors.server
                host = f"[{rs.address}]" if ":" in rs.address else rs.address
                out.append(RealServerSample(
                    svc.name, str(spec.service), f"{host}:{rs.port}", rs.weight,
                    ors.active_connections, ors.inactive_connections,
                ))  # fmt: skip
    return out


def address_samples(desired: Desired, observed: Observed) -> list[AddressSample]:
    """Every host prefix of every owner: its address is on the interface (owned or not)
    and the interface is up. Compared as canonical text (``str`` of an address is)."""
    present = (
        {str(a.ip) for a in observed.loopback.addresses} if observed.loopback.up else set()
    )
    out: list[AddressSample] = []
    for intent in desired.prefixes:
        if intent.address is None:
            continue
        on = intent.prefix.partition("/")[0] in present
        out.extend(AddressSample(owner, intent.prefix, on) for owner in intent.owners)
    return out
