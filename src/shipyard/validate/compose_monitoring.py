"""The Compose hosts' monitoring stack (compose.monitoring.yaml reads monitoring/): Prometheus'
config with the rule file it loads and the rules' unit tests, by promtool, and Alertmanager's
config, by amtool. Compose itself checks compose.monitoring.yaml with the other Compose files.
"""

from __future__ import annotations

from pathlib import Path

from shipyard.engines.proc import Result
from shipyard.validate.files import rel
from shipyard.validate.finding import Finding, oneline
from shipyard.validate.monitoring import untested
from shipyard.validate.tools import no_report, run_tool

FOLDER = "monitoring"
PROMETHEUS = "prometheus.yml"
# The rule file prometheus.yml loads, and its promtool unit tests: the kit writes the cases
# measured in minutes to rules.test.yml, those in hours to rules.hourly.test.yml (each file has
# one evaluation interval); every file of the pattern runs.
RULES = "rules.yml"
RULE_TESTS = "rules*.test.yml"
ALERTMANAGER = "alertmanager.yml"


def _failure(result: Result) -> str | None:
    """Why a promtool/amtool run failed, or None. Both say SUCCESS for each file they accept:
    an exit 0 without it proves nothing. Exit 1 is their report; any other end, no report."""
    if result.returncode == 0 and "SUCCESS" in result.stdout:
        return None
    said = oneline(f"{result.stdout} {result.stderr}") if result.returncode == 1 else ""
    return said or no_report(result)


def check_prometheus_config(root: Path) -> list[Finding]:
    """`promtool check config` on monitoring/prometheus.yml (which checks the rule files it
    loads too), then `promtool test rules` on each monitoring/rules*.test.yml."""
    folder = root / FOLDER
    config = folder / PROMETHEUS
    if not config.is_file():
        return []
    failed = _failure(run_tool(["promtool", "check", "config", PROMETHEUS], folder))
    if failed:
        return [Finding(rel(root, config), None, "promtool", "check-config", failed)]
    tests = sorted(folder.glob(RULE_TESTS))
    if not tests:
        if (folder / RULES).is_file():
            message = f"{FOLDER}/{RULES} has alert rules but no promtool unit tests here"
            return [Finding(rel(root, folder / RULES), None, "promtool", "test", message)]
        return []
    findings = [
        Finding(rel(root, test), None, "promtool", "test", failed)
        for test in tests
        if (failed := _failure(run_tool(["promtool", "test", "rules", test.name], folder)))
    ]
    if not findings and (missing := untested(folder / RULES, tests)):
        message = f"{', '.join(missing)}: no promtool unit test in {FOLDER}/{RULE_TESTS} fires it"
        findings.append(Finding(rel(root, folder / RULES), None, "promtool", "test", message))
    return findings


def check_alertmanager_config(root: Path) -> list[Finding]:
    """`amtool check-config` on monitoring/alertmanager.yml (as it is in the repository: the
    receivers' addresses are added where it runs, from the environment)."""
    folder = root / FOLDER
    config = folder / ALERTMANAGER
    if not config.is_file():
        return []
    failed = _failure(run_tool(["amtool", "check-config", ALERTMANAGER], folder))
    return [Finding(rel(root, config), None, "amtool", "check-config", failed)] if failed else []
