"""Per-process metrics: what only one worker knows, for its own ``/metrics``.

The shared counters (hits, misses, ...) come from the exporter; these are the things a
single process measures: how long the paths that leave the process take, how many
invalidations it received and how late, how often its near cache was flushed and how
full it is. Near hits are not timed (a clock pair would double their ~250 ns); they are
counted in the shared counters.

Pre-fork servers: set ``PROMETHEUS_MULTIPROC_DIR`` before the workers start and serve
``/metrics`` through ``prometheus_client.multiprocess.MultiProcessCollector``; these are
plain prometheus_client metrics, so they aggregate across workers (the near-cache size
gauge sums live processes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = [
    "OPERATIONS",
    "OS_PROCESS_METRICS",
    "PROCESS_METRICS",
    "ProcessMetrics",
    "for_worker",
    "worker_identity",
]

OPERATIONS: Final = ("redis_hit", "miss", "update")

_LATENCY_BUCKETS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
_LAG_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0)

# prometheus_client's process collector, per worker: name -> help (``worker_identity``).
OS_PROCESS_METRICS: Final = {
    "process_cpu_seconds_total": "User and system CPU time this worker spent, in seconds.",
    "process_resident_memory_bytes": "Resident memory of this worker, in bytes.",
    "process_virtual_memory_bytes": "Virtual memory of this worker, in bytes.",
    "process_open_fds": "File descriptors this worker has open.",
    "process_max_fds": "This worker's limit of open file descriptors.",
    "process_start_time_seconds": "When this worker started, in seconds since the epoch.",
}

# Every sample name these metrics expose (dashboards and alerts are tested against them).
PROCESS_METRICS: Final = frozenset(
    {
        "penny_cache_operation_duration_seconds_bucket",
        "penny_cache_operation_duration_seconds_count",
        "penny_cache_operation_duration_seconds_sum",
        "penny_cache_invalidations_received_total",
        "penny_cache_invalidation_lag_seconds_bucket",
        "penny_cache_invalidation_lag_seconds_count",
        "penny_cache_invalidation_lag_seconds_sum",
        "penny_cache_near_flushes_total",
        "penny_cache_near_entries",
        "penny_cache_outbox_replayed_total",
        "penny_cache_outbox_failures_total",
        "penny_cache_outbox_skipped_total",
        "penny_cache_outbox_backoff_rows",
        "penny_cache_history_deleted_total",
        "penny_cache_stats_flush_failures_total",
        "penny_cache_build_info",
        *OS_PROCESS_METRICS,
    }
)


class _TotalSeen:
    """A Prometheus counter kept level with a cumulative total counted elsewhere (the
    near cache's flushes, the counters' failed flushes): it adds what is new since the
    last look, so the total's owner needs no Prometheus type."""

    __slots__ = ("_counter", "_seen")

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._seen = 0

    def catch_up(self, total: int) -> None:
        if total > self._seen:
            self._counter.inc(total - self._seen)
            self._seen = total


