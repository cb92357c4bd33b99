"""The import rules of anycastd (docs/architecture.md, "Import rules"), read from the source.

Every ``import`` and ``from ... import`` anywhere in a module counts, inside functions and
``if TYPE_CHECKING:`` too: a lazy import is still a dependency. ``from a import b`` counts as
importing ``a.b`` (``b`` may be a module), which is inside ``a``. Each rule names the modules
it governs and what they may (``only``, besides the standard library) or may not (``never``)
import. A rule broken on purpose for now is an entry in ``ALLOWED``, with the reason and who
removes it. ``test_the_checker_*`` prove the checker reports what it should.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "anycastd"


@dataclass(frozen=True)
class Rule:
    says: str
    #: the modules it governs: these packages and everything in them...
    packages: tuple[str, ...] = ()
    #: ...and these modules exactly (a package's ``__init__`` alone)
    modules: tuple[str, ...] = ()
    #: ...except these packages
    unless_in: tuple[str, ...] = ()
    #: what they may import besides the standard library (None: anything not ``never``)
    only: tuple[str, ...] | None = None
    #: what they may never import (checked before ``only``)
    never: tuple[str, ...] = ()

    def governs(self, module: str) -> bool:
        return (module in self.modules or within(module, *self.packages)) and not within(
            module, *self.unless_in
        )

    def allows(self, imported: str) -> bool:
        if within(imported, *self.never):
            return False
        return self.only is None or stdlib(imported) or within(imported, *self.only)


SHELL = ("anycastd.engine", "anycastd.observe", "anycastd.cli", "anycastd.testing", "anycastd.lab")

RULES = (
    Rule("the model imports only the standard library", modules=("anycastd.model",), only=()),
    Rule(
        "the core is pure: it imports only the model, the core and the config schema (not "
        "config.files, which reads files)",
        packages=("anycastd.core",),
        only=("anycastd.model", "anycastd.core", "anycastd.config"),
        never=("anycastd.config.files",),
    ),
    Rule(
        "production code never imports testing/",
        packages=("anycastd",),
        unless_in=("anycastd.testing",),
        never=("anycastd.testing",),
    ),
    Rule(
        "an actuator never imports the shell, BGP or the lab",
        packages=("anycastd.actuators",),
        never=(*SHELL, "anycastd.bgp"),
    ),
    Rule("BGP never imports the shell or the lab", packages=("anycastd.bgp",), never=SHELL),
    Rule(
        "the relay imports only the standard library, and so do the packages it starts under",
        modules=("anycastd.bgp.relay", "anycastd.relay", "anycastd.bgp", "anycastd"),
        only=(),
    ),
    Rule(
        "the observers never import the engine, the actuators or BGP",
        packages=("anycastd.observe",),
        never=("anycastd.engine", "anycastd.actuators", "anycastd.bgp"),
    ),
    Rule(
        "the namespace lab imports only itself (the demo and the tests use it, not the daemon)",
        packages=("anycastd.lab",),
        only=("anycastd.lab",),
    ),
)

#: (module, what it may import, and what is inside it) -> why for now, and who removes it.
#: Empty: the last entry (observe.metrics -> the error taxonomy, then in actuators/) went
#: when the taxonomy moved to anycastd/errors.py, which every layer may import.
ALLOWED: dict[tuple[str, str], str] = {}

#: No module is longer than this unless listed in LARGE with its reason.
MAX_LINES = 600
LARGE = {
    # One cohesive thing: the narrated scenario (topology, steps, narration, teardown) reads
    # top to bottom; its namespace tools are anycastd.lab already.
    "anycastd/demo.py": "one narrated scenario",
    # One cohesive thing: one frozen model per config section and check type (608 lines
    # with the process/listen/link checks). Splitting the check models out would also
    # split test_config's "every key is documented" walk, which reads this one module.
    "anycastd/config/schema.py": "the config models, one per section and check type",
    # One pure state machine (the pass, its gates, the take-down table): OSPF rides along
    # with BGP in the same pass (619 lines with it); split, its order rules would be apart.
    "anycastd/core/plan.py": "one planning pass: BGP and OSPF in one ordered plan",
    # One pure function of config and health, and the per-state table it implements (617
    # lines once the owners' shared part was computed once per owner set, not per prefix).
    "anycastd/core/desired.py": "the desired state: compute() and the state table",
}


def imports(source: str, where: str = "<source>") -> Iterator[str]:
    """Every module ``source`` imports, anywhere in it (functions and TYPE_CHECKING too)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{where}: relative import"
            assert node.module is not None
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def stdlib(module: str) -> bool:
    return module.partition(".")[0] in sys.stdlib_module_names


