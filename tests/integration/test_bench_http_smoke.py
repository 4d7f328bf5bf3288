"""`make bench-quick` keeps working for the HTTP benchmark: its quick run, checked for
shape and for errors, never for speed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import unavailable
from tests.integration.test_bench_smoke import run_quick

pytestmark = pytest.mark.integration

ROUTES = {
    "near_hit",
    "redis_hit",
    "miss",
    "put",
    "bare_const",
    "bare_const_bytes",
    "bare_redis",
}


def test_quick_http_benchmark_measures_every_route_without_errors(tmp_path: Path) -> None:
    """The quick run measures every route (service and bare) at 1 and 16 keep-alive
    connections, runs the 64-connection soak, states every target, and no request of
    any run failed or answered non-2xx (wrk's own count)."""
    if shutil.which("wrk") is None and os.geteuid() != 0:
        unavailable("bench_http needs wrk, and only root may let it install Debian's wrk")
    report = run_quick("bench_http", tmp_path)
    measured = {(cell["scenario"], cell["connections"]) for cell in report["cells"]}
    assert {(route, conns) for route in ROUTES for conns in (1, 16)} <= measured
    assert all(cell["requests"] > 0 for cell in report["cells"])
    assert report["soak"]["connections"] == 64
    assert all(cell["errors"] == 0 and cell["non_2xx"] == 0 for cell in report["cells"])
    assert report["soak"]["errors"] == 0 and report["soak"]["non_2xx"] == 0
    assert len(report["verdicts"]) >= 6
