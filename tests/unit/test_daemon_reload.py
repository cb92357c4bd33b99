"""Reload carries health over: unchanged services keep their value exactly."""

from __future__ import annotations

from anycastd.config import loads
from anycastd.core.health import ServiceState
from anycastd.engine.reload import carry_over, renamed

BASE = """
[api]
enabled = false
[metrics]
enabled = false
[services.a]
prefixes = ["192.0.2.1/32"]
rise = 1
[[services.a.checks]]
type = "file"
path = "/x"
[services.b]
prefixes = ["192.0.2.2/32"]
rise = 1
[[services.b.checks]]
type = "file"
path = "/y"
"""


def test_unchanged_service_keeps_its_health_value_and_changed_one_keeps_counters() -> None:
    old = loads(BASE)
    health = carry_over(None, {}, old, now=0.0)
    health["a"] = health["a"].feed("file-0", True, "ok", 1.0).health
    health["b"] = health["b"].feed("file-0", True, "ok", 1.0).health
    assert health["a"].state is ServiceState.UP

    new = loads(BASE.replace('path = "/y"', 'path = "/z"') + """
[services.c]
prefixes = ["192.0.2.3/32"]
[[services.c.checks]]
type = "file"
path = "/w"
""")
    after = carry_over(old, health, new, now=2.0)
    assert after["a"] is health["a"]  # identical: no event, no counter reset
    assert after["b"] is not health["b"]
    assert after["b"].state is ServiceState.UP  # the check kept its name, so its state
    assert after["c"].state is ServiceState.DOWN  # new services start down
    assert set(after) == {"a", "b", "c"}


def test_removed_service_is_dropped() -> None:
    old = loads(BASE)
    health = carry_over(None, {}, old, now=0.0)
    new = loads(BASE.split("[services.b]", maxsplit=1)[0])
    assert set(carry_over(old, health, new, now=1.0)) == {"a"}


def test_renamed_service_with_the_same_prefixes_and_checks_keeps_its_health() -> None:
    # A rename is not a new service: resetting its health would withdraw it until it rose
    # again, and a fleet-wide rename would be a global outage.
    old = loads(BASE)
    health = carry_over(None, {}, old, now=0.0)
    health["a"] = health["a"].feed("file-0", True, "ok", 1.0).health
    assert health["a"].state is ServiceState.UP

    new = loads(BASE.replace("services.a", "services.dns"))
    after = carry_over(old, health, new, now=2.0)
    assert set(after) == {"dns", "b"}
    assert after["dns"].state is ServiceState.UP
    assert after["dns"].name == "dns"  # events and metrics speak of the new name
    assert after["dns"].since == health["a"].since  # no transition: the same UP, renamed
    assert renamed(old, new) == {"dns": "a"}


def test_a_new_name_with_other_prefixes_or_checks_starts_fresh() -> None:
    old = loads(BASE)
    health = carry_over(None, {}, old, now=0.0)
    health["a"] = health["a"].feed("file-0", True, "ok", 1.0).health
    moved = BASE.replace("services.a", "services.dns").replace("192.0.2.1/32", "192.0.2.9/32")
    assert carry_over(old, health, loads(moved), now=2.0)["dns"].state is ServiceState.DOWN
    rechecked = BASE.replace("services.a", "services.dns").replace('"/x"', '"/other"')
    assert carry_over(old, health, loads(rechecked), now=2.0)["dns"].state is ServiceState.DOWN
