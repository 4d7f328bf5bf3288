"""A real Prometheus server scrapes the service and the exporter: the hit-ratio query
gives the workload's, and every query of the runbooks and the dashboard returns data.

The tests start everything on loopback (redis-server, the service, the exporter,
``prometheus`` from Debian's package) and stop what they started.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import promql_parser
import pytest

from penny_cache import __version__
from penny_cache.app.embedded import RedisServerProcess, free_port, wait_until
from penny_cache.app.exporter import registry_for_redis, serve
from penny_cache.cache import PersonalityCache
from penny_cache.state import default_state
from tests.conftest import private_redis, unavailable
from tests.integration.promql_sources import (
    ROOT,
    Query,
    dashboard_queries,
    dashboard_variables,
    pages,
    runbook_queries,
    substitute,
)

pytestmark = pytest.mark.integration

DASHBOARD = Path(__file__).resolve().parents[2] / "grafana/dashboards/penny-cache-overview.json"


def dashboard_hit_ratio(namespace: str) -> str:
    """The dashboard's own "Hit ratio (now)" query, with its variables filled in."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    [panel] = [p for p in panels if p.get("title") == "Hit ratio (now)"]
    expr: str = panel["targets"][0]["expr"]
    for variable, value in {
        "$__rate_interval": "5m",
        "$exporter_job": "penny-cache-exporter",
        "$exporter_instance": ".*",
        "$namespace": namespace,
    }.items():
        expr = expr.replace(variable, value)
    return expr


@pytest.fixture
def exporter_port(own_redis: RedisServerProcess, namespace: str) -> Iterator[int]:
    registry, close = registry_for_redis(own_redis.url, namespace, "t")
    server = serve(registry, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_port
    server.shutdown()
    server.server_close()
    close()


@pytest.fixture
def prometheus(tmp_path: Path, exporter_port: int) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        unavailable("prometheus is not installed (Debian package prometheus)")
        raise AssertionError("unreachable")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: penny-cache-exporter\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{exporter_port}']}}]\n"
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(base), 30, "prometheus to start")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/-/ready", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def query(base: str, expr: str) -> list[dict[str, object]]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    result: list[dict[str, object]] = body["data"]["result"]
    return result


def scalar(base: str, expr: str) -> float | None:
    result = query(base, expr)
    return float(result[0]["value"][1]) if result else None  # type: ignore[index]


def test_prometheus_computes_the_workload_hit_ratio(
    own_redis: RedisServerProcess, namespace: str, prometheus: str
) -> None:
    """After a workload of 30 hits and 10 misses, Prometheus scraping the exporter answers
    the dashboard's own hit-ratio query with 0.75, and penny_cache_up with 1."""
    wait_until(lambda: scalar(prometheus, "penny_cache_up") == 1.0, 30, "a first scrape")
    with PersonalityCache.from_url(own_redis.url, namespace=namespace, near_cache=False) as c:
        c.set("u", default_state("u", datetime(2026, 1, 1, tzinfo=UTC)))
        for _ in range(30):
            assert c.get("u") is not None
        for n in range(10):
            assert c.get(f"absent-{n}") is None
    requests = f'sum(penny_cache_requests_total{{namespace="{namespace}"}})'
    wait_until(lambda: scalar(prometheus, requests) == 40.0, 30, "the counts to be scraped")
    ratio = dashboard_hit_ratio(namespace)
    wait_until(lambda: scalar(prometheus, ratio) is not None, 30, "the ratio to be computable")
    assert scalar(prometheus, ratio) == pytest.approx(0.75)


# --- every query an operator copies, against the whole stack ---------------------------
#
# One stack for the module: redis-server, `penny-cache serve --workers 2` (multiprocess
# mode), `penny-cache exporter`, and Prometheus scraping both every second with the
# deployed rules. Traffic reads and updates a few users, so every counter, histogram and
# recording rule has samples.

RULES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
USERS = 12
QUERY_DEADLINE = 20.0  # seconds a query may take to show data (rules run every second)


@dataclass(frozen=True)
class Stack:
    prometheus: str
    service: str
    service_target: str
    exporter_target: str
    namespace: str


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "penny_cache.app.cli", *args]


def _get(url: str, data: bytes | None = None, method: str = "GET") -> int:
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


def _answers(url: str) -> bool:
    try:
        return _get(url) == 200
    except OSError:
        return False


