"""Read paths side by side with the peers, in one run: penny_cache against the floors
(cachebox, raw redis-py GET + decode, a direct SQL read), the original design (a
per-process dict) and what a user would pick instead (dogpile.cache, cashews with and
without its client-side cache), sync and asyncio; plus near-cache memory per entry.

Run ``python -m bench.bench_peers [--quick] [--json PATH]``: a private redis-server, a
throwaway SQLite file, a table, a PNG chart (``bench/peers.png``) and ratios against the
floors. redis-py's own client-side cache needs Redis >= 7.4 (and RESP3); it is reported
as skipped on an older server. Exit 0 even when a target is missed (a report, not a gate).
"""

from __future__ import annotations

import asyncio
import gc
import os
import statistics
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import redis

from bench.bench_foundation import metadata, redis_server
from bench.peer_memory import measure_memory
from bench.peer_rows import AsyncRow, Row, async_rows, fixture, sync_rows, warm
from bench.runner import bench_main

CHART: Final = Path(__file__).with_name("peers.png")
# (row, floor or peer, target): the row's median must be at most target x the other's
TARGETS: Final = (
    ("near_hit", "cachetools", 0.35),
    ("near_hit", "cachebox", 3.0),
    ("redis_hit", "raw_get", 1.15),
    ("a_redis_hit", "a_raw_get", 1.15),
    ("redis_hit", "dogpile_hit", 1.0),
    ("miss", "dogpile_miss", 1.0),
    ("a_redis_hit", "cashews", 1.0),
    ("a_near_hit", "cashews_csc", 1.0),
)


@dataclass(frozen=True)
class Config:
    mode: str
    rounds: int
    samples: int  # per row per round
    memory_users: int


QUICK: Final = Config("quick", 3, 30, 5_000)
FULL: Final = Config("full", 20, 100, 100_000)


def _time_sync(row: Row, samples: int) -> list[float]:
    """ns per call: one call per sample for network rows, a batch's mean otherwise."""
    clock, call, out = time.perf_counter_ns, row.call, []
    for _ in range(samples):
        if row.setup is not None:
            row.setup()
        start = clock()
        for _ in range(row.batch):
            call()
        out.append((clock() - start) / row.batch)
    return out


async def _time_async(row: AsyncRow, samples: int) -> list[float]:
    clock, call, out = time.perf_counter_ns, row.call, []
    for _ in range(samples):
        start = clock()
        for _ in range(row.batch):
            await call()
        out.append((clock() - start) / row.batch)
    return out


def measure_sync(rows: Sequence[Row], config: Config) -> dict[str, list[float]]:
    """Interleaved rounds, order rotated, the collector frozen while timing."""
    for row in rows:
        _time_sync(row, 20)
    result: dict[str, list[float]] = {row.name: [] for row in rows}
    gc.collect()
    gc.freeze()
    try:
        for r in range(config.rounds):
            for row in [*rows[r % len(rows) :], *rows[: r % len(rows)]]:
                result[row.name] += _time_sync(row, config.samples)
    finally:
        gc.unfreeze()
    return result


def measure_async(fx: Any, config: Config) -> tuple[dict[str, list[float]], dict[str, str]]:
    async def main() -> tuple[dict[str, list[float]], dict[str, str]]:
        owned: list[Any] = []
        rows = async_rows(fx, owned)
        try:
            await warm(rows)
            result: dict[str, list[float]] = {row.name: [] for row in rows}
            for r in range(config.rounds):
                for row in [*rows[r % len(rows) :], *rows[: r % len(rows)]]:
                    result[row.name] += await _time_async(row, config.samples)
            return result, {row.name: row.label for row in rows}
        finally:
            for thing in owned:
                await thing.aclose()

    return asyncio.run(main())


def summarise(samples: Mapping[str, list[float]]) -> dict[str, dict[str, float]]:
    out = {}
    for name, values in samples.items():
        ordered = sorted(values)
        p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
        out[name] = {"median_ns": statistics.median(ordered), "p99_ns": p99, "n": len(ordered)}
    return out


