"""HTTP benchmark: the service against bare FastAPI apps on the same server stack.

Why these baselines. Whatever a route does, the server stack (uvicorn on uvloop and
httptools, FastAPI, the ASGI middleware) costs the same, so the service's near-cache
``GET /personality/{user}`` is compared with a bare FastAPI route answering a constant
JSON document of the same size (the ceiling for any FastAPI route that returns JSON),
and with a bare route doing one redis-py ``GET`` + JSON decode (what a shared cache
without a near tier costs at best). Each bare app is started by the very uvicorn options
``penny-cache serve`` uses (``bench/http_bare.py``). The service answers a Redis hit
(near cache off), a miss (a user nobody asked for: SQL read + fill) and a ``PUT``.

wrk (Debian's package, installed by the setup when missing and running as root) drives
each route with keep-alive connections: 1 (latency), 16 and 64 (throughput); errors and
non-2xx answers are counted. All servers run in the same run, on one embedded
``redis-server`` and one SQLite file (plus PostgreSQL for writes and misses when
``PENNY_BENCH_DATABASE_URL`` is set). On a 2-core machine wrk competes with the servers
for the CPU, so absolute figures are low; the ratios are the result.

``python -m bench.bench_http [--quick] [--json PATH]``; the full run also writes its
section of ``bench/README.md`` and ``bench/http.png``. Exit 0 even when a target is
missed: it reports, it does not gate.
"""

from __future__ import annotations

import contextlib
import os
import platform
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any, Final

import redis

from bench.databases import database_kind, fresh_database
from bench.http_load import (
    LUA,
    Load,
    Server,
    cpu_seconds,
    ensure_wrk,
    fetch,
    run_wrk,
    serving,
    wrk_version,
)
from bench.http_report import render, update_readme, verdicts
from bench.runner import bench_main
from penny_cache.app.embedded import RedisServerProcess, free_port

USER: Final = "bench-user"
BARE_KEY: Final = "bench:bare"


@dataclass(frozen=True)
class Config:
    """What to measure: wrk seconds per cell, the connection and worker counts."""

    mode: str
    seconds: int  # per wrk run (wrk takes whole seconds)
    rounds: int  # runs per cell, interleaved; the cell reports the median-rps round
    connections: tuple[int, ...]
    workers: tuple[int, ...]
    soak_seconds: int
    soak_connections: int = 64
    warmup: int = 1
    wrk_threads: int = 2


QUICK: Final = Config("quick", 1, 1, connections=(1, 16), workers=(2,), soak_seconds=3)
FULL: Final = Config("full", 2, 3, connections=(1, 16, 64), workers=(2, 4), soak_seconds=30)


@dataclass(frozen=True)
class Scenario:
    """A route under load: which server answers it and what wrk sends."""

    name: str
    server: str  # "near", "redis" (near cache off), "bare", "postgresql"
    path: str
    lua: tuple[str, ...] = ("get",)


SCENARIOS: Final = (
    Scenario("near_hit", "near", f"/personality/{USER}"),
    Scenario("redis_hit", "redis", f"/personality/{USER}"),
    Scenario("miss", "near", "/", ("miss",)),
    Scenario("put", "near", "/", ("put",)),
    Scenario("bare_const", "bare", "/const"),
    Scenario("bare_const_bytes", "bare", "/const-bytes"),
    Scenario("bare_redis", "bare", "/redis"),
)
POSTGRES_SCENARIOS: Final = (
    Scenario("miss_postgresql", "postgresql", "/", ("miss",)),
    Scenario("put_postgresql", "postgresql", "/", ("put",)),
)


