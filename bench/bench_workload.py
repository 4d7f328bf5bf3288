"""Workload benchmark: penny_cache and its peers under a production-like mix, 1..N workers.

Why this shape. The foundation and near benchmarks time single operations; an operator
wants to know what a fleet of worker processes gets out of the cache when many users are
read and a few are updated: throughput, tail latency, hit rate, SQL and Redis load, and
whether a worker ever reads back an older state than the one it just wrote. Users are
Zipf-distributed (a few hot, a long tail), 95 % reads and 5 % updates. dogpile.cache
and cashews run the very same schedule on the same Redis, as cache-aside with
delete-on-update (neither keeps an in-process copy coherent across processes).

Steady state, not a cold start: before each run every user's version-0 state is put in
Redis (a long-running deployment's Redis holds its active users), so the hit rate shows
what *updates* cost each library, not how fast an empty cache fills. Near caches and
connection pools start cold and warm up, untimed, in each worker.

Run ``python -m bench.bench_workload [--quick] [--json PATH]``. It starts a private
``redis-server`` and uses throwaway SQLite (WAL) files, one per run. Exit code 0 even
when a target is missed: it is a report, not a gate.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any, Final

import redis

from bench.bench_foundation import redis_server
from bench.databases import database_kind, fresh_database
from bench.runner import bench_main
from bench.workload_workers import (
    TTL_S,
    WorkerResult,
    WorkerSpec,
    prefill_peer,
    user_id,
    workload_worker,
)
from penny_cache import PersonalityCache, PersonalityState, PersonalityStore
from penny_cache.codec import encode_state

SPAWN: Final = multiprocessing.get_context("spawn")
BARRIER_TIMEOUT: Final = 180.0  # spawning and importing 4 children on 2 vCPUs takes a few s
HIT_RATE_TARGET: Final = 0.95
EFFICIENCY_TARGET: Final = 0.75  # per core, for 1 < N <= cores: Redis shares those cores
LIBRARIES: Final = ("penny_cache", "dogpile", "cashews")


@dataclass(frozen=True)
class Config:
    """The workload; every library runs it once per worker count, interleaved by N."""

    mode: str
    workers: tuple[int, ...]
    duration_s: float  # timed loop per worker per run
    warmup_s: float  # untimed, per worker, before the timed loop
    users: int = 10_000
    zipf_s: float = 1.1
    update_share: float = 0.05
    reservoir: int = 200_000  # latency samples kept per worker per kind of operation
    seed: int = 20_260_101


QUICK: Final = Config("quick", workers=(1, 2), duration_s=1.5, warmup_s=0.5)
FULL: Final = Config("full", workers=(1, 2, 4), duration_s=10.0, warmup_s=1.0)


def cores_available() -> int:
    """The CPUs this process may run on (a container's limit, not the host's count)."""
    return len(os.sched_getaffinity(0))  # Linux, like the redis-server it starts


# -- one run: fill Redis, start the workers, snapshot around the timed window ----------


def prefill(library: str, port: int, db_url: str, namespace: str, states: Sequence[Any]) -> None:
    """Put every user's version-0 state in Redis the way ``library`` itself would store it.

    penny_cache's entries are written with a pipeline of plain SETs of its own envelope
    (what ``cache.set`` stores, without one script call per user), then read back once.
    """
    store = PersonalityStore(db_url)  # also creates the schema before workers race to it
    try:
        if library == "penny_cache":
            cache = PersonalityCache.from_url(
                f"redis://127.0.0.1:{port}/0", namespace=namespace, near_cache=False
            )
            try:
                cache.bind_store(store.identity)
                with redis.Redis(port=port) as raw, raw.pipeline(transaction=False) as pipe:
                    for state in states:
                        pipe.set(
                            cache.keys.state(state.user_id), encode_state(state), px=TTL_S * 1000
                        )
                    pipe.execute()
                if cache.get(states[-1].user_id) is None:
                    raise RuntimeError("penny_cache does not read the prefilled entries")
            finally:
                cache.close()
        else:
            prefill_peer(library, port, states)
    finally:
        store.close()


def redis_snapshot(raw: redis.Redis) -> dict[str, float]:
    """Commands executed so far: the total, and per command (INFO commandstats)."""
    out = {"total": float(raw.info("stats")["total_commands_processed"])}
    for name, stats in raw.info("commandstats").items():
        out[name.removeprefix("cmdstat_")] = float(stats["calls"])
    return out


def shared_stats(port: int, namespace: str) -> dict[str, Any]:
    """penny_cache's counters summed over all processes, read by a fresh cache."""
    url = f"redis://127.0.0.1:{port}/0"
    cache = PersonalityCache.from_url(url, namespace=namespace, near_cache=False)
    try:
        return cache.get_stats()
    finally:
        cache.close()


