"""The exporter's landing page: its ring buffer, the points it plots, and its routes."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry

from penny_cache.app.exporter import exporter_app
from penny_cache.app.exporter_page import SAMPLED, WINDOW, Sample, Sampler, read_totals, series
from penny_cache.observe.exporter import RedisCountersCollector


def totals(requests: int, hits: int, invalidations: int = 0) -> dict[str, float]:
    return {
        "requests": requests,
        "hits": hits,
        "misses": requests - hits,
        "invalidations": invalidations,
        "stale_served": 0,
        "sequence_gaps": 0,
    }


def test_points_are_the_intervals_between_samples() -> None:
    """Each point is one interval: hits over lookups in it, lookups and invalidations
    per second, stamped with the interval's end."""
    samples = [Sample(100.0, totals(10, 5)), Sample(105.0, totals(60, 45, invalidations=10))]
    points = series(samples, 5.0)["points"]
    assert points == [
        {
            "t": 105.0,
            "seconds": 5.0,
            "hit_ratio": 0.8,
            "requests_per_s": 10.0,
            "invalidations_per_s": 2.0,
            "stale_served": 0,
            "sequence_gaps": 0,
        }
    ]


def test_gaps_and_resets_plot_nothing() -> None:
    """An unreadable Redis or a total that went down (``stats --reset``) leaves a gap
    instead of a negative rate or a fake zero; an idle interval has no hit ratio."""
    samples = [
        Sample(0.0, totals(10, 5)),
        Sample(5.0, None),
        Sample(10.0, totals(20, 10)),
        Sample(15.0, totals(3, 1)),
        Sample(20.0, totals(3, 1)),
    ]
    body = series(samples, 5.0)
    assert [(p["t"], p["hit_ratio"], p["requests_per_s"]) for p in body["points"]] == [
        (20.0, None, 0.0)
    ]
    assert body["latest"] == totals(3, 1)


def test_the_buffer_holds_fifteen_minutes() -> None:
    """The ring buffer keeps the window and no more, whatever the uptime."""
    now = [0.0]
    sampler = Sampler(lambda: totals(1, 1), interval=5.0, clock=lambda: now[0])
    for _ in range(1000):
        sampler.sample()
        now[0] += 5.0
    kept = sampler.samples()
    assert len(kept) == int(WINDOW / 5.0) + 1
    assert kept[-1].t - kept[0].t == WINDOW


def test_a_failing_read_is_a_gap() -> None:
    """The sampler survives a read that raises (Redis gone): the sample is a gap."""

    def broken() -> Mapping[str, float]:
        raise ConnectionError("down")

    sampler = Sampler(broken, clock=lambda: 1.0)
    assert sampler.sample().totals is None


def collector_registry(read: Callable[[], Mapping[str, int]]) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(RedisCountersCollector(read, "ns", "t"))
    return registry


def full_totals() -> dict[str, int]:
    from penny_cache.observe.counters import COUNTERS

    values = dict.fromkeys(COUNTERS, 0)
    values.update(hits=7, near_hits=4, misses=3, invalidations=2)
    return values


def test_totals_are_what_metrics_shows() -> None:
    """The sampled totals are read from the registry ``/metrics`` serves; hits are the
    sum of its two tiers (near hits are hits), as in ``penny-cache stats``."""
    found = read_totals(collector_registry(full_totals))
    assert found is not None
    assert set(found) == set(SAMPLED)
    assert (found["requests"], found["hits"], found["misses"]) == (10, 7, 3)


def call(app: Callable[..., Iterable[bytes]], path: str) -> tuple[str, bytes]:
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen["status"] = status

    environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "wsgi.input": io.BytesIO()}
    body = b"".join(app(environ, start_response))
    return seen["status"], body


def test_paths_off_the_routes_are_404_and_read_nothing() -> None:
    """The exporter used to answer the full metrics, reading Redis, on any path
    (``/favicon.ico`` included). Now a path off its routes is a 404 and reads nothing;
    the routes still answer."""
    reads = [0]

    def read() -> dict[str, int]:
        reads[0] += 1
        return full_totals()

    app = exporter_app(collector_registry(read), Sampler(lambda: totals(1, 1)))
    for path in ("/favicon.ico", "/metrics/", "/robots.txt", "/index.html"):
        status, _ = call(app, path)
        assert status.startswith("404"), path
    assert reads[0] == 0
    assert call(app, "/")[0].startswith("200")
    assert call(app, "/healthz")[0].startswith("200")
    assert call(app, "/series.json")[0].startswith("200")
    status, body = call(app, "/metrics")
    assert status.startswith("200") and b"penny_cache_requests_total" in body
    assert reads[0] == 1
