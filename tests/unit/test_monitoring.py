"""The shipped monitoring (monitoring/): promtool checks and unit-tests the alert rules,
lints a real scrape of the daemon, and the dashboard and rules only use metric names the
daemon really exports (after a realistic run: tests/unit/metrics_daemon.py).

promtool comes with Debian's ``prometheus`` package (scripts/bootstrap installs it)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.metrics_daemon import realistic_run

ROOT = Path(__file__).parents[2]
RULES = ROOT / "monitoring" / "prometheus" / "anycastd.rules.yml"
RULE_TESTS = ROOT / "monitoring" / "prometheus" / "anycastd.rules.test.yml"
DASHBOARD = ROOT / "monitoring" / "grafana" / "anycastd.json"

#: metric names as they appear in PromQL (recording rules use ``anycastd:``, not matched)
NAME = re.compile(r"\b((?:anycastd|process|python)_[a-z_]+)\b")


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe is not None, "promtool not found: run scripts/bootstrap (Debian package prometheus)"
    return subprocess.run([exe, *args], input=stdin, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The daemon's /metrics text after a realistic run (every family has samples)."""
    return asyncio.run(realistic_run(tmp_path_factory.mktemp("daemon"))).text


def exported_names(text: str) -> set[str]:
    names: set[str] = set()
    for fam in text_string_to_metric_families(text):
        names.update(s.name for s in fam.samples)
    return names


def dashboard_exprs() -> Iterator[str]:
    def walk(node: object) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "query", "definition") and isinstance(value, str):
                    yield value
                else:
                    yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    yield from walk(json.loads(DASHBOARD.read_text()))


def rule_exprs() -> list[str]:
    """The ``expr`` of every rule (single-line or ``|`` block)."""
    out: list[str] = []
    lines = RULES.read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)expr: (.*)$", line)
        if not m:
            continue
        if m.group(2).strip() != "|":
            out.append(m.group(2))
            continue
        block = []
        for follow in lines[i + 1:]:
            if follow.strip() and len(follow) - len(follow.lstrip()) <= len(m.group(1)):
                break
            block.append(follow)
        out.append("\n".join(block))
    return out


# ---------------------------------------------------------------- rules


def test_promtool_check_rules_accepts_the_rules() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_of_every_alert_pass() -> None:
    done = promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_test_that_fires_it_and_one_where_it_is_quiet() -> None:
    alerts = set(re.findall(r"^\s*- alert: (\w+)$", RULES.read_text(), re.M))
    assert len(alerts) >= 9
    firing: set[str] = set()
    quiet: set[str] = set()
    # one alert_rule_test case: "alertname: X" followed by its exp_alerts
    case = r"alertname: (\w+)\n\s*exp_alerts:(.*?)(?=\n\s*- eval_time|\n\s*- interval|\Z)"
    for name, body in re.findall(case, RULE_TESTS.read_text(), re.S):
        (quiet if body.strip().startswith("[]") else firing).add(name)
    assert alerts - firing == set(), "alerts never fired by a test"
    assert alerts - quiet == set(), "alerts never checked quiet by a test"
    assert firing | quiet <= alerts, "tests of alerts that do not exist"


def test_the_rules_cover_what_the_issue_asks_for() -> None:
    alerts = set(re.findall(r"^\s*- alert: (\w+)$", RULES.read_text(), re.M))
    assert {
        "AnycastdTargetDown", "AnycastdServiceDown", "AnycastdPrefixFewNodes",
        "AnycastdPrefixNotPublished", "AnycastdBgpSessionDown", "AnycastdBgpSessionFlapping",
        "AnycastdServiceFlapping", "AnycastdReloadFailed", "AnycastdActuatorPermanentErrors",
        "AnycastdMaintenanceForgotten", "AnycastdSchedulerLate",
    } <= alerts
    assert "severity: critical" in RULES.read_text()


# ---------------------------------------------------------------- a real scrape


def test_promtool_check_metrics_accepts_a_real_scrape(scrape: str) -> None:
    done = promtool("check", "metrics", stdin=scrape)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == ""  # no lint problem reported
    assert done.stderr.strip() == ""


def test_the_rules_use_only_metrics_the_daemon_exports(scrape: str) -> None:
    exported = exported_names(scrape) | {"up"}
    used = {n for e in rule_exprs() for n in NAME.findall(e)}
    assert used, "no metric names found in the rules"
    assert used - exported == set()


# ---------------------------------------------------------------- the dashboard


def test_the_dashboard_uses_only_metrics_the_daemon_exports(scrape: str) -> None:
    exported = exported_names(scrape)
    used = {n for e in dashboard_exprs() for n in NAME.findall(e)}
    assert used - exported == set()
    # at a glance: who announces what, service states, checks, BGP, failovers
    assert {
        "anycastd_prefix_announced", "anycastd_route_announced", "anycastd_service_state",
        "anycastd_check_duration_seconds_bucket", "anycastd_bgp_peer_up",
        "anycastd_transitions_total",
    } <= used


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    # promtool parses each query as a recording rule (Grafana's variables filled in)
    fill = {"$__rate_interval": "5m", "$job": ".*", "$instance": ".*", "$service": ".*"}
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, query in enumerate(dashboard_exprs()):
        if query.startswith("label_values("):
            continue
        expr = query
        for var, value in fill.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, expr
        lines += [f"      - record: dashboard:q{i}", "        expr: |"]
        lines += [f"          {line}" for line in expr.splitlines()]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text("\n".join(lines) + "\n")
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_dashboard_is_provisionable() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "anycastd"
    assert "id" not in dash  # provisioning assigns it
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    cells: dict[tuple[int, int], str] = {}
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for cell in ((x, y) for x in range(g["x"], g["x"] + g["w"])
                     for y in range(g["y"], g["y"] + g["h"])):  # fmt: skip
            assert cell not in cells, f"{p['title']} overlaps {cells[cell]}"
            cells[cell] = p["title"]
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