@contextmanager
def spawned(specs: Sequence[WorkerSpec]) -> Iterator[tuple[Barrier, Queue[WorkerResult]]]:
    """The workers, a Barrier they share with the parent, and their result queue;
    terminated however the run ends (the runner turns SIGTERM into SystemExit)."""
    barrier, queue = SPAWN.Barrier(len(specs) + 1, timeout=BARRIER_TIMEOUT), SPAWN.Queue()
    procs = [SPAWN.Process(target=workload_worker, args=(s, barrier, queue), daemon=True)
             for s in specs]  # fmt: skip
    try:
        for proc in procs:
            proc.start()
        yield barrier, queue
        for proc in procs:
            proc.join(30)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(10)
        queue.close()


@dataclass(frozen=True)
class Window:
    """What the parent saw of one run's timed window."""

    results: list[WorkerResult]
    commands: dict[str, float]  # executed during the window, per command and "total"
    shared: dict[str, float] | None  # penny_cache's shared counters: after - before


def timed_window(
    specs: Sequence[WorkerSpec], raw: redis.Redis, stats: Callable[[], dict[str, Any]] | None
) -> Window:
    """Meet the workers four times (ready, start, stopped, release), snapshotting Redis
    right before the start and right after the last worker stopped its timed loop; the
    shared counters are read again once every worker has closed (and published)."""
    with spawned(specs) as (barrier, queue):
        try:
            barrier.wait()  # ready: warm-up done, counters published
            before, shared_before = redis_snapshot(raw), stats() if stats else {}
            barrier.wait()  # start
            barrier.wait()  # stopped
            after = redis_snapshot(raw)
            barrier.wait()  # release: they may close now
        except threading.BrokenBarrierError:
            raise RuntimeError(f"a worker failed: {queue.get(timeout=30).error}") from None
        results = sorted((queue.get(timeout=120) for _ in specs), key=lambda r: r.index)
    if failed := [r.error for r in results if r.error]:
        raise RuntimeError(f"workers failed: {failed}")
    commands = {k: v - before.get(k, 0.0) for k, v in after.items()}
    shared = None
    if stats is not None:
        shared_after = stats()
        shared = {
            k: float(shared_after[k] - shared_before[k]) for k in ("hits", "misses", "near_hits")
        }
    return Window(results, commands, shared)


@dataclass(frozen=True)
class Env:
    """What every run shares: the private Redis, the scratch directory, the states."""

    port: int
    workdir: Path
    states: Sequence[PersonalityState]


def run_one(config: Config, env: Env, library: str, workers: int) -> dict[str, Any]:
    """One library at one worker count, on an emptied Redis and a fresh database."""
    port, workdir, states = env.port, env.workdir, env.states
    label = f"{library}-{workers}"
    with redis.Redis(port=port) as raw, fresh_database(workdir, label) as db_url:
        raw.flushall()
        namespace = f"workload-{library}-{workers}"
        prefill(library, port, db_url, namespace, states)
        specs = [
            WorkerSpec(library, i, port, db_url, namespace, config.users, config.zipf_s,
                       config.update_share, config.warmup_s, config.duration_s,
                       config.seed + i, config.reservoir)
            for i in range(workers)
        ]  # fmt: skip
        stats = (lambda: shared_stats(port, namespace)) if library == "penny_cache" else None
        window = timed_window(specs, raw, stats)
    print(f"  {library} x{workers} done", file=sys.stderr, flush=True)
    return summarise_run(library, workers, window)


