"""Fuzzed configuration (issue 13): structure-aware mutations of the example config -- random
keys, types, nesting, durations, prefixes, unicode, huge values, drop-in conflicts -- and raw
garbage, through ``anycastd check-config``. Every outcome is exit 0 or exit 78 with each
problem naming its file and key; never a traceback.

Examples per run: ``ANYCASTD_FUZZ_EXAMPLES`` (default 200, a few seconds); the recorded
counts in docs/reliability.md come from a run with a larger value.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tomllib
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anycastd.cli import EX_CONFIG, main
from anycastd.config import ConfigError, ConfigIssue, load_config
from tests.integration.fault_support import record_section

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "configs" / "anycastd.toml"
DROPIN = REPO / "configs" / "conf.d" / "10-web.toml"
EXAMPLES = int(os.environ.get("ANYCASTD_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

BASE = tomllib.loads(EXAMPLE.read_text())
BASE_DROPIN = tomllib.loads(DROPIN.read_text())


# -- TOML out (tomllib reads only) -----------------------------------------------------------


def _key(k: str) -> str:
    return _string(k)


def _string(s: str) -> str:
    out = []
    for ch in s:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:  # not representable in TOML: replace
            out.append("\\ufffd")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _string(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def to_toml(doc: dict[str, Any]) -> str:
    """Top-level keys as ``key = value`` lines (tables inline): any nesting tomllib reads."""
    return "".join(f"{_key(k)} = {_value(v)}\n" for k, v in doc.items())


# -- strategies ------------------------------------------------------------------------------

TOML_INTS = st.integers(min_value=-(2**63), max_value=2**63 - 1)
DURATIONS = st.builds(
    lambda n, unit: f"{n}{unit}",
    st.one_of(st.integers(-5, 10**20), st.floats(allow_nan=True, allow_infinity=True)),
    st.sampled_from(["ms", "s", "m", "h", "d", "", "us", "w", " s", "S"]),
)
PREFIXES = st.builds(
    lambda a, b, c, d, n: f"{a}.{b}.{c}.{d}/{n}",
    *[st.integers(-1, 300)] * 4, st.integers(-1, 140),
) | st.builds(lambda h, n: f"2001:db8::{h:x}/{n}", st.integers(0, 2**20), st.integers(-1, 200))
SCALARS = st.one_of(
    st.booleans(), TOML_INTS, st.floats(), st.text(max_size=40), DURATIONS, PREFIXES,
    st.text(alphabet=st.characters(min_codepoint=0x80), max_size=20),
    st.just("x" * 100_000), st.just(10**18), st.just(""),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                 max_size=4),
    max_leaves=12,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    doc = json.loads(json.dumps(base))  # a deep copy
    for _ in range(draw(st.integers(1, 4))):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent: Any = doc
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "delete", "add", "dup"]))
        if action == "replace":
            parent[path[-1]] = draw(VALUES)
        elif action == "delete":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            key = draw(st.text(min_size=1, max_size=16) | st.sampled_from(
                ["interval", "timeout", "prefixes", "type", "checks", "bgp", "relay_hold"]))
            parent[key] = draw(VALUES)
        elif action == "dup" and isinstance(parent, list):
            parent.append(parent[path[-1]])
    return doc


def _check(tmp: Path, main_text: str | bytes, dropins: dict[str, str | bytes]) -> int:
    for old in tmp.glob("conf.d/*"):
        old.unlink()
    conf = tmp / "anycastd.toml"
    (conf.write_bytes if isinstance(main_text, bytes) else conf.write_text)(main_text)  # type: ignore[operator]
    (tmp / "conf.d").mkdir(exist_ok=True)
    for name, text in dropins.items():
        path = tmp / "conf.d" / name
        (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)  # type: ignore[operator]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["check-config", "-q", "-c", str(conf)])
    text = err.getvalue()
    assert rc in (0, EX_CONFIG), text
    assert "Traceback" not in text, text
    assert "internal error" not in text, text
    if rc == EX_CONFIG:
        issues: list[ConfigIssue] = []
        try:
            load_config(conf)
        except ConfigError as exc:
            issues = exc.issues
        assert issues, "check-config said 78 but load_config accepted it"
        files = {str(conf), *(str(tmp / "conf.d" / n) for n in dropins)}
        for issue in issues:
            assert issue.file in files, issue
            # a key, or a position in the file (syntax), or a whole-file problem (key "":
            # not UTF-8, a drop-in with a non-service table) -- always with a message
            assert issue.message.strip(), issue
            if not issue.key and issue.line is None:
                WHOLE_FILE.add(issue.message.split("(")[0].strip()[:60])
    return rc


WHOLE_FILE: set[str] = set()  # the whole-file messages seen (no key, no line)


def test_fuzzed_main_config_never_tracebacks(tmp_path: Path) -> None:
    seen = {"valid": 0, "invalid": 0}

    @FUZZ
    @given(mutated(BASE))
    def run(doc: dict[str, Any]) -> None:
        rc = _check(tmp_path, to_toml(doc), {})
        seen["valid" if rc == 0 else "invalid"] += 1

    run()
    assert seen["invalid"] > 0
    record_section("fuzz", "config: main file mutated", seen)


def test_fuzzed_dropins_and_conflicts_never_traceback(tmp_path: Path) -> None:
    seen = {"valid": 0, "invalid": 0}

    @FUZZ
    @given(mutated(BASE_DROPIN), st.booleans(), st.booleans())
    def run(doc: dict[str, Any], conflict: bool, foreign_section: bool) -> None:
        dropins = {"20-fuzz.toml": to_toml(doc)}
        if conflict:  # the same service defined in two drop-ins
            dropins["30-dup.toml"] = DROPIN.read_text()
        if foreign_section:  # drop-ins may only add services
            dropins["40-bgp.toml"] = '[bgp]\nlocal_as = 1\n'
        rc = _check(tmp_path, EXAMPLE.read_text(), dropins)
        seen["valid" if rc == 0 else "invalid"] += 1

    run()
    assert seen["invalid"] > 0
    record_section("fuzz", "config: drop-ins mutated, conflicts", seen)


def test_raw_garbage_never_tracebacks(tmp_path: Path) -> None:
    seen = {"valid": 0, "invalid": 0}

    @FUZZ
    @given(st.binary(max_size=2000) | st.text(max_size=2000).map(str.encode))
    def run(data: bytes) -> None:
        rc = _check(tmp_path, data, {"50-garbage.toml": data[::-1]})
        seen["valid" if rc == 0 else "invalid"] += 1

    run()
    record_section("fuzz", "config: raw bytes and text", seen)