def _traffic(service: str) -> None:
    """Misses, Redis and near hits, updates (invalidations in every worker)."""
    for n in range(USERS):
        user = f"{service}/personality/u{n}"
        _get(user)
        for value in (0.25, 0.75):
            body = json.dumps({"value": value}).encode()
            _get(f"{user}/dimensions/communication_formality", body, "PUT")
            for _ in range(3):
                _get(user)


@contextlib.contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        args, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _prometheus_config(tmp: Path, service: str, exporter: str) -> Path:
    config = tmp / "prometheus.yml"
    rules = "".join(f"  - {rule}\n" for rule in RULES)
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files:\n{rules}"
        "scrape_configs:\n"
        "  - job_name: penny-cache-service\n"
        f"    static_configs: [{{targets: ['{service}']}}]\n"
        "  - job_name: penny-cache-exporter\n"
        f"    static_configs: [{{targets: ['{exporter}']}}]\n"
    )
    return config


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    binary = shutil.which("prometheus")
    if binary is None:
        unavailable("prometheus is not installed (Debian package prometheus)")
        raise AssertionError("unreachable")
    tmp = tmp_path_factory.mktemp("stack")
    (tmp / "prom").mkdir()
    namespace = f"t{uuid.uuid4().hex[:12]}"
    service_port, exporter_port, prometheus_port = free_port(), free_port(), free_port()
    with contextlib.ExitStack() as stack, private_redis() as redis_server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PENNY_")}
        env |= {
            "PENNY_REDIS_URL": redis_server.url,
            "PENNY_DATABASE_URL": f"sqlite:///{tmp / 'penny.db'}",
            "PENNY_NAMESPACE": namespace,
            "PROMETHEUS_MULTIPROC_DIR": str(tmp / "prom"),
        }
        serve = _command("serve", "--host", "127.0.0.1", "--port", str(service_port))
        stack.enter_context(_process([*serve, "--workers", "2"], env, tmp / "service.log"))
        exporter = _command("exporter", "--host", "127.0.0.1", "--port", str(exporter_port))
        stack.enter_context(_process(exporter, env, tmp / "exporter.log"))
        service_target, exporter_target = f"127.0.0.1:{service_port}", f"127.0.0.1:{exporter_port}"
        config = _prometheus_config(tmp, service_target, exporter_target)
        prometheus_args = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}",
        ]
        stack.enter_context(_process(prometheus_args, env, tmp / "prometheus.log"))
        base = f"http://127.0.0.1:{prometheus_port}"
        service = f"http://{service_target}"
        wait_until(lambda: _answers(f"{service}/readyz"), 60, "the service")
        wait_until(lambda: _ready(base), 30, "prometheus to start")
        both_up = 'count(up{job=~"penny-cache-service|penny-cache-exporter"} == 1)'
        wait_until(lambda: scalar(base, both_up) == 2.0, 30, "both jobs scraped")
        _traffic(service)
        requests = f'sum(penny_cache_requests_total{{namespace="{namespace}"}})'
        wait_until(lambda: (scalar(base, requests) or 0) >= USERS * 7, 30, "the traffic scraped")
        yield Stack(base, service, service_target, exporter_target, namespace)


def _values(stack: Stack) -> dict[str, str]:
    """The dashboard's variables as a user picks one service replica and one exporter."""
    return {
        "__rate_interval": "1m",
        "datasource": "prometheus",
        "exporter_job": "penny-cache-exporter",
        "exporter_instance": stack.exporter_target,
        "namespace": stack.namespace,
        "service_job": "penny-cache-service",
        "service_instance": stack.service_target,
    }


PLACEHOLDER_STACK = Stack("", "", "svc:1", "exp:1", "ns")
RUNBOOK_QUERIES = runbook_queries()
DASHBOARD_QUERIES = dashboard_queries(_values(PLACEHOLDER_STACK))


def _selectors(expr: str) -> list[str]:
    """Every vector selector of ``expr`` (to prove the metrics of an empty query exist)."""
    nodes: list[Any] = []
    promql_parser.walk(promql_parser.parse(expr), pre_visit=nodes.append)
    return [str(n) for n in nodes if isinstance(n, promql_parser.VectorSelector)]


