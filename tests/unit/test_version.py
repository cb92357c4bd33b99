"""``anycastd.__version__`` is a constant (no metadata lookup at start): it must say what
the package's metadata says."""

from __future__ import annotations

import tomllib
from pathlib import Path

import anycastd

ROOT = Path(__file__).resolve().parents[2]


def test_the_version_constant_is_the_one_pyproject_declares() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert anycastd.__version__ == project["version"]