def within(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def violations(module: str, source: str) -> list[str]:
    """``module`` (dotted name) with this ``source``: every import a rule forbids, as
    "module imports name: rule", minus the ALLOWED ones."""
    found = []
    for imported in dict.fromkeys(imports(source, module)):
        if any(m == module and within(imported, allowed) for m, allowed in ALLOWED):
            continue
        for rule in RULES:
            if rule.governs(module) and not rule.allows(imported):
                found.append(f"{module} imports {imported}: {rule.says}")
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_keeps_the_import_rules(path: Path) -> None:
    assert violations(module_name(path), path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    ("module", "line", "rule"),
    [
        ("anycastd.core.plan", "from anycastd.engine.controller import Controller", "core"),
        ("anycastd.core.desired", "from anycastd.config.files import load_config", "core"),
        ("anycastd.core.plan", "import pyroute2", "core"),
        ("anycastd.model", "from anycastd.config import Config", "model"),
        ("anycastd.engine.world", "from anycastd.testing.loopback import FakeLoopback",
         "production"),
        ("anycastd.demo", "from anycastd import testing", "production"),
        ("anycastd.actuators.loopback", "from anycastd.engine import daemon", "actuator"),
        ("anycastd.actuators.ipvs", "import anycastd.bgp.speaker", "actuator"),
        ("anycastd.bgp.speaker", "from anycastd.observe.metrics import Metrics", "BGP"),
        ("anycastd.bgp.relay", "from anycastd.model import Route", "relay"),
        ("anycastd.bgp", "from anycastd.bgp.speaker import ExabgpSpeaker", "relay"),
        ("anycastd.observe.api", "from anycastd.bgp.protocol import PeerState", "observers"),
        ("anycastd.lab.netns", "from anycastd.engine.daemon import Daemon", "lab"),
    ],
)
def test_the_checker_reports_a_forbidden_import(module: str, line: str, rule: str) -> None:
    source = f"def lazy() -> None:\n    {line}\n"  # a lazy import counts too
    (found,) = violations(module, source)
    assert found.startswith(f"{module} imports ")
    assert rule in found


@pytest.mark.parametrize(
    ("module", "line"),
    [
        ("anycastd.core.plan", "from anycastd.config import Config"),
        ("anycastd.core.plan", "from collections.abc import Sequence"),
        ("anycastd.testing.loopback", "from anycastd.actuators.memory import MemoryLoopback"),
        ("anycastd.engine.world", "from anycastd.actuators.memory import MemoryLoopback"),
        ("anycastd.demo", "from anycastd.lab.netns import Netns"),
        ("anycastd.bgp.speaker", "from anycastd.errors import PermanentError"),
    ],
)
def test_the_checker_lets_an_allowed_import_pass(module: str, line: str) -> None:
    assert violations(module, line + "\n") == []


def test_every_allowed_exception_is_still_needed() -> None:
    used = {
        (module_name(p), m) for p in SOURCES for m in imports(p.read_text(encoding="utf-8"))
    }
    assert [
        (module, allowed)
        for module, allowed in ALLOWED
        if not any(m == module and within(i, allowed) for m, i in used)
    ] == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_over_the_size_limit_unless_listed(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    name = str(path.relative_to(ROOT))
    assert lines <= MAX_LINES or name in LARGE, (
        f"{name} has {lines} lines (limit {MAX_LINES}): split it, or list it in LARGE with "
        "the reason it is one cohesive thing"
    )


def test_every_large_module_listed_still_is() -> None:
    sizes = {
        name: len((ROOT / name).read_text(encoding="utf-8").splitlines())
        for name in LARGE
        if (ROOT / name).exists()
    }
    assert {name: sizes.get(name) for name in LARGE if sizes.get(name, 0) <= MAX_LINES} == {}
