"""The Prometheus exporter: the cross-process counters from Redis, read at scrape time.

One exporter per namespace publishes what every worker counted (the workers' own
``/metrics`` can only say what one process knows). Each scrape is one pipelined round of
``HGETALL`` over the 16 counter hashes, never a SCAN; no label carries a user id, so the
series count does not grow with users. When Redis cannot be read the scrape still answers, with
``penny_cache_up 0`` and no counter samples (a gap, not a fake zero); so it does when
reading fails in any other way (a scrape is never a 500), the failure logged once a minute.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from penny_cache.observe.counters import FIELDS_INVALID, KEYS_INVALID
from penny_cache.observe.ratelog import RateLimitedLog

__all__ = [
    "COUNTER_HELP",
    "DIVERGENCE_KINDS",
    "EXPORTED_METRICS",
    "INVALID_HELP",
    "RedisCountersCollector",
]

# counter -> (metric name without _total, help); hits are split by tier below
COUNTER_HELP: Final[Mapping[str, tuple[str, str]]] = {
    "misses": ("penny_cache_misses", "Lookups that found no entry, all processes."),
    "sets": ("penny_cache_sets", "Entries written by fills and set(), all processes."),
    "fills_refused": (
        "penny_cache_fills_refused",
        "Writes refused because Redis held the same or a newer version.",
    ),
    "invalidations": (
        "penny_cache_invalidations",
        "Invalidations published (update write-throughs and invalidate()).",
    ),
    "decode_errors": ("penny_cache_decode_errors", "Entries that did not decode (dropped)."),
    "redis_errors": (
        "penny_cache_redis_errors",
        "Redis calls that failed, timed out or were skipped in a cooldown (SQL answered).",
    ),
    "listener_reconnects": (
        "penny_cache_listener_reconnects",
        "Invalidation subscriptions lost and re-made (each flushes a near cache).",
    ),
    "sequence_gaps": (
        "penny_cache_sequence_gaps",
        "Invalidation messages found missing (each flushes a near cache).",
    ),
    "malformed_messages": (
        "penny_cache_malformed_messages",
        "Messages on the invalidation channel that did not parse.",
    ),
    "integrity_failures": (
        "penny_cache_integrity_failures",
        "Entries and messages that failed authentication (PENNY_VALUE_KEY): dropped.",
    ),
    "stale_served": (
        "penny_cache_stale_served",
        "Reads answered with a last known state because SQL was down (fail-safe mode).",
    ),
    "version_ahead": (
        "penny_cache_version_ahead",
        "Entries found ahead of SQL's committed version and replaced by it.",
    ),
}


# kind label -> counter: the shadow check's findings (``penny_cache.policy.shadow``)
DIVERGENCE_KINDS: Final[Mapping[str, str]] = {
    "older": "divergence_older",
    "newer": "divergence_newer",
}
DIVERGENCE_HELP: Final = (
    "Sampled Redis hits still disagreeing with SQL's committed version after the staleness "
    "bound (older: Redis behind SQL; newer: Redis ahead of SQL or of a user SQL lacks)."
)

# what the read skipped: gauges (the count of bad fields or keys present now)
INVALID_HELP: Final[Mapping[str, tuple[str, str]]] = {
    FIELDS_INVALID: (
        "penny_cache_stats_fields_invalid",
        "Fields of the shared counter hashes that did not parse (skipped, not summed).",
    ),
    KEYS_INVALID: (
        "penny_cache_stats_keys_invalid",
        "Shared counter keys that are not hashes (skipped; their process cannot flush).",
    ),
}
_log = logging.getLogger("penny_cache.observe.exporter")


# Every metric name this exporter can publish: dashboards and alerts are tested against it.
EXPORTED_METRICS: Final = frozenset(
    {
        "penny_cache_up",
        "penny_cache_build_info",
        "penny_cache_scrape_duration_seconds",
        "penny_cache_requests_total",
        "penny_cache_hits_total",
        "penny_cache_divergence_total",
        *(f"{name}_total" for name, _ in COUNTER_HELP.values()),
        *(name for name, _ in INVALID_HELP.values()),
    }
)


class RedisCountersCollector(Collector):
    """Reads the shared counters once per scrape and renders them as Prometheus metrics."""

    def __init__(
        self,
        read_totals: Callable[[], Mapping[str, int]],
        namespace: str,
        version: str,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._read_totals = read_totals
        self._namespace = namespace
        self._version = version
        self._clock = clock
        self._errors = RateLimitedLog(_log, 60.0, clock)

    def collect(self) -> Iterator[Any]:
        started = self._clock()
        totals = self._read()
        labels = ["namespace"]
        values = [self._namespace]
        up = GaugeMetricFamily(
            "penny_cache_up", "1 when the exporter could read Redis, else 0.", labels=labels
        )
        up.add_metric(values, 1.0 if totals is not None else 0.0)
        yield up
        if totals is not None:
            yield from self._counters(totals, labels, values)
        info = InfoMetricFamily("penny_cache_build", "penny_cache version.", labels=labels)
        info.add_metric(values, {"version": self._version})
        yield info
        duration = GaugeMetricFamily(
            "penny_cache_scrape_duration_seconds",
            "Time this scrape spent reading Redis.",
            labels=labels,
        )
        duration.add_metric(values, self._clock() - started)
        yield duration

    def _read(self) -> Mapping[str, int] | None:
        """The totals, or None when they cannot be read: Redis down, or anything else a
        bad state in Redis may raise (the scrape answers ``penny_cache_up 0``)."""
        try:
            return self._read_totals()
        except Exception as exc:  # a scrape must answer whatever happened
            self._errors.warning("read", f"reading the shared counters failed: {exc!r}")
            return None

    def _counters(
        self, totals: Mapping[str, int], labels: list[str], values: list[str]
    ) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        requests = CounterMetricFamily(
            "penny_cache_requests", "Lookups (hits + misses), all processes.", labels=labels
        )
        requests.add_metric(values, totals["hits"] + totals["misses"])
        yield requests
        hits = CounterMetricFamily(
            "penny_cache_hits",
            "Lookups answered by a cache tier (near: in-process; redis), all processes.",
            labels=[*labels, "tier"],
        )
        hits.add_metric([*values, "near"], totals["near_hits"])
        hits.add_metric([*values, "redis"], totals["hits"] - totals["near_hits"])
        yield hits
        for counter, (name, help_text) in COUNTER_HELP.items():
            family = CounterMetricFamily(name, help_text, labels=labels)
            family.add_metric(values, totals[counter])
            yield family
        divergence = CounterMetricFamily(
            "penny_cache_divergence", DIVERGENCE_HELP, labels=[*labels, "kind"]
        )
        for kind, counter in DIVERGENCE_KINDS.items():
            divergence.add_metric([*values, kind], totals.get(counter, 0))
        yield divergence
        for key, (name, help_text) in INVALID_HELP.items():
            gauge = GaugeMetricFamily(name, help_text, labels=labels)
            gauge.add_metric(values, totals.get(key, 0))
            yield gauge
