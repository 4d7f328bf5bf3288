"""Foundation benchmark: does the cache cost what the network and SQL already cost, no more?

Why these baselines. A hit can never be cheaper than one Redis round trip plus decoding
the payload, so ``cache.get`` is compared with a bare redis-py client doing exactly that
on the very same key and bytes: whatever the ratio shows above 1.0 is the policy's own
overhead (key building, error guard, typed decode and validation, counters). A miss must
read SQL anyway; on top it pays a GET that misses and a version-checked fill, so its
budget is the SQL read plus two GET+decode round trips. Two rows without a target (a SQL
read right after a round trip, and a policy-free GET/SQL/SET miss) show how much of a
miss is the machine rather than penny_cache: in the tight baseline loops the CPU stays
warm, while the miss path's steps each follow a blocking wait.

Run ``python -m bench.bench_foundation [--quick] [--json PATH]``. It starts a private
``redis-server`` on a free loopback port and uses a throwaway SQLite file. It exits 0
even when a target is missed: it is a report, not a gate.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, Final, cast

import msgspec
import redis

from bench.runner import bench_main
from penny_cache import PersonalityCache, PersonalityStore, PersonalityTracker
from penny_cache.app.embedded import RedisServerProcess

USER: Final = "bench-user"
HIT_TARGET: Final = 1.15
MISS_TARGET: Final = 1.0
_UPDATES: Final[tuple[tuple[str, float | str], ...]] = (
    ("communication_formality", 0.7),
    ("technical_depth_preference", 0.8),
    ("humor_style_preference", "dry"),
    ("response_length_preference", "brief"),
)


@dataclass(frozen=True)
class Config:
    """How much to measure; rounds interleave operations so noise hits all of them alike."""

    mode: str
    rounds: int
    iterations: int  # timed calls per operation per round
    warmup: int  # untimed calls per operation before the first round
    block_warmup: int  # untimed calls before each block, to re-warm after switching


# Many short rounds: Redis latency on a VM drifts on a scale of 0.1-1 s, so operations
# compared with each other must be timed within a fraction of a second of each other.
QUICK: Final = Config("quick", rounds=30, iterations=50, warmup=100, block_warmup=5)
FULL: Final = Config("full", rounds=200, iterations=100, warmup=500, block_warmup=5)


@dataclass(frozen=True)
class Op:
    """One measured operation; ``before`` runs untimed ahead of every timed call."""

    name: str
    label: str
    call: Callable[[], object]
    before: Callable[[], object] | None = None


@dataclass(frozen=True)
class Summary:
    """Latency of one operation over all rounds, in microseconds."""

    label: str
    median_us: float
    p99_us: float
    samples: int


@dataclass(frozen=True)
class Verdict:
    """One target: a ratio of medians and the bound it must stay under."""

    name: str
    label: str
    ratio: float
    target: float
    detail: str

    @property
    def passed(self) -> bool:
        return self.ratio <= self.target


@dataclass(frozen=True)
class Env:
    """Everything the operations touch, built once so every op sees the same data."""

    cache: PersonalityCache
    store: PersonalityStore
    tracker: PersonalityTracker
    raw: redis.Redis
    key: str


# -- the fixture and the operations ----------------------------------------------------


@contextmanager
def redis_server() -> Iterator[int]:
    """A private redis-server on a free loopback port, stopped however the run ends."""
    server = RedisServerProcess().start()
    try:
        yield server.port
    finally:
        server.stop()


@contextmanager
def bench_env(port: int, workdir: Path) -> Iterator[Env]:
    """A store, a cache bound to it and one user with a few committed updates."""
    store = PersonalityStore(f"sqlite:///{workdir}/bench.db")
    # The near cache is off: this benchmark measures the Redis tier (bench_near.py the near one).
    url = f"redis://127.0.0.1:{port}/0"
    cache = PersonalityCache.from_url(url, namespace="bench", ttl=300, near_cache=False)
    raw = redis.Redis(host="127.0.0.1", port=port)
    try:
        tracker = PersonalityTracker(store=store, cache=cache)
        for dimension, value in _UPDATES:
            tracker.update_personality_dimension(
                USER, dimension, value, confidence_change=0.1, context="x"
            )
        # The key is read only now: the first tracker call bound the cache to the store.
        yield Env(cache, store, tracker, raw, cache.keys.state(USER))
    finally:
        raw.close()
        cache.close()
        store.close()


def check_fixture(env: Env) -> None:
    """Refuse to time a setup that would not measure what the labels say."""
    state = env.cache.get(USER)
    if state is None or state.version != len(_UPDATES):
        raise RuntimeError(f"expected a cached state at version {len(_UPDATES)}, got {state}")
    payload = env.raw.get(env.key)
    if not isinstance(payload, bytes):
        raise RuntimeError(f"the raw client found nothing under {env.key!r}")
    if msgspec.json.decode(payload)["version"] != state.version:
        raise RuntimeError("the raw payload and the cached state disagree")


def _noop() -> None:
    """The timer and closure-call overhead that every other sample includes too."""


def build_ops(env: Env) -> list[Op]:
    """The measured calls, bound to locals so the loop adds no attribute lookups."""
    cache, tracker, store, key = env.cache, env.tracker, env.store, env.key
    get = cast("Callable[[str], bytes]", env.raw.get)  # typed once, not per call
    decode = msgspec.json.decode
    return [
        Op("timer", "timer + call overhead (no-op)", _noop),
        Op("l2_hit", "L2 hit via cache.get", lambda: cache.get(USER)),
        Op("raw_get_decode", "raw GET + decode", lambda: decode(get(key))),
        Op("raw_ping", "raw round trip (PING)", env.raw.ping),
        Op(
            "miss",
            "tracker read on a miss",
            lambda: tracker.get_current_personality_state(USER),
            before=lambda: cache.invalidate(USER),
        ),
        Op("sql_read", "direct SQLAlchemy read", lambda: store.load(USER)),
        # Informational: the miss path's SQL read always follows a blocking round trip,
        # which leaves the CPU caches colder than a tight loop of reads does.
        Op(
            "sql_read_after_rtt",
            "SQL read after a round trip",
            lambda: store.load(USER),
            before=env.raw.ping,
        ),
        Op(
            "hand_rolled_miss",
            "hand-rolled miss: GET, SQL, SET",
            _hand_rolled_miss(env, f"{key}:hand-rolled"),
            before=lambda: env.raw.unlink(f"{key}:hand-rolled"),
        ),
    ]


def _hand_rolled_miss(env: Env, key: str) -> Callable[[], object]:
    """Informational: cache-aside with no policy at all, on a key of its own.

    Its round trips sit between CPU work just like the tracker's, so it shows what the
    miss costs on this machine before any versioning, validation or counting.
    """
    get = cast("Callable[[str], bytes | None]", env.raw.get)
    put, load = env.raw.set, env.store.load
    encode = msgspec.json.Encoder(enc_hook=dict).encode  # read-only mappings as objects

    def miss() -> None:
        if get(key) is None:
            put(key, encode(load(USER)), px=300_000)

    return miss


# -- measuring -------------------------------------------------------------------------


def time_calls(op: Op, n: int) -> list[int]:
    """Time ``n`` single calls in ns; ``before`` runs outside the timed window."""
    clock = time.perf_counter_ns
    call, before = op.call, op.before
    samples = [0] * n
    for i in range(n):
        if before is not None:
            before()
        start = clock()
        call()
        samples[i] = clock() - start
    return samples


def timed_block(op: Op, n: int, warm: int) -> list[int]:
    """One block with the collector off, so a GC pause lands on no operation's samples.

    Cheap because ``measure`` froze the setup's objects: collect() sees only new garbage.
    """
    time_calls(op, warm)
    gc.collect()
    gc.disable()
    try:
        return time_calls(op, n)
    finally:
        gc.enable()


def measure(ops: Sequence[Op], config: Config) -> tuple[dict[str, list[int]], dict[str, int]]:
    """Samples per operation over all rounds, and how many calls each operation made."""
    for op in ops:
        time_calls(op, config.warmup)
    samples: dict[str, list[int]] = {op.name: [] for op in ops}
    gc.collect()
    gc.freeze()  # the fixture's objects are long-lived: keep them out of every collection
    try:
        for r in range(config.rounds):
            shift = r % len(ops)  # rotate the order so no op always runs right after another
            for op in [*ops[shift:], *ops[:shift]]:
                samples[op.name] += timed_block(op, config.iterations, config.block_warmup)
            if (r + 1) % max(1, config.rounds // 10) == 0:
                print(f"  round {r + 1}/{config.rounds}", file=sys.stderr, flush=True)
    finally:
        gc.unfreeze()
    per_op = config.warmup + config.rounds * (config.iterations + config.block_warmup)
    return samples, {op.name: per_op for op in ops}


def check_counters(cache: PersonalityCache, calls: Mapping[str, int]) -> dict[str, Any]:
    """Prove from the cache's own counters that every hit hit and every miss missed."""
    stats = cache.local_stats()
    expected = {
        "hits": calls["l2_hit"] + 1,  # +1: the lookup in check_fixture
        "misses": calls["miss"],
        "redis_errors": 0,
        "decode_errors": 0,
    }
    actual = {name: int(stats[name]) for name in expected}
    return {"expected": expected, "actual": actual, "ok": expected == actual}