@dataclass
class Run:
    """One benchmark run's shared pieces and its results."""

    config: Config
    wrk: str
    script: Path
    workdir: Path
    redis_url: str
    redis_group: int
    cells: list[dict[str, Any]]
    soak: dict[str, Any] | None = None
    calls: int = 0

    def drive(self, server: Server, scenario: Scenario, connections: int, seconds: float) -> Load:
        # a prefix per call: a miss must never meet a user an earlier call created
        self.calls += 1
        prefix = f"{scenario.name}-w{server.workers}-c{connections}-{self.calls}"
        args = (*scenario.lua, prefix)
        url = server.url + scenario.path
        groups = {server.group, self.redis_group}
        before = cpu_seconds(groups)
        load = run_wrk(
            self.wrk,
            url,
            connections=connections,
            seconds=seconds,
            script=self.script,
            args=args,
            threads=self.config.wrk_threads,
        )
        return replace(load, cpu_s=cpu_seconds(groups) - before)


def _service(run: Run, name: str, workers: int, database_url: str, *, near: bool) -> Any:
    port = free_port()
    env = {
        "PENNY_REDIS_URL": run.redis_url,
        "PENNY_DATABASE_URL": database_url,
        "PENNY_NAMESPACE": f"bench-{name}-w{workers}",
        "PENNY_NEAR_CACHE": "on" if near else "off",
        # 2 vCPUs shared with wrk and up to 12 workers: at the 0.1 s default a starved
        # Redis reply trips the breaker and a "Redis hit" becomes a SQL read
        "PENNY_REDIS_TIMEOUT": "1.0",
    }
    command = [sys.executable, "-m", "penny_cache.app.cli", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", str(workers)]
    server = Server(name, f"http://127.0.0.1:{port}", workers)
    return serving(server, command, env, "/readyz")


def _bare(run: Run, workers: int, body: bytes) -> Any:
    body_file = run.workdir / "body.json"
    body_file.write_bytes(body)
    redis.Redis.from_url(run.redis_url).set(BARE_KEY, body)
    port = free_port()
    env = {"BENCH_BODY_FILE": str(body_file), "BENCH_REDIS_URL": run.redis_url}
    env["BENCH_REDIS_KEY"] = BARE_KEY
    command = [sys.executable, "-m", "bench.http_bare", "--port", str(port)]
    command += ["--workers", str(workers)]
    server = Server("bare", f"http://127.0.0.1:{port}", workers)
    return serving(server, command, env, "/healthz")


def _prepare(near: Server) -> bytes:
    """Commit one update for the benchmark's user; its answer is the bare routes' body."""
    import http.client

    host, port = near.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        body = b'{"value": 0.7, "confidence": 0.6, "context": "bench"}'
        headers = {"Content-Type": "application/json"}
        path = f"/personality/{USER}/dimensions/communication_formality"
        conn.request("PUT", path, body=body, headers=headers)
        response = conn.getresponse()
        answer = response.read()
        if response.status != 200:
            raise RuntimeError(f"the setup PUT answered {response.status}: {answer[:200]!r}")
    finally:
        conn.close()
    return fetch(near, f"/personality/{USER}")


def _measure(run: Run, servers: dict[str, Server], scenarios: Sequence[Scenario]) -> None:
    """Warm each route up, then rounds of every connection count, routes interleaved
    (so a noisy second hits them alike); a cell is its median-rps round."""
    config = run.config
    for scenario in scenarios:
        run.drive(servers[scenario.server], scenario, 16, config.warmup)
    rounds: dict[tuple[Scenario, int], list[Load]] = {}
    for _ in range(config.rounds):
        for connections in config.connections:
            for scenario in scenarios:
                load = run.drive(servers[scenario.server], scenario, connections, config.seconds)
                rounds.setdefault((scenario, connections), []).append(load)
    for (scenario, connections), loads in rounds.items():
        workers = servers[scenario.server].workers
        run.cells.append(_cell(workers, scenario.name, connections, loads))
        print(f"  {_line(run.cells[-1])}", file=sys.stderr)


def _cell(workers: int, scenario: str, connections: int, loads: list[Load]) -> dict[str, Any]:
    median = sorted(loads, key=lambda load: load.rps)[len(loads) // 2]
    return {
        "workers": workers,
        "scenario": scenario,
        "connections": connections,
        **asdict(median),
        "requests": sum(load.requests for load in loads),
        "errors": sum(load.errors for load in loads),
        "non_2xx": sum(load.non_2xx for load in loads),
        "cpu_us_per_request": round(
            sum(load.cpu_s for load in loads) / max(1, sum(load.requests for load in loads)) * 1e6,
            1,
        ),
        "rounds_rps": [load.rps for load in loads],
    }


def _line(cell: dict[str, Any]) -> str:
    return (
        f"w{cell['workers']} c{cell['connections']:<3} {cell['scenario']:<17} "
        f"{cell['rps']:>9.0f} req/s  p50 {cell['p50_ms']:.2f}  p99 {cell['p99_ms']:.2f} ms  "
        f"errors {cell['errors']} non-2xx {cell['non_2xx']}"
    )


def _per_workers(run: Run, workers: int, database_url: str) -> None:
    with contextlib.ExitStack() as stack:
        near = stack.enter_context(_service(run, "near", workers, database_url, near=True))
        plain = stack.enter_context(_service(run, "redis", workers, database_url, near=False))
        body = _prepare(near)
        bare = stack.enter_context(_bare(run, workers, body))
        servers = {"near": near, "redis": plain, "bare": bare}
        _measure(run, servers, SCENARIOS)
        if workers == max(run.config.workers):
            _soak(run, near)


def _soak(run: Run, near: Server) -> None:
    config = run.config
    scenario = SCENARIOS[0]
    load = run.drive(near, scenario, config.soak_connections, config.soak_seconds)
    run.soak = {
        "workers": near.workers,
        "scenario": scenario.name,
        "connections": config.soak_connections,
        "seconds": config.soak_seconds,
        **asdict(load),
    }
    print(f"  soak {_line(run.soak)}", file=sys.stderr)


def _postgres(run: Run) -> None:
    workers = min(run.config.workers)
    with (
        fresh_database(run.workdir, "http") as url,
        _service(run, "postgresql", workers, url, near=True) as server,
    ):
        _measure(run, {"postgresql": server}, POSTGRES_SCENARIOS)


@contextlib.contextmanager
def _redis() -> Iterator[RedisServerProcess]:
    server = RedisServerProcess().start()
    try:
        yield server
    finally:
        server.stop()


def metadata(run: Run, redis_version: str) -> dict[str, Any]:
    packages = ("uvicorn", "uvloop", "httptools", "fastapi", "starlette", "msgspec", "redis")
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "redis_server": redis_version,
        "wrk": wrk_version(run.wrk),
        **{name: package_version(name) for name in packages},
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],  # others on the VM
        "database": database_kind(),
        "config": asdict(run.config),
    }


