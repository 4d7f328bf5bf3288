"""The exporter against a real redis-server, scraped over HTTP like Prometheus does."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from wsgiref.simple_server import WSGIServer

import pytest
from prometheus_client.parser import text_string_to_metric_families

from penny_cache.app.embedded import RedisServerProcess
from penny_cache.app.exporter import registry_for_redis, serve
from penny_cache.cache import PersonalityCache
from penny_cache.state import default_state
from tests.conftest import unavailable
from tests.integration import workers

pytestmark = pytest.mark.integration
SPAWN = multiprocessing.get_context("spawn")


def start_exporter(url: str, namespace: str) -> tuple[WSGIServer, str]:
    registry, _close = registry_for_redis(url, namespace, "t", timeout=0.2)
    server = serve(registry, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


@pytest.fixture
def exporter(own_redis: RedisServerProcess, namespace: str) -> Iterator[str]:
    server, base = start_exporter(own_redis.url, namespace)
    yield base
    server.shutdown()
    server.server_close()


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_counts_of_several_processes_appear_exactly(
    own_redis: RedisServerProcess, namespace: str, exporter: str
) -> None:
    """Lookups made by three worker processes show up in /metrics exactly."""
    with PersonalityCache.from_url(own_redis.url, namespace=namespace) as cache:
        cache.set("shared-user", default_state("shared-user", datetime(2026, 1, 1, tzinfo=UTC)))
    procs = [
        SPAWN.Process(target=workers.lookups, args=(own_redis.url, namespace, 5 + i, i, None))
        for i in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    ns = (("namespace", namespace),)
    metrics = scrape(exporter)
    assert metrics[("penny_cache_up", ns)] == 1.0
    assert metrics[("penny_cache_requests_total", ns)] == (5 + 6 + 7) + (0 + 1 + 2)
    hits = sum(v for (name, _), v in metrics.items() if name == "penny_cache_hits_total")
    assert hits == 18
    assert metrics[("penny_cache_misses_total", ns)] == 3


def test_up_is_zero_when_redis_is_down(own_redis: RedisServerProcess, exporter: str) -> None:
    """With Redis gone the scrape still answers 200, with penny_cache_up 0."""
    own_redis.kill()
    metrics = scrape(exporter)
    assert [v for (name, _), v in metrics.items() if name == "penny_cache_up"] == [0.0]
    assert not any(name == "penny_cache_requests_total" for name, _ in metrics)


def test_series_do_not_grow_with_users(
    own_redis: RedisServerProcess, namespace: str, exporter: str
) -> None:
    """The same series exist after 10 users as after 10,000: no user id in a label."""
    with PersonalityCache.from_url(own_redis.url, namespace=namespace) as cache:
        for n in range(10):
            cache.get(f"user-{n}")
        cache.flush_stats()
        few = set(scrape(exporter))
        for n in range(10, 10_000):
            cache.get(f"user-{n}")
        cache.flush_stats()
        many = set(scrape(exporter))
    assert few == many
    assert not any("user-" in value for _, labels in many for _, value in labels)


def test_landing_page_and_promtool(exporter: str) -> None:
    """/ is a landing page linking /metrics, /healthz answers ok for liveness probes, and
    the exposition passes promtool."""
    with urllib.request.urlopen(f"{exporter}/", timeout=5) as response:
        assert b'href="/metrics"' in response.read()
    with urllib.request.urlopen(f"{exporter}/healthz", timeout=5) as response:
        assert json.loads(response.read()) == {"status": "ok"}
    promtool = shutil.which("promtool")
    if promtool is None:
        unavailable("promtool is not installed (Debian package prometheus)")
        return
    with urllib.request.urlopen(f"{exporter}/metrics", timeout=5) as response:
        exposition = response.read()
    checked = subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
