"""The Prometheus configuration, rules, their unit tests and the runbooks hold together.

``promtool`` validates the files and runs the rule unit tests; the rest is checked here:
every alert is labelled and annotated for an operator, links a runbook that exists, has
a firing and a quiet unit test, and every expression uses only metrics that
``penny-cache exporter``, the service workers' per-process metrics (or Prometheus
itself) really export.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from penny_cache.observe.exporter import EXPORTED_METRICS
from penny_cache.observe.metrics import PROCESS_METRICS
from tests.conftest import unavailable

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
CONFIG = PROMETHEUS / "prometheus.yml"
RECORDING = PROMETHEUS / "rules" / "penny_cache_recording.yml"
ALERTS = PROMETHEUS / "rules" / "penny_cache_alerts.yml"
RULE_FILES = (RECORDING, ALERTS)
UNIT_TESTS = PROMETHEUS / "tests" / "penny_cache_alerts_test.yml"

# exactly what penny_cache.observe.exporter publishes, what each service worker exposes itself
# (penny_cache.observe.metrics), plus Prometheus's own scrape health
ALLOWED_METRICS = EXPORTED_METRICS | PROCESS_METRICS | {"up"}
SEVERITIES = frozenset({"page", "ticket"})
RUNBOOK_SECTIONS = ("Meaning", "Impact", "Diagnosis", "Mitigation")
# runbook pages no alert points to: procedures an operator follows (linked from the index)
PROCEDURES = frozenset({"DatabaseRestored"})
EXPECTED_SCRAPE_JOBS = {
    "penny-cache-exporter": "9464",
    "redis": "9121",
    "penny-cache-service": "8000",
}


def _load(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict), f"{path} is not a YAML mapping"
    return loaded


def _rules(path: Path) -> list[dict[str, Any]]:
    return [rule for group in _load(path)["groups"] for rule in group["rules"]]


def _alerts() -> list[dict[str, Any]]:
    return [rule for rule in _rules(ALERTS) if "alert" in rule]


def _all_rules() -> list[dict[str, Any]]:
    return [rule for path in RULE_FILES for rule in _rules(path)]


def _promtool(*args: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        unavailable("promtool is not installed (apt-get install prometheus)")
        return
    result = subprocess.run(
        [promtool, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, (
        f"promtool {' '.join(args)} exited {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )


# AST node attributes that hold sub-expressions, across promql_parser's node types
_CHILDREN = ("lhs", "rhs", "expr", "param", "vector_selector")


def _metric_names(node: Any) -> set[str]:
    """Every metric name a parsed PromQL expression selects."""
    if type(node).__name__ == "VectorSelector":
        assert node.name, f"selector without a literal metric name: {node}"
        return {str(node.name)}
    names: set[str] = set()
    for attribute in _CHILDREN:
        child = getattr(node, attribute, None)
        if child is not None and not isinstance(child, str | int | float):
            names |= _metric_names(child)
    for argument in getattr(node, "args", None) or ():
        names |= _metric_names(argument)
    return names


def test_metric_walker_finds_every_selector() -> None:
    """The AST walk used below sees selectors nested in every node type the rules use."""
    parsed = promql_parser.parse(
        "-(sum by (x) (rate(a_total[5m])) / on (x) group_left max(b)) > bool 1"
        " or absent(c{job='j'}) unless max_over_time(d[5m:1m]) and (e offset 1m)"
    )
    assert _metric_names(parsed) == {"a_total", "b", "c", "d", "e"}


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda path: path.name)
def test_promtool_accepts_rule_file(path: Path) -> None:
    """``promtool check rules`` accepts each rule file (syntax, PromQL, templates)."""
    _promtool("check", "rules", str(path.relative_to(ROOT)))


def test_promtool_accepts_config() -> None:
    """``promtool check config`` accepts prometheus.yml and the rule files it names."""
    _promtool("check", "config", str(CONFIG.relative_to(ROOT)))


def test_promtool_rule_unit_tests_pass() -> None:
    """Every alert fires and stays quiet as its unit tests expect; recording rules compute."""
    _promtool("test", "rules", str(UNIT_TESTS.relative_to(ROOT)))


def test_config_scrapes_the_jobs_and_loads_both_rule_files() -> None:
    """prometheus.yml scrapes the three jobs on their ports and loads both rule files."""
    config = _load(CONFIG)
    assert config["global"]["evaluation_interval"] == "15s"
    loaded = {(CONFIG.parent / name).resolve() for name in config["rule_files"]}
    assert loaded == {path.resolve() for path in RULE_FILES}
    assert all(not Path(name).is_absolute() for name in config["rule_files"])
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for job_name, port in EXPECTED_SCRAPE_JOBS.items():
        targets = [t for sc in jobs[job_name]["static_configs"] for t in sc["targets"]]
        assert targets, job_name
        assert all(target.endswith(f":{port}") for target in targets), (job_name, targets)


def test_every_expression_uses_only_exported_metrics() -> None:
    """No rule refers to a metric the exporter, the workers or Prometheus do not publish."""
    rules = _all_rules()
    assert rules
    for rule in rules:
        name = rule.get("alert") or rule["record"]
        used = _metric_names(promql_parser.parse(rule["expr"]))
        assert used, f"{name} selects no metric"
        unknown = used - ALLOWED_METRICS
        assert not unknown, f"{name} uses metrics nobody exports: {sorted(unknown)}"


def test_recording_rules_follow_the_naming_convention() -> None:
    """Recording rules are named ``penny_cache:<what>:<operation>`` and are unique."""
    records = [rule["record"] for rule in _rules(RECORDING)]
    assert "penny_cache:hit_ratio:rate5m" in records
    assert len(records) == len(set(records))
    assert all(re.fullmatch(r"penny_cache:[a-z_]+:[a-z0-9_]+", name) for name in records)
    assert not [rule for rule in _rules(RECORDING) if "alert" in rule]


def test_every_alert_has_severity_and_annotations() -> None:
    """Each alert has a page/ticket severity and a summary, description and runbook_url."""
    alerts = _alerts()
    names = [alert["alert"] for alert in alerts]
    assert len(names) == len(set(names)), "duplicate alert names"
    for alert in alerts:
        name = alert["alert"]
        assert alert.get("labels", {}).get("severity") in SEVERITIES, name
        annotations = alert.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            assert str(annotations.get(key, "")).strip(), f"{name} lacks {key}"


def test_every_runbook_url_resolves_to_a_complete_runbook() -> None:
    """runbook_url is ``docs/runbooks/<alert>.md`` and that page has the four sections."""
    for alert in _alerts():
        name = alert["alert"]
        url = alert["annotations"]["runbook_url"]
        assert url == f"docs/runbooks/{name}.md", f"{name}: inconsistent runbook_url {url!r}"
        page = ROOT / url
        assert page.is_file(), f"{name}: {url} does not exist"
        headings = set(re.findall(r"^##\s+(.+?)\s*$", page.read_text("utf-8"), re.MULTILINE))
        missing = [section for section in RUNBOOK_SECTIONS if section not in headings]
        assert not missing, f"{url} lacks sections {missing}"


def test_runbook_index_lists_every_alert() -> None:
    """docs/runbooks/README.md links every alert's runbook and every procedure (a page
    no alert points to, such as DatabaseRestored), and no page is orphaned."""
    index = (ROOT / "docs" / "runbooks" / "README.md").read_text("utf-8")
    names = {alert["alert"] for alert in _alerts()} | PROCEDURES
    for name in names:
        assert f"({name}.md)" in index, f"README.md does not link {name}.md"
    pages = {page.stem for page in (ROOT / "docs" / "runbooks").glob("*.md")} - {"README"}
    assert pages == names


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    """For every alert the promtool tests hold a case expecting it and one expecting none."""
    tests = _load(UNIT_TESTS)["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test") or ():
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {alert["alert"] for alert in _alerts()}
    assert names - firing == set(), f"alerts never tested firing: {sorted(names - firing)}"
    assert names - quiet == set(), f"alerts never tested quiet: {sorted(names - quiet)}"
    assert (firing | quiet) <= names, f"tests of unknown alerts: {sorted((firing | quiet) - names)}"


def test_every_recording_rule_has_a_value_test() -> None:
    """Every recording rule's value is asserted by a promql_expr_test."""
    tests = _load(UNIT_TESTS)["tests"]
    exprs = " ".join(
        str(check["expr"]) for case in tests for check in case.get("promql_expr_test") or ()
    )
    for rule in _rules(RECORDING):
        assert re.search(rf"{re.escape(rule['record'])}\b", exprs), rule["record"]
