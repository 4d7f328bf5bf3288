"""The exporter's landing page in a real browser (headless Chromium) on a real redis-server:
the chart plots what ``/series.json`` serves, and its totals are ``penny-cache stats``'."""

from __future__ import annotations

import html.parser
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from penny_cache.app.embedded import RedisServerProcess
from penny_cache.app.exporter import registry_for_redis, serve
from penny_cache.cache import PersonalityCache
from penny_cache.state import default_state
from tests.conftest import unavailable

pytestmark = pytest.mark.integration
CHARTS = ("hit_ratio", "requests_per_s", "invalidations_per_s")


@pytest.fixture
def exporter(own_redis: RedisServerProcess, namespace: str) -> Iterator[str]:
    """An exporter whose page samples every 0.2 s (5 s in production)."""
    registry, close = registry_for_redis(own_redis.url, namespace, "t", timeout=0.5)
    server = serve(registry, "127.0.0.1", 0, sample_every=0.2)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    close()


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def series(base: str) -> dict[str, Any]:
    status, body = get(f"{base}/series.json")
    assert status == 200
    found: dict[str, Any] = json.loads(body)
    return found


def make_traffic(url: str, namespace: str) -> int:
    """Misses, hits and write-throughs from one process; the lookups it made."""
    stamp = datetime(2026, 1, 1, tzinfo=UTC)
    with PersonalityCache.from_url(url, namespace=namespace) as cache:
        for n in range(20):
            cache.get(f"user-{n}")
            cache.set(f"user-{n}", default_state(f"user-{n}", stamp))
        for n in range(60):
            cache.get(f"user-{n % 20}")
        for n in range(5):
            cache.invalidate(f"user-{n}")
        cache.flush_stats()
        return int(cache.local_stats()["requests"])


def wait_for_points(base: str, lookups: int) -> dict[str, Any]:
    """Until the sampler has seen every lookup and plotted the interval that had them."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        body = series(base)
        seen = body["latest"] and body["latest"]["requests"] == lookups
        if seen and any(p["requests_per_s"] > 0 for p in body["points"]):
            return body
        time.sleep(0.1)
    pytest.fail(f"the sampler never showed {lookups} lookups: {series(base)}")


class _ChartData(html.parser.HTMLParser):
    """The ``data-points`` of each chart and the totals' data attributes, from the DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.points: dict[str, list[list[float]]] = {}
        self.latest: dict[str, str] = {}
        self.loaded = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        if tag == "svg" and found.get("id") in CHARTS:
            self.points[found["id"]] = json.loads(found["data-points"])
        elif found.get("id") == "latest":
            self.latest = {k[5:]: v for k, v in found.items() if k.startswith("data-")}
        elif tag == "body":
            self.loaded = found.get("data-loaded", "")


def dump_dom(url: str, profile: Path) -> str:
    """The page's DOM after its script ran, as headless Chromium sees it."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        unavailable("chromium is not installed (Debian package chromium; .ci/run installs it)")
    assert browser is not None
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=3000",
        "--dump-dom",
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=True)
    return done.stdout


def stats_command(url: str, namespace: str) -> dict[str, Any]:
    env = {**os.environ, "PENNY_REDIS_URL": url, "PENNY_NAMESPACE": namespace}
    command = [sys.executable, "-m", "penny_cache.app.cli", "stats", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def test_the_page_plots_the_shared_counters(
    own_redis: RedisServerProcess, namespace: str, exporter: str, tmp_path: Path
) -> None:
    """A ``make run`` user had no chart without Grafana: the exporter's ``/`` was one
    line of text. Now headless Chromium loads the page, its script draws the three
    charts from ``/series.json``, and what the DOM carries matches the counters: every
    plotted point is a point of the JSON (same time, same value), the interval with the
    traffic is among them, and the totals on the page are ``penny-cache stats``'."""
    lookups = make_traffic(own_redis.url, namespace)
    wait_for_points(exporter, lookups)
    page = _ChartData()
    page.feed(dump_dom(f"{exporter}/", tmp_path / "profile"))
    after = series(exporter)  # after the dump: a superset of what the page plotted
    assert page.loaded, "the page's script did not run (no data-loaded on body)"
    for chart in CHARTS:
        served = {(p["t"], p[chart]) for p in after["points"] if p[chart] is not None}
        plotted = {(t, v) for t, v in page.points[chart]}
        assert plotted, f"{chart}: nothing plotted"
        assert plotted <= served, f"{chart}: plotted points not in /series.json"
    assert max(v for _, v in page.points["requests_per_s"]) > 0
    assert any(0 < v <= 1 for _, v in page.points["hit_ratio"])
    assert max(v for _, v in page.points["invalidations_per_s"]) > 0
    stats = stats_command(own_redis.url, namespace)
    assert stats["requests"] == lookups
    assert page.latest == {
        "requests": str(stats["requests"]),
        "hits": str(stats["hits"]),
        "misses": str(stats["misses"]),
    }
    assert after["latest"]["invalidations"] == stats["invalidations"]


def test_off_route_paths_are_404_without_reading_redis(
    own_redis: RedisServerProcess, namespace: str
) -> None:
    """The exporter answered 200 with the full metrics on any path, ``/favicon.ico``
    included, and read Redis for each. Now such a path is a 404 that sends Redis no
    command (counted by the server itself), while ``/metrics`` still reads it."""
    registry, close = registry_for_redis(own_redis.url, namespace, "t", timeout=0.5)
    server = serve(registry, "127.0.0.1", 0, sample_every=3600)  # one sample, at start
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    client = redis.Redis.from_url(own_redis.url)
    try:
        deadline = time.monotonic() + 10
        while series(base)["latest"] is None and time.monotonic() < deadline:
            time.sleep(0.05)

        def commands() -> int:
            return int(client.info("stats")["total_commands_processed"])

        before = commands()
        for path in ("/favicon.ico", "/robots.txt", "/metrics/extra", "/series"):
            status, body = get(f"{base}{path}")
            assert status == 404, path
            assert b"penny_cache_" not in body
        assert commands() - before == 1  # the INFO of the second reading only
        status, body = get(f"{base}/metrics")
        assert status == 200 and b"penny_cache_requests_total" in body
        assert commands() - before > 2
    finally:
        client.close()
        server.shutdown()
        server.server_close()
        close()
