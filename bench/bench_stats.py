"""Statistics benchmark: what Penny's web UI pays for ``get_stats()`` on every request.

Why this baseline. The drop-in's ``get_stats()`` used to count its entries with SCAN, so
its cost grew with every key in Redis, Penny's or not (416 ms with 300,000 unrelated
keys). It now reads the shared counter hashes (one pipeline) and the drop-in's index of
entries (one script), whatever else Redis holds. The floor for "read some statistics
from Redis" is one round trip that returns one small hash, so ``get_stats()`` is compared
with a bare redis-py ``HGETALL`` of one counter hash in the same run: the ratio is what
the shared totals and the size cost on top of a round trip. The old SCAN count
(``PersonalityCache.size`` over the drop-in's prefix) is timed a few times for context.

Run ``python -m bench.bench_stats [--quick] [--json PATH]``. It starts a private
``redis-server`` (``penny_cache.app.embedded``) on a free loopback port, fills it, and
stops it; it never touches another Redis. Exit code 0 even when the target is missed.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Final

import redis

from bench.runner import bench_main
from penny_cache.app.embedded import RedisServerProcess
from penny_cache.personality_state_cache import PersonalityStateCache

NAMESPACE: Final = "bench-stats"
TARGET_MS: Final = 1.0
USERS: Final = 50  # drop-in entries (Penny has one, "default"; a few more cost nothing)


@dataclass(frozen=True)
class Config:
    """How much to measure; rounds interleave the operations so drift hits both alike."""

    mode: str
    unrelated_keys: int
    rounds: int
    iterations: int
    scan_samples: int


QUICK: Final = Config("quick", unrelated_keys=30_000, rounds=10, iterations=50, scan_samples=2)
FULL: Final = Config("full", unrelated_keys=300_000, rounds=100, iterations=100, scan_samples=5)


@dataclass(frozen=True)
class Summary:
    label: str
    median_us: float
    p99_us: float
    samples: int


@contextmanager
def server() -> Iterator[RedisServerProcess]:
    """A private redis-server, stopped however the run ends."""
    process = RedisServerProcess().start()
    try:
        yield process
    finally:
        process.stop()


def fill(raw: redis.Redis, count: int) -> None:
    """``count`` keys that are not penny's, as another application would leave them."""
    for start in range(0, count, 1000):
        raw.mset({f"other-app:{n}": n for n in range(start, min(count, start + 1000))})


def prepare(url: str) -> PersonalityStateCache:
    """The drop-in with entries and counted lookups, its counters published."""
    cache = PersonalityStateCache(ttl_seconds=300, redis_url=url, namespace=NAMESPACE)
    for n in range(USERS):
        cache.get(f"user-{n}")
        cache.set(f"user-{n}", {"formality": n / USERS})
        cache.get(f"user-{n}")
    cache.core.flush_stats()
    return cache


def timed(call: Callable[[], object], n: int) -> list[int]:
    samples = []
    for _ in range(n):
        started = time.perf_counter_ns()
        call()
        samples.append(time.perf_counter_ns() - started)
    return samples


def summarise(label: str, samples: Sequence[int]) -> Summary:
    ordered = sorted(samples)
    p99 = ordered[max(0, -(-len(ordered) * 99 // 100) - 1)]
    return Summary(label, statistics.median(ordered) / 1000, p99 / 1000, len(ordered))


def measure(cache: PersonalityStateCache, raw: redis.Redis, config: Config) -> dict[str, Summary]:
    """Interleaved rounds of ``get_stats()`` and the bare HGETALL, then the old SCAN."""
    counters_key = cache.core.keys.counters(cache.core.process_id)
    ops: dict[str, Callable[[], object]] = {
        "get_stats": cache.get_stats,
        "hgetall": lambda: raw.hgetall(counters_key),
    }
    for call in ops.values():
        timed(call, config.iterations)  # warm up connections, scripts, caches
    samples: dict[str, list[int]] = {name: [] for name in ops}
    for _ in range(config.rounds):
        for name, call in ops.items():
            samples[name] += timed(call, config.iterations)
    pattern = cache.core.keys.legacy_pattern()
    scan = timed(lambda: cache.core.size(pattern), config.scan_samples)
    return {
        "get_stats": summarise("drop-in get_stats()", samples["get_stats"]),
        "hgetall": summarise("bare HGETALL of one hash", samples["hgetall"]),
        "scan_count": summarise("SCAN count (the old cache_size)", scan),
    }


def render(s: dict[str, Summary], ratio: float, keys: int) -> str:
    lines = [f"{keys:,} unrelated keys in Redis", ""]
    lines.append(f"{'operation':<34} {'median us':>10} {'p99 us':>10} {'samples':>8}")
    lines.append("-" * len(lines[-1]))
    for row in s.values():
        lines.append(f"{row.label:<34} {row.median_us:>10.1f} {row.p99_us:>10.1f} {row.samples:>8}")
    passed = s["get_stats"].median_us < TARGET_MS * 1000
    lines.append("")
    lines.append(f"get_stats() / bare HGETALL (medians)  {ratio:6.2f}")
    lines.append(
        f"get_stats() median < {TARGET_MS:g} ms                 "
        f"{s['get_stats'].median_us / 1000:6.3f} ms  {'PASS' if passed else 'FAIL'}"
    )
    scan_ratio = s["scan_count"].median_us / s["get_stats"].median_us
    lines.append(f"SCAN count / get_stats() (medians)     {scan_ratio:8.0f}")
    return "\n".join(lines)


def run(config: Config) -> tuple[dict[str, Any], str]:
    """Start redis, fill it, measure, stop it; the report and its text."""
    with server() as process:
        raw = redis.Redis.from_url(process.url)
        fill(raw, config.unrelated_keys)
        cache = prepare(process.url)
        try:
            stats = cache.get_stats()
            assert stats["cache_size"] == USERS and stats["hits"] == USERS, stats
            summaries = measure(cache, raw, config)
            redis_version = str(raw.info("server")["redis_version"])
            keys = int(raw.dbsize())
        finally:
            cache.close()
            raw.close()
    ratio = summaries["get_stats"].median_us / summaries["hgetall"].median_us
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "redis_server": redis_version,
        "config": asdict(config),
        "keys_in_redis": keys,
        "operations": {name: asdict(s) for name, s in summaries.items()},
        "ratios": {"get_stats_vs_hgetall": ratio},
        "passed": {"get_stats_under_1ms": summaries["get_stats"].median_us < TARGET_MS * 1000},
    }
    return report, render(summaries, ratio, config.unrelated_keys)


def main(argv: Sequence[str] | None = None) -> int:
    return bench_main(
        argv,
        title="penny_cache get_stats() among unrelated keys",
        quick=QUICK,
        full=FULL,
        run=run,
    )


if __name__ == "__main__":
    sys.exit(main())