def run(config: Config) -> tuple[dict[str, Any], str]:
    wrk = ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="penny-bench-http-") as tmp, _redis() as server:
        script = Path(tmp, "bench.lua")
        script.write_text(LUA)
        # redis-server runs in a session of its own: its pid is its process group
        redis_pid = int(redis.Redis.from_url(server.url).info("server")["process_id"])
        bench = Run(config, wrk, script, Path(tmp), server.url, redis_pid, [])
        for workers in config.workers:
            print(f"{workers} workers", file=sys.stderr)
            _per_workers(bench, workers, f"sqlite:///{tmp}/http.db")
        if database_kind() == "postgresql":
            _postgres(bench)
        report = metadata(bench, server.version())
    report.update(cells=bench.cells, soak=bench.soak)
    report["verdicts"] = verdicts(bench.cells, bench.soak, config)
    text = render(report)
    if config.mode == "full":
        report["readme"] = update_readme(report, text)
    return report, text


def main(argv: Sequence[str] | None = None) -> int:
    footer: Callable[[dict[str, Any]], str] = lambda r: f"wrk {r['wrk']}  "  # noqa: E731
    return bench_main(argv, title="HTTP benchmark", quick=QUICK, full=FULL, run=run, footer=footer)


if __name__ == "__main__":
    sys.exit(main())
