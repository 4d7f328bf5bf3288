"""What ``PENNY_VALUE_KEY`` costs a Redis hit, against the same hit without it, in one run.

With a value key every entry read from Redis is verified (one HMAC-SHA256 over the key
name and the ~1.2 KB envelope) before it is decoded, and every entry written is signed.
The near-cache hit never touches Redis bytes, so it pays nothing; the Redis hit is the
path that pays, so that is what is timed: two ``PersonalityCache`` on one private
redis-server, near cache off, one with the key and one without, each on its own namespace
with the same users, timed in interleaved rounds (the order alternates each round, so
noise hits both alike). ``Signer.open`` and ``Signer.seal`` are also timed alone, in
process, to show the cryptography's own share.

Run ``python -m bench.bench_sign [--quick] [--json PATH]``. It starts a private
``redis-server`` (``penny_cache.app.embedded``) on a free loopback port and stops it; it
never touches another Redis. Exit code 0 whatever the figures: a report, not a gate.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Final

import redis

from bench.runner import bench_main
from penny_cache import PersonalityCache
from penny_cache.app.embedded import RedisServerProcess
from penny_cache.codec import encode_state
from penny_cache.signing import Signer
from penny_cache.state import default_state

KEY: Final = "bench-value-key-0123456789abcdef0123456789"
VARIANTS: Final = ("unsigned", "signed")


@dataclass(frozen=True)
class Config:
    mode: str
    rounds: int
    calls: int  # timed hits per variant per round
    users: int
    crypto_calls: int


QUICK: Final = Config("quick", rounds=2, calls=200, users=10, crypto_calls=2_000)
FULL: Final = Config("full", rounds=10, calls=3_000, users=50, crypto_calls=200_000)


@dataclass(frozen=True)
class Summary:
    label: str
    median_ns: float
    p99_ns: float
    mean_ns: float
    samples: int


def summarise(label: str, samples: Sequence[int]) -> Summary:
    ordered = sorted(samples)
    p99 = ordered[max(0, -(-len(ordered) * 99 // 100) - 1)]
    return Summary(label, statistics.median(ordered), p99, statistics.fmean(ordered), len(ordered))


def timed(call: Callable[[str], object], users: list[str], n: int) -> list[int]:
    samples = []
    for i in range(n):
        user = users[i % len(users)]
        started = time.perf_counter_ns()
        call(user)
        samples.append(time.perf_counter_ns() - started)
    return samples


def hit(cache: PersonalityCache) -> Callable[[str], object]:
    def call(user: str) -> object:
        state = cache.get(user)
        assert state is not None, "every timed read must be a Redis hit"
        return state

    return call


def per_call_ns(call: Callable[[], object], n: int) -> float:
    started = time.perf_counter_ns()
    for _ in range(n):
        call()
    return (time.perf_counter_ns() - started) / n


def crypto(config: Config) -> dict[str, float]:
    """``Signer.open`` and ``seal`` alone on a real envelope, no I/O: the HMAC's share."""
    signer = Signer(KEY)
    key = "penny:v1:_:state:{user-0}"
    body = encode_state(default_state("user-0", datetime(2026, 1, 1, tzinfo=UTC)))
    sealed = signer.seal(key, body)
    return {
        "open_ns": per_call_ns(lambda: signer.open(key, sealed), config.crypto_calls),
        "seal_ns": per_call_ns(lambda: signer.seal(key, body), config.crypto_calls),
        "envelope_bytes": len(body),
        "signed_bytes": len(sealed),
    }


def measure(caches: dict[str, PersonalityCache], config: Config) -> dict[str, Summary]:
    users = [f"user-{n}" for n in range(config.users)]
    now = datetime(2026, 1, 1, tzinfo=UTC)
    for cache in caches.values():
        for user in users:
            assert cache.set(user, default_state(user, now))
        timed(hit(cache), users, config.calls)  # warm connections and scripts
    samples: dict[str, list[int]] = {name: [] for name in caches}
    for round_ in range(config.rounds):
        order = VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]
        for name in order:
            samples[name] += timed(hit(caches[name]), users, config.calls)
    for name, cache in caches.items():
        stats = cache.local_stats()
        expected = config.calls * (config.rounds + 1)
        assert stats["hits"] == expected and stats["misses"] == 0, (name, stats)
        assert stats["integrity_failures"] == 0, (name, stats)
    return {
        "unsigned": summarise("Redis hit, no PENNY_VALUE_KEY", samples["unsigned"]),
        "signed": summarise("Redis hit, PENNY_VALUE_KEY set", samples["signed"]),
    }


def render(s: dict[str, Summary], ratios: dict[str, float], cost: dict[str, float]) -> str:
    lines = [f"{'read path (sync cache, near cache off)':<40} {'median ns':>10} {'p99 ns':>10}"]
    lines.append("-" * len(lines[0]))
    for row in s.values():
        lines.append(f"{row.label:<40} {row.median_ns:>10,.0f} {row.p99_ns:>10,.0f}")
    lines.append("")
    lines.append(f"signed / unsigned Redis hit (medians)   {ratios['median']:6.3f}")
    lines.append(f"signed / unsigned Redis hit (means)     {ratios['mean']:6.3f}")
    lines.append(
        f"Signer.open alone {cost['open_ns']:,.0f} ns, Signer.seal alone {cost['seal_ns']:,.0f}"
        f" ns; envelope {cost['envelope_bytes']:,.0f} B, signed {cost['signed_bytes']:,.0f} B"
    )
    return "\n".join(lines)


def run(config: Config) -> tuple[dict[str, Any], str]:
    """Start redis, measure both variants and the HMAC alone, stop redis."""
    process = RedisServerProcess().start()
    caches: dict[str, PersonalityCache] = {}
    try:
        for name in VARIANTS:
            caches[name] = PersonalityCache.from_url(
                process.url,
                namespace=f"bench-sign-{name}",
                near_cache=False,
                stats_flush_interval=None,
                value_key=KEY if name == "signed" else None,
            )
        summaries = measure(caches, config)
        raw = redis.Redis.from_url(process.url)
        redis_version = str(raw.info("server")["redis_version"])
        raw.close()
    finally:
        for cache in caches.values():
            cache.close()
        process.stop()
    cost = crypto(config)
    ratios = {
        "median": summaries["signed"].median_ns / summaries["unsigned"].median_ns,
        "mean": summaries["signed"].mean_ns / summaries["unsigned"].mean_ns,
    }
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "redis_server": redis_version,
        "config": asdict(config),
        "operations": {name: asdict(s) for name, s in summaries.items()},
        "crypto": cost,
        "ratios": {"signed_vs_unsigned_hit": ratios["median"], "mean": ratios["mean"]},
    }
    return report, render(summaries, ratios, cost)


def main(argv: Sequence[str] | None = None) -> int:
    return bench_main(
        argv,
        title="penny_cache Redis hit with and without PENNY_VALUE_KEY",
        quick=QUICK,
        full=FULL,
        run=run,
    )


if __name__ == "__main__":
    sys.exit(main())
