"""What the staleness bound's new mechanisms cost a healthy system, in one run.

Issue 12 added, on the read path, the lost-proof gate (``CachePolicy.redis_trusted``,
checked before every Redis lookup) and version tokens (``min_version``), and shortened the
outbox defaults (sweeps every 0.5 s with a 1 s grace, from 5 s and 2 s). Each is timed
here against the same path with it switched off, which is how the code behaved before:

* Redis hit through a tracker (near cache off): gate on, against the gate patched to
  always answer True;
* near hit through a tracker: ``min_version=0`` (the default) and ``min_version=v``,
  against ``PersonalityCache.near_get`` called directly (the lookup without the token);
* the outbox sweeps of one idle process: SQL statements per second at the new defaults
  and at the old ones, counted with SQLAlchemy's ``before_cursor_execute`` event.

Strict writes' per-update cost is ``bench_strict``. Run ``python -m bench.bench_bound
[--quick] [--json PATH]``; it exits 0 whatever the figures: a report, not a gate.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import sqlalchemy as sa

from bench.runner import bench_main
from penny_cache import PersonalityCache, PersonalityStore, PersonalityTracker
from penny_cache.app.embedded import RedisServerProcess
from penny_cache.policy.reads import CachePolicy
from penny_cache.store.outbox import OutboxSweeper

DIM: Final = "communication_formality"


@dataclass(frozen=True)
class Config:
    mode: str
    rounds: int
    calls: int  # timed calls per variant per round
    sweep_seconds: float  # how long the idle sweeper is watched


QUICK: Final = Config("quick", rounds=3, calls=300, sweep_seconds=1.5)
FULL: Final = Config("full", rounds=10, calls=3000, sweep_seconds=6.0)


def _per_call_ns(call: Callable[[], object], calls: int) -> float:
    started = time.perf_counter_ns()
    for _ in range(calls):
        call()
    return (time.perf_counter_ns() - started) / calls


@contextmanager
def _gate_off() -> Iterator[None]:
    """The read path as it was before the lost-proof gate."""
    gate = CachePolicy.redis_trusted
    CachePolicy.redis_trusted = lambda self: True  # type: ignore[method-assign]
    try:
        yield
    finally:
        CachePolicy.redis_trusted = gate  # type: ignore[method-assign]


def _interleaved(variants: dict[str, Callable[[], object]], config: Config) -> dict[str, float]:
    """Median ns per call of each variant over interleaved rounds (noise hits all alike)."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for number in range(config.rounds):
        names = list(variants) if number % 2 == 0 else list(variants)[::-1]
        for name in names:
            samples[name].append(_per_call_ns(variants[name], config.calls))
    return {name: statistics.median(values) for name, values in samples.items()}


def _reads(url: str, db: str, config: Config) -> dict[str, float]:
    store = PersonalityStore(db)
    far = PersonalityCache.from_url(url, namespace="bound-far", near_cache=False)
    near = PersonalityCache.from_url(url, namespace="bound-near")
    on_redis = PersonalityTracker(store, far, outbox_interval=None)
    on_near = PersonalityTracker(store, near, outbox_interval=None)
    version = on_redis.update_personality_dimension("ann", DIM, 0.7).version
    on_near.get_current_personality_state("ann")
    deadline = time.monotonic() + 10  # the near cache is used once its listener vouches
    while not near.near_trusted and time.monotonic() < deadline:
        threading.Event().wait(0.01)
        on_near.get_current_personality_state("ann")

    def gate_off_hit() -> object:
        with _gate_off():
            return on_redis.get_current_personality_state("ann")

    try:
        return _interleaved(
            {
                "redis hit, gate on": lambda: on_redis.get_current_personality_state("ann"),
                "redis hit, gate off (before)": gate_off_hit,
                "near hit, no token": lambda: on_near.get_current_personality_state("ann"),
                "near hit, token": lambda: on_near.get_current_personality_state(
                    "ann", min_version=version
                ),
                "near lookup alone (before)": lambda: near.near_get("ann"),
            },
            config,
        )
    finally:
        for tracker in (on_redis, on_near):
            tracker.close()
        far.close()
        near.close()
        store.close()


def _sweep_statements(db: str, interval: float, grace: float, seconds: float) -> float:
    """SQL statements per second of one idle process's outbox sweeper."""
    store = PersonalityStore(db)
    store.load("warm")  # schema made, engine connected
    counted = [0]

    def count(*_args: Any) -> None:
        counted[0] += 1

    engine = store._engine
    sa.event.listen(engine, "before_cursor_execute", count)
    sweeper = OutboxSweeper(store, lambda _state: True, interval=interval, grace=grace)
    sweeper.start()
    threading.Event().wait(seconds)  # a rate is measured over wall time, by design
    sweeper.stop()
    sa.event.remove(engine, "before_cursor_execute", count)
    store.close()
    return counted[0] / seconds


def run(config: Config) -> tuple[dict[str, Any], str]:
    server = RedisServerProcess().start()
    try:
        with tempfile.TemporaryDirectory(prefix="penny-bound-") as workdir:
            db = f"sqlite:///{workdir}/bound.db"
            reads = _reads(server.url, db, config)
            sweeps = {
                "new defaults (0.5 s, grace 1 s)": _sweep_statements(
                    db, 0.5, 1.0, config.sweep_seconds
                ),
                "old defaults (5 s, grace 2 s)": _sweep_statements(
                    db, 5.0, 2.0, config.sweep_seconds
                ),
            }
        version = server.version()
    finally:
        server.stop()
    ratios = {
        "redis hit: gate on / off": reads["redis hit, gate on"]
        / reads["redis hit, gate off (before)"],
        "near hit (no token) / near lookup alone": reads["near hit, no token"]
        / reads["near lookup alone (before)"],
        "near hit (token) / near hit (no token)": reads["near hit, token"]
        / reads["near hit, no token"],
    }
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "redis_server": version,
        "config": config.__dict__,
        "reads_ns_per_call": {k: round(v, 1) for k, v in reads.items()},
        "outbox_sql_statements_per_second": {k: round(v, 2) for k, v in sweeps.items()},
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
    }
    return report, _render(reads, sweeps, ratios)


def _render(reads: dict[str, float], sweeps: dict[str, float], ratios: dict[str, float]) -> str:
    lines = ["| read path | ns per call |", "|---|---|"]
    lines += [f"| {name} | {value:,.0f} |" for name, value in reads.items()]
    lines += ["", "| idle process's outbox sweeper | SQL statements / s |", "|---|---|"]
    lines += [f"| {name} | {value:.2f} |" for name, value in sweeps.items()]
    lines += [""] + [f"{name}: {value:.3f} x" for name, value in ratios.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the report (and write JSON); 0 whatever the figures."""
    return bench_main(
        argv, title="penny_cache staleness-bound cost benchmark", quick=QUICK, full=FULL, run=run
    )


if __name__ == "__main__":
    sys.exit(main())
