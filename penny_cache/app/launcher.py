"""``penny-cache serve`` and ``penny-cache run`` (the ``make run`` stack).

``serve`` hands the app to uvicorn with several worker processes; each worker builds its
own tracker from ``PENNY_*`` variables, and ``PROMETHEUS_MULTIPROC_DIR`` (made here when
unset) lets any worker's ``/metrics`` answer for all of them.

``run`` is what a newcomer sees first: Redis (embedded unless configured), the service on
several workers and the exporter as child processes, then a short self-check over HTTP
that shows the workers sharing one cache, then the URLs to ``curl`` until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from penny_cache.app.embedded import embedded_redis, free_port
from penny_cache.config import Settings, redact_url
from penny_cache.errors import ConfigurationError, InvalidInputError
from penny_cache.store.database import PersonalityStore

__all__ = [
    "SERVER_STACK",
    "StackOptions",
    "cannot_listen",
    "listen_description",
    "run_stack",
    "serve",
    "server_options",
]

# uvicorn's event loop and HTTP parser, named explicitly: a missing ``[service]`` extra
# fails at start instead of falling back to asyncio + h11. The asyncio loop leaves Nagle's
# algorithm on for connections accepted from the socket uvicorn binds for ``--workers``
# (proto 0), and each response goes out in two writes (headers, body), so a keep-alive
# client waited ~40 ms (its delayed ACK) per request; uvloop sets TCP_NODELAY on every
# TCP connection (Kludex/uvicorn#3149). See docs/http.md, "Server stack".
SERVER_STACK: Final[Mapping[str, str]] = MappingProxyType({"loop": "uvloop", "http": "httptools"})

_EVERY_INTERFACE: Final = frozenset({"0.0.0.0", "::"})  # noqa: S104 - named, not bound
_READY_TIMEOUT = 60.0
_SELF_CHECK_USERS = 20
_SELF_CHECK_READS = 200


def serve(settings: Settings, host: str, port: int, workers: int) -> int:
    """Run the HTTP service until interrupted (uvicorn, ``workers`` processes); 1 at once,
    with one line naming the port, when it cannot listen there."""
    import uvicorn

    require_usable_database(settings.database_url)
    refused = cannot_listen(host, port)
    if refused is not None:
        print(f"penny-cache: {refused}", file=sys.stderr, flush=True)
        return 1

    made_dir = None
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        # prometheus_client's rule: wipe the directory between runs. A restarted
        # container keeps its emptyDir, and new workers may reuse old pids.
        for stale in Path(given).glob("*.db"):
            stale.unlink(missing_ok=True)
    else:
        made_dir = tempfile.mkdtemp(prefix="penny-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = made_dir
    print(f"service          http://{host}:{port}/ ({workers} workers)", flush=True)
    print(f"listening on     {listen_description(host, port)}", flush=True)
    print(f"redis            {_where_redis(settings)}, namespace {settings.namespace}", flush=True)
    try:
        uvicorn.run("penny_cache.app.service:app_from_env", **server_options(host, port, workers))
    finally:
        if made_dir is not None:
            shutil.rmtree(made_dir, ignore_errors=True)
    return 0


def cannot_listen(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (taken, not an address of this machine,
    a privileged port), else None. uvicorn would find out too, after the workers' start,
    with a message that (for ``--workers`` above 1) names no port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"port {port} is already in use on {host}: stop its listener or pass --port"
            return f"cannot listen on {host} port {port}: {exc.strerror or exc}"
    return None


def listen_description(host: str, port: int) -> str:
    """Where the service answers, in words: 0.0.0.0 is every interface, not one."""
    if host in _EVERY_INTERFACE:
        return f"{host}:{port}, every interface (--host 127.0.0.1: this machine only)"
    return f"{host}:{port}"


def require_usable_database(url: str) -> None:
    """A URL SQLAlchemy cannot use (an unknown dialect) fails here, once, as one line,
    instead of as a traceback in every worker. Nothing connects."""
    try:
        PersonalityStore(url).close()
    except InvalidInputError as exc:
        raise ConfigurationError(f"PENNY_DATABASE_URL: {exc}") from None


def server_options(host: str, port: int, workers: int) -> dict[str, Any]:
    """The keyword arguments ``serve`` gives uvicorn (with the app factory's path), on
    the ``SERVER_STACK``; a test builds a ``uvicorn.Config`` from them."""
    return {
        "factory": True,
        "host": host,
        "port": port,
        "workers": workers,
        "timeout_graceful_shutdown": 5,
        "log_level": "warning",
        **SERVER_STACK,
    }


def _where_redis(settings: Settings) -> str:
    if settings.redis_topology == "sentinel":
        nodes = ",".join(f"{h}:{p}" for h, p in settings.redis_sentinels)
        return f"sentinel {nodes} master {settings.redis_master_name}"
    return f"{settings.redis_topology} {redact_url(settings.redis_url)}"


@dataclass(frozen=True)
class StackOptions:
    """What ``penny-cache run`` starts."""

    workers: int = 4
    duration: float | None = None  # None: until Ctrl-C
    host: str = "127.0.0.1"


@dataclass
class _Stack:
    settings: Settings
    http_port: int
    exporter_port: int
    environ: dict[str, str]
    children: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"


def _stop_on_signals() -> None:
    """Ctrl-C, SIGTERM and SIGHUP all unwind the stack, which stops every child: the
    children run in sessions of their own, and a shell that started us in the background
    may have told us to ignore SIGINT."""

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)


def run_stack(options: StackOptions, environ: dict[str, str]) -> int:
    """The ``make run`` job; exit status 0 when the self-check passed (130 if stopped
    before it finished)."""
    _stop_on_signals()
    try:
        return _run_stack(options, environ)
    except KeyboardInterrupt:
        print("stopped", flush=True)
        return 130


def _run_stack(options: StackOptions, environ: dict[str, str]) -> int:
    with contextlib.ExitStack() as resources:
        tmp = resources.enter_context(tempfile.TemporaryDirectory(prefix="penny-run-"))
        env = dict(environ)
        env.setdefault("PENNY_DATABASE_URL", f"sqlite:///{Path(tmp, 'penny.db')}")
        configured = any(env.get(k) for k in ("PENNY_REDIS_URL", "PENNY_REDIS_SENTINELS"))
        if not configured:
            redis = resources.enter_context(embedded_redis())
            env["PENNY_REDIS_URL"] = redis.url
            env.setdefault("PENNY_REDIS_TIMEOUT", str(redis.timeout))
            print(f"redis            {redis.description}; set PENNY_REDIS_URL to use yours")
        settings = Settings.from_env(env)
        require_usable_database(settings.database_url)
        stack = _Stack(
            settings,
            _port_or_free(options.host, settings.http_port),
            _port_or_free(options.host, settings.exporter_port),
            env,
        )
        resources.callback(_stop_children, stack.children)
        _start_children(stack, options)
        ok = _self_check(stack, fresh=not configured)
        _print_urls(stack)
        _wait(stack, options.duration)
        return 0 if ok else 1
    return 1  # pragma: no cover  (ExitStack does not swallow exceptions)


def _port_or_free(host: str, wanted: int) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, wanted))
        except OSError:
            port = free_port()
            print(f"port {wanted} is taken; using {port}")
            return port
    return wanted


def _start_children(stack: _Stack, options: StackOptions) -> None:
    cli = [sys.executable, "-m", "penny_cache.app.cli"]
    print(f"database         {stack.environ['PENNY_DATABASE_URL']}")
    serve_args = ["serve", "--host", options.host, "--port", str(stack.http_port)]
    serve_args += ["--workers", str(options.workers)]
    exporter_args = ["exporter", "--host", options.host, "--port", str(stack.exporter_port)]
    print(f"starting         the service ({options.workers} workers) and the exporter ...")
    for args in (serve_args, exporter_args):
        stack.children.append(
            # our own interpreter and fixed arguments: nothing untrusted reaches the command
            subprocess.Popen([*cli, *args], env=stack.environ, start_new_session=True)  # noqa: S603
        )
    _wait_ready(stack, options.workers)


def _wait_ready(stack: _Stack, workers: int) -> None:
    """Until the exporter and every service worker (told apart by ``X-Penny-Worker``)
    have answered: a worker still starting would otherwise leave the self-check's reads
    to the others."""
    deadline = time.monotonic() + _READY_TIMEOUT
    ready: set[str] = set()
    while time.monotonic() < deadline:
        for child in stack.children:
            if child.poll() is not None:
                raise RuntimeError(f"{child.args!r} exited with status {child.returncode}")
        with contextlib.suppress(OSError):
            status, _, worker = _request(stack.http_port, "GET", "/readyz")
            if status == 200:
                ready.add(worker)
        if len(ready) >= workers and _status(stack.exporter_port, "/"):
            return
        time.sleep(0.01 if ready else 0.1)
    raise TimeoutError(f"the service was not ready within {_READY_TIMEOUT:g} s")


def _request(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any, str]:
    """One request on a new connection (so the kernel may hand it to any worker)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        payload = None if body is None else json.dumps(body)
        headers = {"Content-Type": "application/json"} if payload else {}
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        worker = response.getheader("X-Penny-Worker") or ""
        content = json.loads(raw) if raw.startswith((b"{", b"[")) else raw.decode()
        return response.status, content, worker
    finally:
        conn.close()


def _status(port: int, path: str) -> int:
    try:
        return _request(port, "GET", path)[0]
    except OSError:
        return 0


def _self_check(stack: _Stack, *, fresh: bool) -> bool:
    """Reads across workers, one update, the update seen by every worker, exact counts."""
    port = stack.http_port
    workers: set[str] = set()
    for i in range(_SELF_CHECK_READS):
        status, _, worker = _request(port, "GET", f"/personality/user-{i % _SELF_CHECK_USERS}")
        if status != 200:
            print(f"self-check: GET answered {status}")
            return False
        workers.add(worker)
    path = "/personality/user-0/dimensions/communication_formality"
    status, body, _ = _request(port, "PUT", path, {"value": 0.8, "confidence": 0.6})
    if status != 200:
        print(f"self-check: PUT answered {status}: {body}")
        return False
    after = _reads_after_update(port, body["version"], workers, stack.settings.max_staleness)
    counted = _counted_requests(stack, _SELF_CHECK_READS + after.reads, exact=fresh)
    print(f"self-check       {_SELF_CHECK_READS} reads answered by {len(workers)} workers;")
    print(f"                 the update (version {body['version']}) was read back by all of them")
    if after.converging:
        print(
            f"                 {after.converging} reads within PENNY_MAX_STALENESS "
            "still showed the version before (allowed: other workers learn of an "
            "update from Redis, typically within a millisecond)"
        )
    print(f"                 {after.stale} stale reads; shared counters: {counted}")
    return after.stale == 0 and not counted.startswith("MISMATCH")


@dataclass(frozen=True)
class _AfterUpdate:
    reads: int  # reads made after the update returned
    stale: int  # older answers that break the guarantee (see _reads_after_update)
    converging: int  # older answers it allows: within the staleness bound, before that
    # worker had shown the update


def _reads_after_update(port: int, version: int, workers: set[str], bound: float) -> _AfterUpdate:
    """Read user-0 until every worker has answered twice with ``version`` (or 10 s).
    An older answer is stale (docs/how-it-works.md's bounded staleness broken) when the read
    started more than ``bound`` seconds after the update returned, or after the same
    worker had already answered ``version``."""
    updated = time.monotonic()
    current: dict[str, int] = {}
    stale = converging = reads = 0
    deadline = updated + 10
    while any(current.get(w, 0) < 2 for w in workers) and time.monotonic() < deadline:
        started = time.monotonic()
        _, body, worker = _request(port, "GET", "/personality/user-0")
        reads += 1
        if body["version"] >= version:
            current[worker] = current.get(worker, 0) + 1
        elif started - updated > bound or current.get(worker):
            stale += 1
        else:
            converging += 1
    return _AfterUpdate(reads, stale, converging)


def _counted_requests(stack: _Stack, made: int, *, exact: bool) -> str:
    """Wait (with a deadline) for the exporter to count the self-check's lookups: all of
    them on a fresh Redis (``exact``), at least them on a shared one."""
    deadline = time.monotonic() + 10
    total = -1
    while time.monotonic() < deadline:
        _, text, _ = _request(stack.exporter_port, "GET", "/metrics")
        match = re.search(r"^penny_cache_requests_total\{[^}]*\} (\S+)$", str(text), re.M)
        total = int(float(match.group(1))) if match else -1
        if total == made or (not exact and total >= made):
            return f"{'exact' if exact else 'ok'}: {made} lookups made, {total} counted in Redis"
        time.sleep(0.2)
    return f"MISMATCH: {made} lookups made, {total} counted in Redis"


def _print_urls(stack: _Stack) -> None:
    """Only URLs that answer 200 (``/`` of the service is its landing page)."""
    api = stack.url()
    exporter = f"http://127.0.0.1:{stack.exporter_port}"
    print()
    print(f"service          {api}/  (API docs: {api}/docs; {api}/healthz, {api}/readyz)")
    print(f"                 {api}/metrics  (this host's workers, Prometheus format)")
    print(f"exporter         {exporter}/  (live chart: hit ratio, request rate, last 15 min)")
    print(f"                 {exporter}/metrics  (the shared counters of all processes)")
    print("try:")
    print(f"  curl -s {api}/personality/alice")
    print(
        f"  curl -s -X PUT {api}/personality/alice/dimensions/communication_formality "
        "-H 'Content-Type: application/json' -d '{\"value\": 0.9, \"confidence\": 0.7}'"
    )
    redis = redact_url(stack.settings.redis_url)
    print(f"  PENNY_REDIS_URL={redis} .venv/bin/penny-cache stats")
    print("Ctrl-C stops everything.", flush=True)


def _wait(stack: _Stack, duration: float | None) -> None:
    deadline = None if duration is None else time.monotonic() + duration
    try:
        while deadline is None or time.monotonic() < deadline:
            if any(child.poll() is not None for child in stack.children):
                print("a child process exited; stopping")
                return
            time.sleep(0.2)
    except KeyboardInterrupt:
        print()


def _stop_children(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGTERM)
    for child in children:
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait(timeout=5)