class ProcessMetrics:
    """The per-process metrics of one cache, registered on the registry passed in."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.operation_seconds = Histogram(
            "penny_cache_operation_duration_seconds",
            "Time of tracker operations that leave the process, by operation "
            "(redis_hit, miss: the read including the SQL load; update).",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.invalidations_received = Counter(
            "penny_cache_invalidations_received",
            "Invalidation messages this process applied to its near cache.",
            registry=registry,
        )
        self.invalidation_lag = Histogram(
            "penny_cache_invalidation_lag_seconds",
            "From Redis publishing an invalidation to this process applying it "
            "(Redis's clock against this host's: includes clock skew across hosts).",
            buckets=_LAG_BUCKETS,
            registry=registry,
        )
        self.near_flushes = Counter(
            "penny_cache_near_flushes",
            "Times this process emptied its near cache (reconnects, gaps, clear()).",
            registry=registry,
        )
        self.near_entries = Gauge(
            "penny_cache_near_entries",
            "Entries in this process's near cache.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._add_outbox_metrics(registry)
        self.stats_flush_failures = Counter(
            "penny_cache_stats_flush_failures",
            "Publications of this process's shared counters that failed (Redis down, or a "
            "counters key of another type); each is retried at the next interval.",
            registry=registry,
        )
        self._flushes_seen = _TotalSeen(self.near_flushes)
        self._flush_failures_seen = _TotalSeen(self.stats_flush_failures)
        self.timers = {op: self.operation_seconds.labels(op) for op in OPERATIONS}

    def observe_near(self, entries: int, flushes: int) -> None:
        """Update the near-cache gauge and flush counter (from the listener's tick)."""
        self.near_entries.set(entries)
        self._flushes_seen.catch_up(flushes)

    def _add_outbox_metrics(self, registry: CollectorRegistry | None) -> None:
        self.outbox_replayed = Counter(
            "penny_cache_outbox_replayed",
            "Committed versions this process's outbox sweeper published for a writer "
            "that did not confirm its write-through.",
            registry=registry,
        )
        self.outbox_failures = Counter(
            "penny_cache_outbox_failures",
            "Outbox replays that did not reach Redis (the row backs off and is retried).",
            registry=registry,
        )
        self.outbox_skipped = Counter(
            "penny_cache_outbox_skipped",
            "Times a sweep passed over an outbox row in backoff to reach the rows after it.",
            registry=registry,
        )
        self.outbox_backoff_rows = Gauge(
            "penny_cache_outbox_backoff_rows",
            "Outbox rows this process will not retry before their backoff ends.",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.history_deleted = Counter(
            "penny_cache_history_deleted",
            "History rows older than PENNY_HISTORY_DAYS this process deleted.",
            registry=registry,
        )

    def observe_outbox(self, replayed: int, failures: int, skipped: int, backoff: int) -> None:
        """After a sweep: what this pass replayed, failed and skipped, and the rows
        now in backoff."""
        self.outbox_replayed.inc(replayed)
        self.outbox_failures.inc(failures)
        self.outbox_skipped.inc(skipped)
        self.outbox_backoff_rows.set(backoff)

    def observe_stats_flushes(self, failures: int) -> None:
        """Catch the failed-flush counter up with the counters' own total."""
        self._flush_failures_seen.catch_up(failures)


def for_worker(multiprocess_dir: str | None) -> tuple[ProcessMetrics, CollectorRegistry]:
    """The metrics a web worker records and the registry its ``/metrics`` serves.

    With ``multiprocess_dir`` (the value of ``PROMETHEUS_MULTIPROC_DIR``, which must be
    set before the workers import prometheus_client), every worker writes its values to
    files there and each ``/metrics`` answers for all workers; without it, one process.
    """
    registry = CollectorRegistry()
    if multiprocess_dir:
        MultiProcessCollector(registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
        return ProcessMetrics(), registry
    return ProcessMetrics(registry), registry


def worker_identity(
    multiprocess_dir: str | None, registry: CollectorRegistry, version: str
) -> Callable[[], None]:
    """Register ``penny_cache_build_info{version}`` and the process metrics of this
    worker; the callable refreshes the process metrics (call it at scrape time and on a
    tick).

    prometheus_client's ``ProcessCollector`` reads ``/proc/self``: in multiprocess mode
    the worker that answers a scrape would report itself for all, so each worker copies
    its values into ``liveall`` gauges (one series per live worker, a ``pid`` label
    added by the multiprocess collector; a dead worker's series go with its files).
    """
    if not multiprocess_dir:
        ProcessCollector(registry=registry)
        _build_info(registry, "max").labels(version).set(1)
        return lambda: None
    _build_info(None, "livemax").labels(version).set(1)
    gauges = {
        name: Gauge(name, text, registry=None, multiprocess_mode="liveall")
        for name, text in OS_PROCESS_METRICS.items()
    }
    source = ProcessCollector(registry=None)

    def refresh() -> None:
        for family in source.collect():
            for sample in family.samples:
                gauge = gauges.get(sample.name)
                if gauge is not None:
                    gauge.set(sample.value)

    refresh()
    return refresh


def _build_info(registry: CollectorRegistry | None, mode: str) -> Gauge:
    """The service's version (the exporter has its own, with a namespace label): with
    ``count by (instance, version)`` it tells which replicas run which version."""
    return Gauge(
        "penny_cache_build_info",
        "Always 1; the version of penny_cache this service runs.",
        ["version"],
        registry=registry,
        multiprocess_mode=mode,  # type: ignore[arg-type]
    )