def _percentile(ordered: Sequence[int], fraction: float) -> int:
    """Nearest-rank percentile of already sorted samples."""
    rank = max(1, -(-len(ordered) * fraction // 1))  # ceil without floats drifting
    return ordered[int(rank) - 1]


def summarise(label: str, samples: Sequence[int]) -> Summary:
    ordered = sorted(samples)
    return Summary(
        label=label,
        median_us=statistics.median(ordered) / 1000,
        p99_us=_percentile(ordered, 0.99) / 1000,
        samples=len(ordered),
    )


def evaluate(s: Mapping[str, Summary]) -> list[Verdict]:
    """The two targets, both as ratios of medians so machine speed cancels out."""
    raw = s["raw_get_decode"].median_us
    sql = s["sql_read"].median_us
    budget = sql + 2 * raw
    return [
        Verdict("hit_vs_raw", "L2 hit / raw GET+decode", s["l2_hit"].median_us / raw, HIT_TARGET,
                f"{s['l2_hit'].median_us:.1f} us vs {raw:.1f} us "
                f"({s['l2_hit'].median_us - raw:+.1f} us over the bare client)"),
        Verdict("miss_vs_budget", "miss / (SQL read + 2 x raw GET+decode)",
                s["miss"].median_us / budget, MISS_TARGET,
                f"{s['miss'].median_us:.1f} us vs budget {sql:.1f} + 2 x {raw:.1f}"
                f" = {budget:.1f} us ({s['miss'].median_us - budget:+.1f} us)"),
    ]  # fmt: skip


def informational(s: Mapping[str, Summary]) -> dict[str, float]:
    """No target: the miss against baselines whose round trips sit between CPU work too."""
    cold_budget = s["sql_read_after_rtt"].median_us + 2 * s["raw_get_decode"].median_us
    return {
        "miss_vs_cold_budget": s["miss"].median_us / cold_budget,
        "miss_vs_hand_rolled": s["miss"].median_us / s["hand_rolled_miss"].median_us,
    }


# -- reporting -------------------------------------------------------------------------


def metadata(raw: redis.Redis, config: Config) -> dict[str, Any]:
    """Enough context to compare two runs, or to see why they cannot be compared."""
    server = raw.info("server")
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "redis_server": str(server["redis_version"]),
        "redis_py": package_version("redis"),
        "hiredis": package_version("hiredis"),
        "msgspec": package_version("msgspec"),
        "sqlalchemy": package_version("SQLAlchemy"),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "config": asdict(config),
    }


def render(
    summaries: Mapping[str, Summary], verdicts: Sequence[Verdict], info: Mapping[str, float]
) -> str:
    """The human-readable table, the PASS/FAIL lines and the informational ratios."""
    lines = [f"{'operation':<32} {'median us':>10} {'p99 us':>10} {'samples':>8}"]
    lines.append("-" * len(lines[0]))
    for s in summaries.values():
        lines.append(f"{s.label:<32} {s.median_us:>10.1f} {s.p99_us:>10.1f} {s.samples:>8}")
    lines.append("")
    for v in verdicts:
        status = "PASS" if v.passed else "FAIL"
        lines.append(f"{v.label:<40} {v.ratio:6.3f}  (target <= {v.target:.2f})  {status}")
        lines.append(f"    {v.detail}")
    cold, hand = info["miss_vs_cold_budget"], info["miss_vs_hand_rolled"]
    lines.append(f"\ninfo: miss / (SQL read after a round trip + 2 x raw GET+decode) {cold:.3f}")
    lines.append(f"info: miss / hand-rolled miss (GET, SQL, SET; no policy)       {hand:.3f}")
    return "\n".join(lines)


def build_report(
    meta: Mapping[str, Any],
    summaries: Mapping[str, Summary],
    verdicts: Sequence[Verdict],
    info: Mapping[str, float],
    sanity: Mapping[str, Any],
) -> dict[str, Any]:
    """The JSON document ``--json`` writes."""
    return {
        **meta,
        "operations": {name: asdict(s) for name, s in summaries.items()},
        "ratios": {v.name: v.ratio for v in verdicts},
        "targets": {v.name: v.target for v in verdicts},
        "passed": {v.name: v.passed for v in verdicts},
        "all_passed": all(v.passed for v in verdicts),
        "informational": dict(info),
        "counters_check": dict(sanity),
    }


def run(config: Config) -> tuple[dict[str, Any], str]:
    """Start redis, build the fixture, measure, tear everything down; return the report."""
    with tempfile.TemporaryDirectory(prefix="penny-bench-") as tmp:
        workdir = Path(tmp)
        with redis_server() as port, bench_env(port, workdir) as env:
            check_fixture(env)
            ops = build_ops(env)
            samples, calls = measure(ops, config)
            sanity = check_counters(env.cache, calls)
            meta = metadata(env.raw, config)
    summaries = {op.name: summarise(op.label, samples[op.name]) for op in ops}
    verdicts = evaluate(summaries)
    info = informational(summaries)
    text = render(summaries, verdicts, info)
    if not sanity["ok"]:
        text += f"\n\nWARNING: counters disagree with the calls made: {sanity}"
    return build_report(meta, summaries, verdicts, info, sanity), text


def main(argv: Sequence[str] | None = None) -> int:
    """Print the report (and write JSON); 0 even when a target is missed."""
    return bench_main(
        argv, title="penny_cache foundation benchmark", quick=QUICK, full=FULL, run=run
    )


if __name__ == "__main__":
    sys.exit(main())
