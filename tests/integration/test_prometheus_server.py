"""A real Prometheus server scrapes the exporter; the hit-ratio query gives the workload's.

The test starts everything on loopback (redis-server, the exporter, ``prometheus`` from
Debian's package) and stops what it started.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from penny_cache.app.embedded import RedisServerProcess, free_port, wait_until
from penny_cache.app.exporter import registry_for_redis, serve
from penny_cache.cache import PersonalityCache
from penny_cache.state import default_state
from tests.conftest import unavailable

pytestmark = pytest.mark.integration

DASHBOARD = Path(__file__).resolve().parents[2] / "grafana/dashboards/penny-cache-overview.json"


def dashboard_hit_ratio(namespace: str) -> str:
    """The dashboard's own "Hit ratio (now)" query, with its variables filled in."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    [panel] = [p for p in panels if p.get("title") == "Hit ratio (now)"]
    expr: str = panel["targets"][0]["expr"]
    for variable, value in {
        "$__rate_interval": "5m",
        "$job": "penny-cache-exporter",
        "$instance": ".*",
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
