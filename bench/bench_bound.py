"""What the staleness bound's new mechanisms cost a healthy system, in one run.

Issue 12 added, on the read path, the lost-proof gate (``CachePolicy.redis_trusted``,
checked before every Redis lookup) and version tokens (``min_version``), and shortened the
outbox defaults (sweeps every 0.5 s with a 1 s grace, from 5 s and 2 s). Each is timed
here against the same path with it switched off, which is how the code behaved before:

* Redis hit through a tracker (near cache off): gate on, against the gate patched to
  always answer True;
* near hit through a tracker: ``min_version=0`` (the default) and ``min_version=v``,
  with ``PersonalityCache.near_get`` called directly as the floor (the lookup alone);
* the outbox sweeps of one idle process: SQL statements per sweep (counted with
  SQLAlchemy's ``before_cursor_execute`` event), per second at the new interval and at
  the old one.

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
from contextlib import AbstractContextManager, contextmanager, nullcontext
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


QUICK: Final = Config("quick", rounds=3, calls=300)
FULL: Final = Config("full", rounds=10, calls=3000)
Variant = tuple[Callable[[], object], Callable[[], AbstractContextManager[None]]]


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


def _interleaved(variants: dict[str, Variant], config: Config) -> dict[str, float]:
    """Median ns per call of each variant (a call, and the context a batch of it runs
    in) over interleaved rounds, so noise hits all alike."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for number in range(config.rounds):
        names = list(variants) if number % 2 == 0 else list(variants)[::-1]
        for name in names:
            call, context = variants[name]
            with context():
                samples[name].append(_per_call_ns(call, config.calls))
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

    def redis_hit() -> object:
        return on_redis.get_current_personality_state("ann")

    def near_hit() -> object:
        return on_near.get_current_personality_state("ann")

    def near_hit_token() -> object:
        return on_near.get_current_personality_state("ann", min_version=version)

    try:
        return _interleaved(
            {
                "redis hit, gate on": (redis_hit, nullcontext),
                "redis hit, gate off (before)": (redis_hit, _gate_off),
                "near hit, no token": (near_hit, nullcontext),
                "near hit, token": (near_hit_token, nullcontext),
                "near lookup alone (the floor)": (lambda: near.near_get("ann"), nullcontext),
            },
            config,
        )
    finally:
        for tracker in (on_redis, on_near):
            tracker.close()
        far.close()
        near.close()
        store.close()


def _statements_per_sweep(db: str) -> float:
    """SQL statements one sweep of an idle process's outbox makes (nothing to replay)."""
    store = PersonalityStore(db)
    store.load("warm")  # schema made, engine connected
    counted = [0]

    def count(*_args: Any) -> None:
        counted[0] += 1

    engine = store._engine
    sa.event.listen(engine, "before_cursor_execute", count)
    sweeper = OutboxSweeper(store, lambda _state: True, interval=3600, grace=1.0)
    sweeps = 20
    for _ in range(sweeps):
        sweeper.sweep()
    sa.event.remove(engine, "before_cursor_execute", count)
    store.close()
    return counted[0] / sweeps


def run(config: Config) -> tuple[dict[str, Any], str]:
    server = RedisServerProcess().start()
    try:
        with tempfile.TemporaryDirectory(prefix="penny-bound-") as workdir:
            db = f"sqlite:///{workdir}/bound.db"
            reads = _reads(server.url, db, config)
            per_sweep = _statements_per_sweep(db)
            sweeps = {
                "new default interval (0.5 s)": per_sweep / 0.5,
                "old default interval (5 s)": per_sweep / 5.0,
            }
        version = server.version()
    finally:
        server.stop()
    ratios = {
        "redis hit: gate on / off": reads["redis hit, gate on"]
        / reads["redis hit, gate off (before)"],
        "near hit (no token) / the floor": reads["near hit, no token"]
        / reads["near lookup alone (the floor)"],
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
    lines += ["", "| an idle process's outbox sweeps | SQL statements / s |", "|---|---|"]
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
