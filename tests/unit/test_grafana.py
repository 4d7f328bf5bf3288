"""Static checks of the Grafana dashboard and provisioning files (no Grafana, no Prometheus).

The dashboard may only chart metrics that exist: the ``penny_cache_*`` families served by
``penny-cache exporter``, the per-process ``penny_cache_*`` samples the service workers serve
(``penny_cache.observe.metrics``) and a handful of redis_exporter families. Every query must parse
as PromQL and every ``rate``/``increase`` must use ``$__rate_interval``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import promql_parser
import pytest
import yaml

from penny_cache.observe.exporter import EXPORTED_METRICS
from penny_cache.observe.metrics import PROCESS_METRICS

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"
DASHBOARD_PATH = GRAFANA / "dashboards" / "penny-cache-overview.json"
DATASOURCES_PATH = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS_PATH = GRAFANA / "provisioning" / "dashboards" / "penny-cache.yml"

PENNY_METRICS = EXPORTED_METRICS
REDIS_METRICS = frozenset(
    {
        "redis_up",
        "redis_memory_used_bytes",
        "redis_memory_max_bytes",
        "redis_evicted_keys_total",
        "redis_connected_clients",
        "redis_commands_processed_total",
        "redis_keyspace_hits_total",
        "redis_keyspace_misses_total",
    }
)
ALLOWED_METRICS = PENNY_METRICS | PROCESS_METRICS | REDIS_METRICS

# An odd duration no one would write by hand: a range equal to it came from $__rate_interval.
RATE_INTERVAL_STANDIN = "7m13s"
RATE_INTERVAL_RANGE = timedelta(minutes=7, seconds=13)
RANGE_FUNCTIONS = frozenset({"rate", "increase", "irate"})
NO_DATASOURCE_TYPES = frozenset({"row", "text"})
UNITS_BY_KIND = {
    "percentunit": "ratio",
    "reqps": "rate",
    "ops": "rate",
    "s": "duration",
    "short": "count",
    "bytes": "size",
}
GRAFANA_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
METRIC_LIKE = re.compile(r"\b(?:penny_cache|redis)_[A-Za-z0-9_]*\b")


def _load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD_PATH.read_text(encoding="utf-8"))
    return data


def _load_yaml(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return data


def _all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from _all_panels(panel.get("panels", []))


def _data_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in _all_panels(dashboard["panels"]) if p["type"] not in NO_DATASOURCE_TYPES]


def _exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) for every query target of the dashboard."""
    return [
        (panel["title"], target["expr"])
        for panel in _data_panels(dashboard)
        for target in panel.get("targets", [])
    ]


def _substitute(expr: str) -> str:
    """Replace Grafana's variables so that Prometheus's own parser accepts the query."""
    expr = expr.replace("${__rate_interval}", RATE_INTERVAL_STANDIN)
    expr = expr.replace("$__rate_interval", RATE_INTERVAL_STANDIN)
    return GRAFANA_VARIABLE.sub(".*", expr)


def _nodes(expr: str) -> list[Any]:
    nodes: list[Any] = []
    promql_parser.walk(promql_parser.parse(_substitute(expr)), pre_visit=nodes.append)
    return nodes


DASHBOARD = _load_dashboard()
EXPRS = _exprs(DASHBOARD)
EXPR_IDS = [f"{title}: {expr.splitlines()[0]}" for title, expr in EXPRS]


def test_dashboard_identity_is_stable() -> None:
    """The dashboard keeps its uid, has a title and a modern schema, and is importable as is
    (no ``__inputs`` block, so provisioning needs no datasource rewriting)."""
    assert DASHBOARD["uid"] == "penny-cache-overview"
    assert DASHBOARD["title"]
    assert isinstance(DASHBOARD["schemaVersion"], int)
    assert DASHBOARD["schemaVersion"] >= 36
    assert "__inputs" not in DASHBOARD
    assert "__requires" not in DASHBOARD


# variable -> (the metric its label_values reads, the label it lists)
VARIABLE_SOURCES: Final = {
    "exporter_job": ("penny_cache_up", "job"),
    "exporter_instance": ("penny_cache_up", "instance"),
    "namespace": ("penny_cache_up", "namespace"),
    "service_job": ("penny_cache_build_info", "job"),
    "service_instance": ("penny_cache_build_info", "instance"),
}


def test_template_variables() -> None:
    """Finding: ``$job``/``$instance`` came from ``penny_cache_up``, which only the exporter
    serves, so no service replica could be chosen and anything but "All" emptied the
    per-process row. Now the exporter's and the service's jobs and instances are separate
    label_values variables, each read from a metric that side exports (the service's
    ``penny_cache_build_info`` is the one without a namespace label)."""
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables.keys() == {"datasource", *VARIABLE_SOURCES}
    datasource = variables["datasource"]
    assert datasource["type"] == "datasource"
    assert datasource["query"] == "prometheus"
    for name, (metric, label) in VARIABLE_SOURCES.items():
        variable = variables[name]
        assert variable["type"] == "query"
        assert "${datasource}" in json.dumps(variable["datasource"])
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = re.fullmatch(r"label_values\((\w+)(\{.*\})?,\s*(\w+)\)", text)
        assert match, f"{name}: {text}"
        assert (match.group(1), match.group(3)) == (metric, label), name
        if name.startswith("service_"):
            assert 'namespace=""' in text, name
        assert "$job" not in text and "$instance" not in text, name


