"""`make bench-quick` keeps working: each benchmark's quick run, checked for shape, never
for speed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import unavailable

pytestmark = pytest.mark.integration

LIBRARIES = {"penny_cache", "dogpile", "cashews"}


def run_quick(module: str, tmp_path: Path, timeout: float = 300) -> dict[str, Any]:
    """Run ``python -m bench.<module> --quick`` and return the JSON report it wrote."""
    if shutil.which("redis-server") is None:
        unavailable("the benchmark starts its own redis-server, and none is installed")
    out = tmp_path / f"{module}.json"
    result = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report: dict[str, Any] = json.loads(out.read_text())
    for key in ("date", "platform", "cpu_count", "python", "redis_server"):
        assert key in report
    return report


def test_quick_benchmark_runs_and_its_counters_add_up(tmp_path: Path) -> None:
    """The quick benchmark exits 0, writes every ratio, and its self-check of the cache's
    counters (one hit per timed hit, one miss per timed miss) holds."""
    report = run_quick("bench_foundation", tmp_path)
    assert report["counters_check"]["ok"] is True
    assert set(report["ratios"]) == {"hit_vs_raw", "miss_vs_budget"}
    assert all(ratio > 0 for ratio in report["ratios"].values())


def test_quick_peer_benchmark_measures_every_row(tmp_path: Path) -> None:
    """The peers benchmark's quick run reports every read path, penny_cache's and the
    peers', with a ratio for every target and the memory figures."""
    report = run_quick("bench_peers", tmp_path)
    assert {"near_hit", "redis_hit", "miss", "dogpile_hit", "cashews", "a_redis_hit"} <= set(
        report["summary"]
    )
    assert len(report["verdicts"]) == 8
    assert report["memory"]["near_bytes_per_entry"] > 0


def test_quick_workload_runs_every_library_and_its_counters_add_up(tmp_path: Path) -> None:
    """Every library runs at every worker count, penny_cache's shared counters match what
    its workers counted, and the report carries what a reader needs to compare runs."""
    report = run_quick("bench_workload", tmp_path, timeout=110)
    runs = report["runs"]
    expected = {(library, n) for library in LIBRARIES for n in (1, 2)}
    assert {(r["library"], r["workers"]) for r in runs} == expected
    for run in runs:
        assert run["reads"] > 0 and run["updates"] > 0 and run["throughput"] > 0
        assert run["counters_agree"] is True, run
        assert 0.0 <= run["hit_rate"] <= 1.0
    assert {v["name"] for v in report["verdicts"]} >= {"hit_rate", "read_your_writes"}
    assert len(report["ratios"]) == 4


def test_quick_stats_benchmark_reports_the_ratio(tmp_path: Path) -> None:
    """The get_stats() benchmark's quick run fills its own redis-server, checks the
    drop-in's counters and size, and reports get_stats() against a bare HGETALL."""
    report = run_quick("bench_stats", tmp_path)
    assert report["keys_in_redis"] >= 30_000
    assert report["ratios"]["get_stats_vs_hgetall"] > 0
    assert set(report["operations"]) == {"get_stats", "hgetall", "scan_count"}


def test_quick_strict_benchmark_reports_both_modes_and_their_ratios(tmp_path: Path) -> None:
    """The strict-mode benchmark's quick run exits 0 and reports both write modes, with
    strict making exactly one Redis round trip per update more than available."""
    report = run_quick("bench_strict", tmp_path)
    modes = report["modes"]
    assert set(modes) == {"available", "strict"}
    extra = modes["strict"]["round_trips_per_update"] - modes["available"]["round_trips_per_update"]
    assert extra == 1
    assert set(report["ratios_strict_vs_available"]) == {"p50", "p99", "round_trips"}


def test_quick_bound_benchmark_reports_every_path_and_the_sweep_rates(tmp_path: Path) -> None:
    """The staleness-bound benchmark's quick run exits 0, times every read path it names
    (gate on and off, token or not, the floor), and counts the SQL an idle sweep makes
    (more than nothing: the due-rows query always runs)."""
    report = run_quick("bench_bound", tmp_path)
    assert len(report["reads_ns_per_call"]) == 5
    assert all(ns > 0 for ns in report["reads_ns_per_call"].values())
    assert report["outbox_sql_statements_per_second"]["old default interval (5 s)"] > 0


def test_quick_sign_benchmark_reports_both_hits_and_their_ratio(tmp_path: Path) -> None:
    """The value-key benchmark's quick run exits 0, times the Redis hit with and without
    ``PENNY_VALUE_KEY`` (its own check: every timed read a hit, no integrity failure), and
    reports their ratio and the HMAC's own cost."""
    report = run_quick("bench_sign", tmp_path)
    assert set(report["operations"]) == {"unsigned", "signed"}
    assert report["ratios"]["signed_vs_unsigned_hit"] > 0
    assert report["crypto"]["signed_bytes"] - report["crypto"]["envelope_bytes"] == 73
