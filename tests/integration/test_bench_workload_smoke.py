"""The workload benchmark's ``--quick`` run keeps working: checked for shape, never speed."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import unavailable

pytestmark = pytest.mark.integration

LIBRARIES = {"penny_cache", "dogpile", "cashews"}


def test_quick_workload_runs_every_library_and_its_counters_add_up(tmp_path: Path) -> None:
    """Every library runs at every worker count, penny_cache's shared counters match what
    its workers counted, and the report carries what a reader needs to compare runs."""
    if shutil.which("redis-server") is None:
        unavailable("the benchmark starts its own redis-server, and none is installed")
    out = tmp_path / "workload.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.bench_workload", "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    for key in ("date", "platform", "cpu_count", "python", "redis_server", "verdicts"):
        assert key in report
    runs = report["runs"]
    assert {(r["library"], r["workers"]) for r in runs} == {(lib, n) for lib in LIBRARIES
                                                             for n in (1, 2)}  # fmt: skip
    for run in runs:
        assert run["reads"] > 0 and run["updates"] > 0 and run["throughput"] > 0
        assert run["counters_agree"] is True, run
        assert 0.0 <= run["hit_rate"] <= 1.0
    assert {v["name"] for v in report["verdicts"]} >= {"hit_rate", "read_your_writes"}
    assert len(report["ratios"]) == 4