def test_every_panel_has_a_description() -> None:
    """Every panel, rows and panels nested in rows included, says what it shows."""
    panels = list(_all_panels(DASHBOARD["panels"]))
    assert len(panels) > 10
    for panel in panels:
        description = panel.get("description")
        assert isinstance(description, str), panel["title"]
        assert description.strip(), panel["title"]


def test_every_data_panel_uses_the_datasource_variable() -> None:
    """Every panel that queries (all but text and row panels), and each of its targets, reads
    from ``${datasource}`` rather than a hard-coded datasource."""
    panels = _data_panels(DASHBOARD)
    assert panels
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["datasource"]["type"] == "prometheus", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"]) == panel["datasource"]


def test_every_data_panel_has_a_known_unit() -> None:
    """Every querying panel sets fieldConfig.defaults.unit to one of the agreed units, and
    ratio panels (a division of rates) use percentunit."""
    for panel in _data_panels(DASHBOARD):
        unit = panel["fieldConfig"]["defaults"].get("unit")
        assert unit in UNITS_BY_KIND, f"{panel['title']}: {unit!r}"
        if re.search(r"\b(ratio|share)\b", panel["title"], re.IGNORECASE):
            assert unit == "percentunit", panel["title"]


def test_panel_ids_unique_and_positioned() -> None:
    """Panel ids are unique across the dashboard and every panel has a full gridPos that
    fits the 24-column grid."""
    panels = list(_all_panels(DASHBOARD["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= grid.keys(), panel["title"]
        assert grid["h"] > 0, panel["title"]
        assert grid["w"] > 0, panel["title"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def _metric_names(expr: str) -> set[str]:
    """Every metric name a query reads, from the PromQL AST."""
    return {
        n.name
        for n in _nodes(expr)
        if isinstance(n, promql_parser.VectorSelector) and n.name is not None
    }


def _quantile_calls(expr: str) -> list[Any]:
    return [
        n
        for n in _nodes(expr)
        if isinstance(n, promql_parser.Call) and n.func.name == "histogram_quantile"
    ]


def test_no_not_exported_text_panel() -> None:
    """The per-process metrics are exported now: no text panel says they are not."""
    texts = [p for p in _all_panels(DASHBOARD["panels"]) if p["type"] == "text"]
    for panel in texts:
        assert "not exported" not in panel["options"]["content"].lower(), panel["title"]


@pytest.mark.parametrize("quantile", [0.5, 0.99])
def test_operation_latency_quantile_panels(quantile: float) -> None:
    """A panel charts the p50 and one the p99 of the operation histogram by operation:
    histogram_quantile over the rate of the ``_bucket`` series summed by (le, operation),
    in seconds."""
    bucket = "penny_cache_operation_duration_seconds_bucket"
    assert bucket in PROCESS_METRICS
    found = []
    for panel in _data_panels(DASHBOARD):
        for target in panel["targets"]:
            for call in _quantile_calls(target["expr"]):
                phi, argument = call.args
                if float(str(phi)) != quantile or bucket not in str(argument):
                    continue
                assert isinstance(argument, promql_parser.AggregateExpr), target["expr"]
                assert argument.modifier is not None, target["expr"]
                assert set(argument.modifier.labels) == {"le", "operation"}, target["expr"]
                assert _metric_names(str(argument)) == {bucket}, target["expr"]
                assert "rate(" in target["expr"], target["expr"]
                assert panel["fieldConfig"]["defaults"]["unit"] == "s", panel["title"]
                found.append(panel["title"])
    assert found, f"no p{quantile * 100:g} panel over {bucket}"


def test_metric_extraction_handles_histogram_quantile() -> None:
    """Metric-name extraction looks through histogram_quantile and its ``by (le)``
    aggregation, and does not mistake the ``le`` label for a metric."""
    expr = (
        "histogram_quantile(0.99, sum by (le, operation) (rate("
        'penny_cache_operation_duration_seconds_bucket{job=~"$job"}[$__rate_interval])))'
    )
    assert _metric_names(expr) == {"penny_cache_operation_duration_seconds_bucket"}
    assert set(METRIC_LIKE.findall(expr)) == {"penny_cache_operation_duration_seconds_bucket"}
    (call,) = _quantile_calls(expr)
    assert "le" in call.args[1].modifier.labels


def test_hit_ratio_stat_is_hits_over_requests() -> None:
    """The headline stat divides the rate of hits by the rate of requests, per namespace
    selection, and is shown as a percentage."""
    stats = [
        p
        for p in _data_panels(DASHBOARD)
        if p["type"] == "stat" and "hit ratio" in p["title"].lower()
    ]
    assert stats
    expr = stats[0]["targets"][0]["expr"]
    root = promql_parser.parse(_substitute(expr))
    assert isinstance(root, promql_parser.BinaryExpr)
    assert "penny_cache_hits_total" in str(root.lhs)
    assert "penny_cache_requests_total" in str(root.rhs)
    assert 'namespace=~"$namespace"' in expr
    assert stats[0]["fieldConfig"]["defaults"]["unit"] == "percentunit"


@pytest.mark.parametrize(("title", "expr"), EXPRS, ids=EXPR_IDS)
def test_expr_parses(title: str, expr: str) -> None:
    """Every target is valid PromQL once Grafana's variables are substituted."""
    promql_parser.parse(_substitute(expr))


@pytest.mark.parametrize(("title", "expr"), EXPRS, ids=EXPR_IDS)
def test_rates_use_rate_interval(title: str, expr: str) -> None:
    """Every rate()/increase() range is ``$__rate_interval`` (no fixed windows that break
    at other scrape intervals), and no other range selector is used."""
    nodes = _nodes(expr)
    calls = [n for n in nodes if isinstance(n, promql_parser.Call)]
    windows = [n for n in nodes if isinstance(n, promql_parser.MatrixSelector)]
    for call in calls:
        if call.func.name in RANGE_FUNCTIONS:
            assert call.func.name != "irate", "irate hides spikes; use rate"
            (argument,) = call.args
            assert isinstance(argument, promql_parser.MatrixSelector)
    for window in windows:
        assert window.range == RATE_INTERVAL_RANGE, f"{title}: {expr}"
    assert "[" not in expr.replace("[$__rate_interval]", "")


@pytest.mark.parametrize(("title", "expr"), EXPRS, ids=EXPR_IDS)
def test_only_exported_metrics(title: str, expr: str) -> None:
    """Every metric a query reads is one penny_cache or redis_exporter actually exports, found
    both by walking the PromQL AST and by a textual scan for metric-like names."""
    names = _metric_names(expr)
    assert names
    assert names <= ALLOWED_METRICS, f"{title}: {names - ALLOWED_METRICS}"
    assert set(METRIC_LIKE.findall(expr)) <= ALLOWED_METRICS


SELECTOR = re.compile(r"\b([a-z_:]+)\{([^}]*)\}")
EXPORTER_SCOPE = 'job=~"$exporter_job", instance=~"$exporter_instance"'
SERVICE_SCOPE = 'job=~"$service_job", instance=~"$service_instance"'


@pytest.mark.parametrize(("title", "expr"), EXPRS, ids=EXPR_IDS)
def test_selectors_are_scoped(title: str, expr: str) -> None:
    """Every selector of an exporter metric filters on the exporter's job and instance and
    the namespace; every selector of a service worker's metric on the service's job and
    instance (and no namespace); redis_exporter's on job "redis". So choosing a service
    replica narrows the per-process panels and never empties them, and the other way
    round."""
    selectors = SELECTOR.findall(expr)
    assert selectors, expr
    for name, labels in selectors:
        assert "$job" not in labels and "$instance" not in labels, f"{title}: {labels}"
        if EXPORTER_SCOPE in labels:
            assert name in PENNY_METRICS, f"{title}: {name}"
            assert 'namespace=~"$namespace"' in labels, f"{title}: {name}"
        elif SERVICE_SCOPE in labels:
            assert name in PROCESS_METRICS, f"{title}: {name}"
            assert "namespace" not in labels.replace('namespace=""', ""), f"{title}: {name}"
        else:
            assert name in REDIS_METRICS, f"{title}: {name}"
            assert labels == 'job="redis"', f"{title}: {name}"
    assert {name for name, _ in selectors} == _metric_names(expr), f"{title}: {expr}"


def test_variable_substitution_is_sound() -> None:
    """The substitution used by these tests turns Grafana variables into a regex and the rate
    interval into the stand-in duration, and leaves other text alone."""
    expr = 'rate(x{a=~"$job", b=~"${instance}"}[$__rate_interval])'
    assert _substitute(expr) == f'rate(x{{a=~".*", b=~".*"}}[{RATE_INTERVAL_STANDIN}])'


def test_datasource_provisioning() -> None:
    """The provisioned Prometheus datasource has the fixed uid and the in-cluster URL."""
    config = _load_yaml(DATASOURCES_PATH)
    assert config["apiVersion"] == 1
    (datasource,) = config["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["uid"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"


def test_dashboard_provisioning() -> None:
    """The dashboard provider is a file provider reading the directory the deploy mounts
    grafana/dashboards onto, and says so."""
    text = PROVIDERS_PATH.read_text(encoding="utf-8")
    config = _load_yaml(PROVIDERS_PATH)
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert "grafana/dashboards" in text.split("apiVersion")[0]
    assert DASHBOARD_PATH.parent.name == "dashboards"
