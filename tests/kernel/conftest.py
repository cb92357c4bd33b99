"""Kernel tests run only inside the User-Mode-Linux guest (tests/kernel/run-in-uml.sh).

The guest's PID 1 (uml-init.sh) sets ANYCASTD_IN_UML=1 after loading ip_vs, dummy and
8021q. Anywhere else every test in this directory is marked ``kernel`` and skipped, so a
plain host ``pytest`` run reports them as skipped, never as passed.
"""

from __future__ import annotations

import os

import pytest

IN_UML = os.environ.get("ANYCASTD_IN_UML") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    skip = pytest.mark.skip(reason="kernel test: runs only in the UML guest (run-in-uml.sh)")
    for item in items:
        if not str(item.path).startswith(here):
            continue
        item.add_marker(pytest.mark.kernel)
        if not IN_UML:
            item.add_marker(skip)