def verdicts(summary: Mapping[str, Mapping[str, float]]) -> list[dict[str, Any]]:
    results = []
    for row, other, target in TARGETS:
        if row not in summary or other not in summary:
            continue
        ratio = summary[row]["median_ns"] / summary[other]["median_ns"]
        results.append(
            {
                "row": row,
                "vs": other,
                "ratio": round(ratio, 3),
                "target": target,
                "pass": ratio <= target,
            }
        )
    return results


def client_side_cache_status(raw: redis.Redis) -> str:
    version = str(raw.info("server")["redis_version"])
    major, minor = (int(part) for part in version.split(".")[:2])
    if (major, minor) < (7, 4):
        return f"skipped: redis-py's client-side cache needs Redis >= 7.4 (server {version})"
    return "not measured: add a RESP3 client with cache_config to bench/peer_rows.py"


def render(
    summary: Mapping[str, Mapping[str, float]],
    labels: Mapping[str, str],
    checks: Sequence[Mapping[str, Any]],
    memory: Mapping[str, Any],
    csc: str,
) -> str:
    lines = [f"{'read path':<44}{'median':>12}{'p99':>12}"]
    for name, figures in summary.items():
        lines.append(
            f"{labels[name]:<44}{_us(figures['median_ns']):>12}{_us(figures['p99_ns']):>12}"
        )
    lines.append(f"{'redis-py client-side cache':<44}  {csc}")
    lines.append("")
    for check in checks:
        mark = "PASS" if check["pass"] else "FAIL"
        lines.append(
            f"{mark}  {labels[check['row']]} / {labels[check['vs']]}: "
            f"{check['ratio']:.2f}x (target <= {check['target']})"
        )
    lines.append("")
    lines.append(
        f"memory at {memory['users']:,} users: near cache {memory['near_bytes_per_entry']:.0f} "
        f"B/entry (RSS +{memory['near_rss_mb']:.1f} MiB); original dict "
        f"{memory['dict_bytes_per_entry']:.0f} B/entry; ratio {memory['ratio']:.2f}x"
    )
    return "\n".join(lines)


def _us(ns: float) -> str:
    return f"{ns / 1000:.3f} us"


def chart(summary: Mapping[str, Mapping[str, float]], labels: Mapping[str, str]) -> str:
    """A horizontal bar chart of medians (log scale); its path, or why it was not drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "not drawn: matplotlib is not installed (pip install '.[bench]')"
    names = sorted(summary, key=lambda n: summary[n]["median_ns"])
    figure, axes = plt.subplots(figsize=(9, 0.4 * len(names) + 1.5))
    colours = ["tab:blue" if "penny" in labels[n] else "tab:gray" for n in names]
    axes.barh(
        [labels[n] for n in names], [summary[n]["median_ns"] / 1000 for n in names], color=colours
    )
    axes.set_xscale("log")
    axes.set_xlabel("median per read, microseconds (log scale)")
    axes.set_title("Read paths, same machine, same run (blue: penny_cache)")
    figure.tight_layout()
    figure.savefig(CHART, dpi=110)
    plt.close(figure)
    return str(CHART)


def run(config: Config) -> tuple[dict[str, Any], str]:
    with (
        redis_server() as port,
        tempfile.TemporaryDirectory() as tmp,
        fixture(port, Path(tmp)) as fx,
    ):
        rows = sync_rows(fx)
        samples = measure_sync(rows, config)
        labels = {row.name: row.label for row in rows}
        async_samples, async_labels = measure_async(fx, config)
        samples.update(async_samples)
        labels.update(async_labels)
        summary = summarise(samples)
        checks = verdicts(summary)
        memory = measure_memory(fx.state, config.memory_users)
        csc = client_side_cache_status(fx.raw)
        report = metadata(fx.raw, config)  # type: ignore[arg-type]
        report["config"] = asdict(config)
        report.update(summary=summary, labels=labels, verdicts=checks, memory=memory)
        report["redis_py_client_side_cache"] = csc
        # a quick run (a smoke test) must not overwrite the committed chart
        report["chart"] = chart(summary, labels) if config.mode == "full" else "not drawn (quick)"
        report["pid"] = os.getpid()
        return report, render(summary, labels, checks, memory, csc)


def main(argv: Sequence[str] | None = None) -> int:
    return bench_main(
        argv, title="penny_cache read paths vs peers", quick=QUICK, full=FULL, run=run
    )


if __name__ == "__main__":
    raise SystemExit(main())
