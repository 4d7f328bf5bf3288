"""`make bench-quick` keeps working: a smoke run, checked for shape, never for speed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import unavailable

pytestmark = pytest.mark.integration


def test_quick_benchmark_runs_and_its_counters_add_up(tmp_path: Path) -> None:
    """The quick benchmark exits 0, writes every ratio, and its self-check of the cache's
    counters (one hit per timed hit, one miss per timed miss) holds."""
    if shutil.which("redis-server") is None:
        unavailable("the benchmark starts its own redis-server, and none is installed")
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.bench_foundation", "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["counters_check"]["ok"] is True
    assert set(report["ratios"]) == {"hit_vs_raw", "miss_vs_budget"}
    assert all(ratio > 0 for ratio in report["ratios"].values())


def test_quick_peer_benchmark_measures_every_row(tmp_path: Path) -> None:
    """The peers benchmark's quick run exits 0 and reports every read path, penny_cache's
    and the peers', with a ratio for every target and the memory figures."""
    if shutil.which("redis-server") is None:
        unavailable("the benchmark starts its own redis-server, and none is installed")
    out = tmp_path / "peers.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.bench_peers", "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert {"near_hit", "redis_hit", "miss", "dogpile_hit", "cashews", "a_redis_hit"} <= set(
        report["summary"]
    )
    assert len(report["verdicts"]) == 8
    assert report["memory"]["near_bytes_per_entry"] > 0
