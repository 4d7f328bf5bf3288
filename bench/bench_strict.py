"""Strict write mode's per-update cost, against the available mode, in one run.

An update in strict mode pays one more Redis round trip (the tombstone script, sent
while the SQL row lock is held) before COMMIT. This times the same updates through two
sync trackers on one private redis-server and one SQLite file, one per write mode, in
interleaved rounds (so noise hits both alike), and counts the Redis round trips each
update makes (every step the transport sends: a command, a script run, a pipeline).

Run ``python -m bench.bench_strict [--quick] [--json PATH]``. It exits 0 whatever the
figures: it is a report, not a gate.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Final

import redis

from bench.runner import bench_main
from penny_cache import PersonalityCache, PersonalityStore, PersonalityTracker
from penny_cache.app.embedded import RedisServerProcess
from penny_cache.redis.backend import RedisBackend
from penny_cache.redis.commands import Step

MODES: Final = ("available", "strict")
DIM: Final = "communication_formality"


@dataclass(frozen=True)
class Config:
    mode: str
    rounds: int
    updates: int  # timed updates per write mode per round
    users: int


QUICK: Final = Config("quick", rounds=2, updates=20, users=4)
FULL: Final = Config("full", rounds=10, updates=200, users=50)


class CountingBackend(RedisBackend):
    """A ``RedisBackend`` that counts the steps (round trips) it sends."""

    sent = 0

    def _send(self, step: Step) -> Any:
        self.sent += 1
        return super()._send(step)


@dataclass(frozen=True)
class Summary:
    updates: int
    round_trips_per_update: float
    p50_us: float
    p99_us: float
    mean_us: float


def _tracker(url: str, db: str, namespace: str, mode: str) -> tuple[PersonalityTracker, Any]:
    backend = CountingBackend(redis.Redis.from_url(url), deadline=1.0)
    cache = PersonalityCache(backend, namespace=namespace, stats_flush_interval=None)
    store = PersonalityStore(db)
    tracker = PersonalityTracker(store, cache, outbox_interval=None, write_mode=mode)
    return tracker, backend


def _round(tracker: PersonalityTracker, config: Config, offset: int) -> list[int]:
    samples = []
    for n in range(config.updates):
        user = f"user-{(n + offset) % config.users}"
        began = time.perf_counter_ns()
        tracker.update_personality_dimension(user, DIM, (n % 10) / 10)
        samples.append(time.perf_counter_ns() - began)
    return samples


def _summary(samples: list[int], round_trips: int) -> Summary:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return Summary(
        updates=len(samples),
        round_trips_per_update=round(round_trips / len(samples), 2),
        p50_us=round(statistics.median(ordered) / 1000, 1),
        p99_us=round(p99 / 1000, 1),
        mean_us=round(statistics.fmean(ordered) / 1000, 1),
    )


def measure(url: str, workdir: str, config: Config) -> dict[str, Summary]:
    """Both write modes, on their own namespace and database file, rounds interleaved."""
    parts = {m: _tracker(url, f"sqlite:///{workdir}/{m}.db", f"b-{m}", m) for m in MODES}
    samples: dict[str, list[int]] = {m: [] for m in MODES}
    sent = dict.fromkeys(MODES, 0)
    try:
        for tracker, _backend in parts.values():
            _round(tracker, config, 0)  # warm: schema, scripts loaded, connections open
        for number in range(config.rounds):
            order = MODES if number % 2 == 0 else MODES[::-1]
            for mode in order:
                tracker, backend = parts[mode]
                before = backend.sent
                samples[mode] += _round(tracker, config, number)
                sent[mode] += backend.sent - before
    finally:
        for tracker, _backend in parts.values():
            tracker.close()
            tracker.cache.close()
            tracker.store.close()
    return {m: _summary(samples[m], sent[m]) for m in MODES}


def render(summaries: dict[str, Summary], ratios: dict[str, float]) -> str:
    lines = [
        "| write mode | updates | Redis round trips / update | p50 us | p99 us | mean us |",
        "|---|---|---|---|---|---|",
    ]
    for mode, s in summaries.items():
        lines.append(
            f"| {mode} | {s.updates} | {s.round_trips_per_update} | {s.p50_us} | "
            f"{s.p99_us} | {s.mean_us} |"
        )
    lines.append("")
    lines.append(
        f"strict / available: p50 {ratios['p50']:.2f} x, p99 {ratios['p99']:.2f} x, "
        f"round trips {ratios['round_trips']:.2f} x"
    )
    return "\n".join(lines)


def run(config: Config) -> tuple[dict[str, Any], str]:
    server = RedisServerProcess().start()
    try:
        with tempfile.TemporaryDirectory(prefix="penny-strict-") as workdir:
            summaries = measure(server.url, workdir, config)
        version = server.version()
    finally:
        server.stop()
    strict, available = summaries["strict"], summaries["available"]
    ratios = {
        "p50": strict.p50_us / available.p50_us,
        "p99": strict.p99_us / available.p99_us,
        "round_trips": strict.round_trips_per_update / available.round_trips_per_update,
    }
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "redis_server": version,
        "config": asdict(config),
        "modes": {m: asdict(s) for m, s in summaries.items()},
        "ratios_strict_vs_available": {k: round(v, 3) for k, v in ratios.items()},
    }
    return report, render(summaries, ratios)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the report (and write JSON); 0 whatever the figures."""
    return bench_main(
        argv, title="penny_cache strict write mode benchmark", quick=QUICK, full=FULL, run=run
    )


if __name__ == "__main__":
    sys.exit(main())
