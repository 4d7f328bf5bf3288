"""``bench_http``'s moving parts: wrk (installed from Debian's packages by the setup),
its Lua script, and the HTTP servers under test, each a process group of its own.

wrk (https://github.com/wg/wrk) keeps its connections alive, so every figure is a
keep-alive figure; its Lua ``done`` hook prints the summary as JSON (requests, errors,
latency percentiles in microseconds), which is all this module reads from it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

__all__ = [
    "LUA",
    "Load",
    "Server",
    "cpu_seconds",
    "ensure_wrk",
    "fetch",
    "run_wrk",
    "serving",
    "wrk_version",
]

_READY_TIMEOUT: Final = 60.0

# One script for every scenario: ``get`` (the URL as given), ``miss`` (a user nobody
# asked for before: run prefix, thread, counter), ``put`` (50 users per thread, the
# value moving every request). Each wrk thread has its own Lua state; setup() numbers them.
LUA: Final = r"""
local threads = {}
function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end
local mode, prefix, counter = "get", "u", 0
function init(args)
  mode = args[1] or "get"
  prefix = args[2] or "u"
  tid = tid or 0
  if mode == "get" then
    request = nil -- a static request: wrk builds it once, no Lua call per request
  end
end
function request()
  counter = counter + 1
  if mode == "miss" then
    return wrk.format("GET", "/personality/" .. prefix .. "-" .. tid .. "-" .. counter)
  elseif mode == "put" then
    local user = prefix .. "-" .. tid .. "-" .. (counter % 50)
    local body = string.format('{"value": %.2f, "confidence": 0.5}', (counter % 100) / 100)
    return wrk.format("PUT", "/personality/" .. user .. "/dimensions/communication_formality",
                      {["Content-Type"] = "application/json"}, body)
  end
  return wrk.format("GET")
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"p999_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
"""


def ensure_wrk() -> str:
    """wrk's path; installs Debian's ``wrk`` package when missing and running as root,
    else stops with what to do (the benchmark never needs it installed by hand)."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SystemExit(
            "bench_http needs wrk, and cannot install it (not root, or no apt-get): "
            "install Debian's package (sudo apt-get install -y wrk) or put wrk on PATH"
        )
    print("installing wrk: apt-get install -y wrk", file=sys.stderr)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "wrk"]
    if subprocess.run(install, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=True)
        subprocess.run(install, env=env, check=True)
    found = shutil.which("wrk")
    if found is None:
        raise SystemExit("apt-get installed wrk, but it is not on PATH")
    return found


def wrk_version(wrk: str) -> str:
    out = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).split("\n", 1)[0].strip()


@dataclass(frozen=True)
class Load:
    """One wrk run's figures; latency in milliseconds."""

    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    errors: int  # connect, read, write errors and timeouts
    non_2xx: int  # wrk counts answers with status > 399
    cpu_s: float = 0.0  # CPU the measured processes used meanwhile (see cpu_seconds)


def run_wrk(
    wrk: str,
    url: str,
    *,
    connections: int,
    seconds: float,
    script: Path,
    args: tuple[str, ...],
    threads: int = 1,
) -> Load:
    """Drive ``url`` with ``connections`` keep-alive connections for ``seconds``, from
    ``threads`` wrk threads."""
    threads = min(connections, threads)
    whole = max(1, round(seconds))  # wrk takes whole seconds
    command = [wrk, f"-t{threads}", f"-c{connections}", f"-d{whole}s", "--timeout", "5s"]
    command += ["-s", str(script), url, "--", *args]
    out = subprocess.run(command, capture_output=True, text=True, check=False, timeout=whole + 60)
    lines = [x for x in out.stdout.splitlines() if x.startswith("WRK_JSON ")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(command)} failed: {out.stdout[-500:]} {out.stderr[-500:]}")
    line = lines[0]
    raw: dict[str, int] = json.loads(line.removeprefix("WRK_JSON "))
    duration = raw["duration_us"] / 1e6
    return Load(
        requests=raw["requests"],
        rps=round(raw["requests"] / duration, 1),
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        p999_ms=raw["p999_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        errors=raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
        non_2xx=raw["status"],
    )


@dataclass(frozen=True)
class Server:
    """A server under test: its base URL, how many workers it runs, its process group."""

    name: str
    url: str
    workers: int
    group: int = 0


_TICK: Final = os.sysconf("SC_CLK_TCK")


def cpu_seconds(groups: set[int]) -> float:
    """User + system CPU so far of every live process in the process ``groups`` (a
    server's supervisor and workers; redis-server, which runs in a session of its own)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended meanwhile
        if int(fields[2]) in groups:  # pgrp; fields[0] is the state (field 3 of stat)
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / _TICK


def _get(url: str, path: str) -> tuple[int, bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _wait_ready(server: Server, child: subprocess.Popen[bytes], path: str) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"{server.name} exited with status {child.returncode}")
        with contextlib.suppress(OSError):
            if _get(server.url, path)[0] == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{server.name} was not ready within {_READY_TIMEOUT:g} s")


@contextlib.contextmanager
def serving(
    server: Server, command: list[str], env: Mapping[str, str], ready_path: str
) -> Iterator[Server]:
    """Run ``command`` (its own process group) until the block ends."""
    child = subprocess.Popen(
        command, env={**os.environ, **env}, start_new_session=True, stdout=subprocess.DEVNULL
    )
    try:
        _wait_ready(server, child, ready_path)
        yield replace(server, group=child.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGTERM)
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait(timeout=5)


def fetch(server: Server, path: str) -> bytes:
    """One GET on a fresh connection; the body (raises unless 200)."""
    status, body = _get(server.url, path)
    if status != 200:
        raise RuntimeError(f"{server.name} {path} answered {status}")
    return body