# -- figures ---------------------------------------------------------------------------


def percentile_us(ordered: Sequence[int], fraction: float) -> float:
    """Nearest-rank percentile of sorted ns samples, in us (nan when there are none)."""
    if not ordered:
        return float("nan")
    rank = max(1, -(-len(ordered) * fraction // 1))
    return ordered[int(rank) - 1] / 1000


def merged_counts(results: Sequence[WorkerResult]) -> dict[str, float]:
    out: dict[str, float] = {}
    for result in results:
        for key, value in result.counts.items():
            out[key] = out.get(key, 0.0) + value
    return out


def lag_figures(counts: Mapping[str, float]) -> dict[str, float] | None:
    """penny_cache's invalidation lag (publish in Redis -> applied here): count, mean
    and the upper bound of the histogram bucket holding the 99th percentile, in us."""
    count = counts.get("lag_count:", 0.0)
    if not count:
        return None
    buckets = sorted((float(k.split(":")[1]), v) for k, v in counts.items()
                     if k.startswith("lag_bucket:"))  # fmt: skip
    p99 = next(le for le, seen in buckets if seen >= 0.99 * count)
    return {"count": count, "mean_us": counts["lag_sum:"] / count * 1e6, "p99_bucket_us": p99 * 1e6}


def summarise_run(library: str, workers: int, window: Window) -> dict[str, Any]:
    """Throughput, latency percentiles, hit rate, SQL and Redis load of one run."""
    results, counts = window.results, merged_counts(window.results)
    reads, updates = sum(r.reads for r in results), sum(r.updates for r in results)
    read_ns = sorted(ns for r in results for ns in r.read_ns)
    update_ns = sorted(ns for r in results for ns in r.update_ns)
    lookups = window.shared or counts  # penny_cache: the shared counters, others: counted here
    hits, misses = lookups["hits"], lookups["misses"]
    local = {k: counts[k] for k in ("hits", "misses", "near_hits")}
    return {
        "library": library, "workers": workers, "reads": reads, "updates": updates,
        "elapsed_s": max(r.elapsed_s for r in results),
        "throughput": sum((r.reads + r.updates) / r.elapsed_s for r in results),
        "read_p50_us": percentile_us(read_ns, 0.5), "read_p99_us": percentile_us(read_ns, 0.99),
        "update_p50_us": percentile_us(update_ns, 0.5),
        "update_p99_us": percentile_us(update_ns, 0.99),
        "latency_samples": {"read": len(read_ns), "update": len(update_ns)},
        "update_time_share": sum(r.busy_s[1] for r in results) / sum(r.elapsed_s for r in results),
        "sql_commits_per_s": counts["sql_updates"] / max(r.elapsed_s for r in results),
        "hits": hits, "misses": misses, "hit_rate": hits / max(1.0, hits + misses),
        "near_hit_share": lookups["near_hits"] / max(1.0, hits),
        "counted_locally": local,
        "counters_agree": hits + misses == reads and window.shared in (None, local),
        "sql_loads": counts["sql_loads"], "sql_updates": counts["sql_updates"],
        "redis_errors": counts["redis_errors"],
        "redis_commands_per_request": (window.commands["total"] - window.commands.get("info", 0))
        / max(1, reads + updates),
        "command_mix_per_request": command_mix(window.commands, reads + updates),
        "stale_reads": sum(r.stale_reads for r in results),
        "checked_reads": sum(r.checked_reads for r in results),
        "invalidation_lag": lag_figures(counts),
    }  # fmt: skip


def command_mix(commands: Mapping[str, float], requests: int) -> dict[str, float]:
    """The six commands Redis ran most often per request (scripts' inner calls included)."""
    top = sorted(((v, k) for k, v in commands.items() if k not in ("total", "info") and v > 0),
                 reverse=True)[:6]  # fmt: skip
    return {k: round(v / max(1, requests), 4) for v, k in top}


def add_scaling(runs: Sequence[dict[str, Any]], cores: int) -> None:
    """Per library: speed-up over one worker, and efficiency per core, where N workers
    can at best use min(N, cores) cores (so 4 workers on 2 cores cannot pass 2x)."""
    single = {r["library"]: r["throughput"] for r in runs if r["workers"] == 1}
    for run in runs:
        run["speedup"] = run["throughput"] / single[run["library"]]
        run["efficiency_per_core"] = run["speedup"] / min(run["workers"], cores)


def peer_ratios(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each peer against penny_cache at the same worker count: >1 means the peer is
    faster (throughput) or slower (latencies)."""
    penny = {r["workers"]: r for r in runs if r["library"] == "penny_cache"}
    keys = ("throughput", "read_p50_us", "read_p99_us", "update_p50_us", "update_p99_us")
    return {
        f"{r['library']}/penny_cache@{r['workers']}": {
            k: r[k] / penny[r["workers"]][k] for k in keys
        }
        for r in runs
        if r["library"] != "penny_cache"
    }


@dataclass(frozen=True)
class Verdict:
    name: str
    label: str
    value: str
    passed: bool


def evaluate(runs: Sequence[dict[str, Any]], cores: int) -> list[Verdict]:
    """penny_cache's targets; the peers' figures are reported, not judged."""
    penny = [r for r in runs if r["library"] == "penny_cache"]
    hit = min(r["hit_rate"] for r in penny)
    stale = sum(r["stale_reads"] for r in penny)
    loads_ok = all(r["sql_loads"] <= r["misses"] for r in penny)
    loads = ", ".join(f"{r['sql_loads']:.0f}<={r['misses']:.0f}" for r in penny)
    out = [
        Verdict("hit_rate", f"hit rate >= {HIT_RATE_TARGET:.0%} (lowest over N)",
                f"{hit:.2%}", hit >= HIT_RATE_TARGET),
        Verdict("read_your_writes", "read-your-writes violations = 0", str(stale), stale == 0),
        Verdict("sql_loads_le_misses", "SQL loads <= misses (no duplicate loads)", loads,
                loads_ok),
    ]  # fmt: skip
    for r in penny:
        if 1 < r["workers"] <= cores:
            eff = r["efficiency_per_core"]
            out.append(Verdict(f"efficiency_{r['workers']}",
                               f"efficiency per core >= {EFFICIENCY_TARGET} at N={r['workers']}",
                               f"{eff:.2f}", eff >= EFFICIENCY_TARGET))  # fmt: skip
    return out


# -- the report ------------------------------------------------------------------------

_COLUMNS: Final = (
    ("library", "{library:<12}"), ("N", "{workers:>2}"), ("ops/s", "{throughput:>8.0f}"),
    ("x1", "{speedup:>5.2f}"), ("eff/core", "{efficiency_per_core:>8.2f}"),
    ("rd p50", "{read_p50_us:>7.1f}"), ("rd p99", "{read_p99_us:>7.0f}"),
    ("up p50", "{update_p50_us:>7.0f}"), ("up p99", "{update_p99_us:>7.0f}"),
    ("hit", "{hit_rate:>7.2%}"), ("near", "{near_hit_share:>6.1%}"),
    ("misses", "{misses:>7.0f}"), ("loads", "{sql_loads:>7.0f}"),
    ("cmd/req", "{redis_commands_per_request:>7.2f}"), ("RYW", "{stale_reads:>4}"),
    ("commit/s", "{sql_commits_per_s:>8.0f}"), ("in upd", "{update_time_share:>6.0%}"),
)  # fmt: skip


def render(report: Mapping[str, Any]) -> str:
    """The table (latencies in us), peer ratios, penny_cache's lag and the targets."""
    c = report["config"]
    lines = [f"{c['users']} users, Zipf s={c['zipf_s']}, {c['update_share']:.0%} updates; "
             f"{c['duration_s']} s timed per run after {c['warmup_s']} s warm-up; "
             f"cores available: {report['cores_available']}; SQL: {report['database']}",
             ""]  # fmt: skip
    widths = [len(spec.format(**report["runs"][0])) for _, spec in _COLUMNS]
    lines.append(" ".join(f"{h:>{w}}" for (h, _), w in zip(_COLUMNS, widths, strict=True)))
    lines.append("-" * len(lines[-1]))
    for run in report["runs"]:
        lines.append(" ".join(spec.format(**run) for _, spec in _COLUMNS))
    lines.append("\npeer / penny_cache at the same N   ops/s  rd p50  rd p99  up p50  up p99")
    for name, r in report["ratios"].items():
        lines.append(f"  {name:<32} {r['throughput']:6.2f}  {r['read_p50_us']:6.2f}  "
                     f"{r['read_p99_us']:6.2f}  {r['update_p50_us']:6.2f}  "
                     f"{r['update_p99_us']:6.2f}")  # fmt: skip
    for run in report["runs"]:
        if (lag := run["invalidation_lag"]) is not None:
            lines.append(f"penny_cache x{run['workers']}: {lag['count']:.0f} invalidations "
                         f"applied, lag mean {lag['mean_us']:.0f} us, "
                         f"p99 <= {lag['p99_bucket_us']:.0f} us")  # fmt: skip
    lines.append("")
    for v in report["verdicts"]:
        lines.append(f"{v['label']:<48} {v['value']:>20}  {'PASS' if v['passed'] else 'FAIL'}")
    lines.append(NOTES)
    return "\n".join(lines)


NOTES: Final = """
notes: hit = hits / (hits + misses) in the timed window (penny_cache: its shared
counters, delta over the window; peers: lookups that did not call the creator); near =
share of hits served in-process; loads = SQL reads; cmd/req = commands Redis executed
(INFO total_commands_processed, Lua scripts' inner calls, pub/sub and counter flushes
included) per request; RYW = reads older than the version the same worker had written
(warm-up included). Cross-process staleness is not measured here (see bench_near).
ops/s is a closed loop: with SQLite (one writer at a time, a sync per commit) the commit
rate bounds every library at 5 % updates; commit/s is SQL commits per second, in upd the
share of loop time spent inside updates, so update latencies compare at unequal load."""


def metadata(raw: redis.Redis, config: Config, cores: int) -> dict[str, Any]:
    """Enough context to compare two runs, or to see why they cannot be compared."""
    packages = ("redis", "hiredis", "SQLAlchemy", "msgspec", "dogpile.cache", "cashews")
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cores_available": cores,
        "python": platform.python_version(),
        "redis_server": str(raw.info("server")["redis_version"]),
        "packages": {name: package_version(name) for name in packages},
        "config": asdict(config),
    }


def version_zero_states(users: int, workdir: Path) -> list[PersonalityState]:
    """What SQL holds for a user never updated: read once, for every run's prefill."""
    store = PersonalityStore(f"sqlite:///{workdir}/scratch.db")
    try:
        return [store.load(user_id(rank)) for rank in range(users)]
    finally:
        store.close()


def run(config: Config) -> tuple[dict[str, Any], str]:
    """Every worker count, each library in turn at that count (so drift hits all alike)."""
    cores = cores_available()
    with tempfile.TemporaryDirectory(prefix="penny-workload-") as tmp, redis_server() as port:
        env = Env(port, Path(tmp), version_zero_states(config.users, Path(tmp)))
        runs = [run_one(config, env, library, n)
                for n in config.workers for library in LIBRARIES]  # fmt: skip
        with redis.Redis(port=port) as raw:
            report = metadata(raw, config, cores)
    add_scaling(runs, cores)
    verdicts = evaluate(runs, cores)
    report |= {
        "runs": runs,
        "ratios": peer_ratios(runs),
        "verdicts": [asdict(v) for v in verdicts],
        "all_passed": all(v.passed for v in verdicts),
        "cashews": "done",
        "database": database_kind(),
        "cross_process_staleness": "not measured (see bench_near)",
    }
    return report, render(report)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the report (and write JSON); 0 even when a target is missed."""
    return bench_main(argv, title="penny_cache workload benchmark", quick=QUICK, full=FULL, run=run)


if __name__ == "__main__":
    sys.exit(main())