def _check(stack: Stack, q: Query) -> None:
    """What each kind of query must answer on the healthy stack."""
    expr = q.runnable()
    if q.expect == "redis_exporter":
        query(stack.prometheus, expr)  # accepted (status success); no redis_exporter here
        return
    if q.expect == "empty when healthy":
        query(stack.prometheus, expr)
        for selector in _selectors(expr):
            wait_until(
                lambda s=selector: bool(query(stack.prometheus, s)),
                QUERY_DEADLINE,
                f"{q.where}: {selector} to have series",
            )
        return
    wait_until(
        lambda: bool(query(stack.prometheus, expr)), QUERY_DEADLINE, f"{q.where}: {expr} data"
    )


def test_sources_are_found_and_marked() -> None:
    """Every runbook page with a promql block yields queries, every marked query names a
    known marker, and the dashboard yields one query per target."""
    assert len({q.where for q in RUNBOOK_QUERIES}) == len(RUNBOOK_QUERIES)
    found = {q.where.split(":")[0] for q in RUNBOOK_QUERIES}
    assert found == {p.name for p in pages() if "```promql" in p.read_text()}
    assert len(RUNBOOK_QUERIES) >= 50
    assert {q.expect for q in RUNBOOK_QUERIES} == {"data", "empty when healthy", "redis_exporter"}
    assert len(DASHBOARD_QUERIES) >= 40
    assert all("$" not in q.expr for q in DASHBOARD_QUERIES)


@pytest.mark.parametrize("q", RUNBOOK_QUERIES, ids=[q.where for q in RUNBOOK_QUERIES])
def test_runbook_query_returns_data(stack: Stack, q: Query) -> None:
    """Finding: runbook queries were never run (``process_cpu_seconds_total{job=
    "penny-cache-service"}`` returned nothing). Now every query of every runbook, copied
    as is, returns at least one series from a real Prometheus scraping the service and the
    exporter (or, marked, is accepted and names served metrics)."""
    _check(stack, q)


@pytest.mark.parametrize(
    "position", range(len(DASHBOARD_QUERIES)), ids=[q.where for q in DASHBOARD_QUERIES]
)
def test_dashboard_query_returns_data(stack: Stack, position: int) -> None:
    """Finding: with ``$job``/``$instance`` from an exporter-only metric, choosing a
    service replica emptied the per-process row. Now every panel's query, with one service
    instance and one exporter instance chosen, returns at least one series."""
    q = dashboard_queries(_values(stack))[position]
    _check(stack, q)


def test_dashboard_variables_list_both_sides(stack: Stack) -> None:
    """Each job/instance variable's label_values query lists the real target of its side:
    the service's variables the service, the exporter's the exporter."""
    variables = dashboard_variables()
    expected = {
        "exporter_job": "penny-cache-exporter",
        "exporter_instance": stack.exporter_target,
        "service_job": "penny-cache-service",
        "service_instance": stack.service_target,
        "namespace": stack.namespace,
    }
    values = _values(stack)
    for name, want in expected.items():
        match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", variables[name])
        assert match, variables[name]
        selector, label = substitute(match.group(1), values), match.group(2)
        listed = {str(r["metric"][label]) for r in query(stack.prometheus, selector)}  # type: ignore[index]
        assert listed == {want}, f"{name}: {listed}"


def test_service_exports_process_metrics_per_worker(stack: Stack) -> None:
    """Finding: the service (multiprocess mode) exported no process metrics. Now each of
    its two workers has its own ``process_*`` series (a ``pid`` label), with the CPU and
    memory of that worker, and ``penny_cache_build_info`` names the running version."""
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes"):
        series = query(stack.prometheus, f'{name}{{job="penny-cache-service"}}')
        pids = {r["metric"]["pid"] for r in series}  # type: ignore[index]
        assert len(pids) == 2, series
        assert all(float(r["value"][1]) > 0 for r in series)  # type: ignore[index]
    started = query(stack.prometheus, 'process_start_time_seconds{job="penny-cache-service"}')
    assert all(float(r["value"][1]) > 1.7e9 for r in started)  # type: ignore[index]
    versions = query(
        stack.prometheus,
        'count by (instance, version) (penny_cache_build_info{job="penny-cache-service"})',
    )
    assert [(r["metric"]["instance"], r["metric"]["version"]) for r in versions] == [  # type: ignore[index]
        (stack.service_target, __version__)
    ]
