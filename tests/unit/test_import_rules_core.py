"""The layering of the pure core, read from the source: model imports only the standard
library; the core imports only the model, itself, the config model and the standard library;
the address and IPVS actuators never import the engine, the observers or testing/."""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "anycastd"


def imports(path: Path) -> Iterator[str]:
    """Every module ``path`` imports, anywhere in it (functions and TYPE_CHECKING too)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            assert node.module is not None
            yield node.module


def stdlib(module: str) -> bool:
    return module.partition(".")[0] in sys.stdlib_module_names


def within(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_model_imports_only_the_standard_library() -> None:
    assert [m for m in imports(PACKAGE / "model.py") if not stdlib(m)] == []


@pytest.mark.parametrize("path", sorted((PACKAGE / "core").glob("*.py")), ids=lambda p: p.name)
def test_the_core_imports_no_io(path: Path) -> None:
    allowed = ("anycastd.model", "anycastd.core", "anycastd.config")
    assert [m for m in imports(path) if not (stdlib(m) or within(m, *allowed))] == []


@pytest.mark.parametrize("name", ["loopback.py", "ipvs.py"])
def test_the_address_and_ipvs_actuators_never_import_the_shell(name: str) -> None:
    forbidden = ("anycastd.engine", "anycastd.observe", "anycastd.testing", "anycastd.cli")
    assert [m for m in imports(PACKAGE / "actuators" / name) if within(m, *forbidden)] == []
