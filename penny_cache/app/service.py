"""The Penny personality HTTP service (FastAPI): its routes, wiring and middleware.

Each uvicorn worker process builds its own tracker (async cache + SQL store) at start, so
workers share state only through Redis: one cache, one hit rate, one invalidation
channel. Errors are mapped once, in ``penny_cache.app.problems``: bad input is a 4xx
naming what is wrong, an unreachable database a 503 naming nothing else, any other
failure a 500 with an error id; Redis trouble never reaches a response (SQL answers)
except an update strict mode refuses.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from penny_cache import AsyncPersonalityCache, AsyncPersonalityTracker, __version__
from penny_cache.app.edge import (
    JSON_REQUIRED,
    install_pages,
    needs_json_content_type,
    undecodable_path,
)
from penny_cache.app.problems import MAX_BODY_BYTES, install_error_handlers, problem, responses
from penny_cache.app.schema import (
    NO_SHARED_TOTALS,
    CacheBlock,
    DimensionUpdate,
    MinVersion,
    PersonalityView,
    UserId,
    acceptable_user_id,
    cache_block,
    encode_personality,
    plain_min_version,
)
from penny_cache.catalogue import Catalogue, load_catalogue
from penny_cache.config import Settings
from penny_cache.errors import (
    ConfigurationError,
    StoreError,
)
from penny_cache.observe.metrics import for_worker, worker_identity
from penny_cache.state import PersonalityState
from penny_cache.store.database import PersonalityStore

__all__ = ["MAX_BODY_BYTES", "STATS_MAX_AGE", "app_from_env", "create_app"]

STATS_MAX_AGE: Final = 1.0  # seconds between a worker's reads of the shared totals
PROCESS_METRICS_INTERVAL: Final = 5.0  # seconds between a worker's reads of /proc/self

_log = logging.getLogger(__name__)


_acceptable_user_id = acceptable_user_id  # its earlier name (tests import it)
_ETAG_DOC: Final = {
    "headers": {
        "ETag": {
            "description": 'the committed version, quoted ("7"): pass it as min_version',
            "schema": {"type": "string"},
        }
    }
}
_NOT_READY: Final = (
    "not ready: the database is unreachable, Redis refuses this process's counters, or "
    "(PENNY_WRITE_MODE=strict) Redis is unreachable"
)
_PERSONALITY: Final = "/personality/"
_JSON: Final = (b"content-type", b"application/json")


@dataclass(slots=True)
class _Stats:
    """The shared totals as this worker last read them. A request never waits for Redis:
    it takes the last value and, when that read started ``STATS_MAX_AGE`` or more ago,
    starts the next read in the background (so at most one read per second per worker,
    none while idle). Until the first read lands the block is zeros with
    ``shared=False``; the lifespan waits for one read before serving."""

    read: Callable[[], Awaitable[dict[str, Any]]]
    monotonic: Callable[[], float]
    value: CacheBlock = NO_SHARED_TOTALS
    read_at: float = float("-inf")
    task: asyncio.Task[None] | None = None

    def current(self) -> CacheBlock:
        """The last value read; starts a background reread when it is due."""
        if self.task is None and self.monotonic() - self.read_at >= STATS_MAX_AGE:
            self.read_at = self.monotonic()
            self.task = asyncio.get_running_loop().create_task(self.refresh())
        return self.value

    async def refresh(self) -> None:
        """One read of the shared totals (failures keep the last value)."""
        try:
            self.value = cache_block(await self.read())
        except Exception as exc:  # the background must not die, nor spam: one line
            _log.warning("reading the shared cache totals failed: %s", exc)
        finally:
            self.task = None

    async def settle(self) -> None:
        """Wait for a read in flight (at shutdown, before the cache closes)."""
        if self.task is not None:
            await asyncio.wait({self.task})


@dataclass(slots=True)
class _Service:
    tracker: AsyncPersonalityTracker
    stats: _Stats
    registry: CollectorRegistry
    write_mode: str = "available"
    refresh_process: Callable[[], None] = lambda: None


def _answer(state: PersonalityState, stats: _Stats, **headers: str) -> Response:
    """The personality answer, encoded once (FastAPI passes a Response through as is)."""
    body = encode_personality(state, stats.current())
    return Response(body, media_type="application/json", headers=headers or None)


class _BodyLimitAndWorker:
    """ASGI middleware: refuse a path that is not UTF-8 (422) and a JSON body route
    called without a JSON Content-Type (415, ``penny_cache.app.edge``), bodies over
    ``MAX_BODY_BYTES`` (413) whether or not they
    declare a Content-Length (a chunked body is counted as it arrives, buffered, and
    replayed to the app), name the worker on every response, and answer a near-cache
    hit of ``GET /personality/{user_id}`` itself (``_near_hit``)."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._worker = str(os.getpid()).encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def named(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-penny-worker", self._worker),
                ]
            await send(message)

        refused = _refused_before_routing(scope)
        if refused is not None:
            await refused(scope, receive, named)
            return
        buffered = await self._read_limited(scope, receive)
        if buffered is None:
            detail = f"request bodies are limited to {MAX_BODY_BYTES} bytes"
            await problem(413, detail)(scope, receive, named)
            return
        if not buffered and await _near_hit(scope, named):
            return
        replay = iter(buffered)

        async def replayed() -> Any:
            return next(replay, None) or await receive()

        await self._app(scope, replayed, named)

    @staticmethod
    async def _read_limited(scope: Any, receive: Any) -> list[Any] | None:
        """The request's body messages, or None once they pass the limit."""
        headers = dict(scope.get("headers", []))
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return None
        if scope.get("method") in {"GET", "HEAD", "OPTIONS", "DELETE"}:
            return []
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            size += len(message.get("body", b""))
            if size > MAX_BODY_BYTES:
                return None
            if message["type"] != "http.request" or not message.get("more_body"):
                return messages


def _refused_before_routing(scope: Any) -> Response | None:
    """A 422 for a path that is not UTF-8 (before Starlette's decoding makes distinct
    ids one), a 415 for a JSON body route called without a JSON Content-Type."""
    wrong = undecodable_path(scope)
    if wrong is not None:
        return problem(422, wrong)
    if needs_json_content_type(scope):
        return problem(415, JSON_REQUIRED)
    return None


async def _near_hit(scope: Any, send: Any) -> bool:
    """Answer ``GET /personality/{user_id}`` from this worker's near cache, if it holds
    the user, and say whether it did.

    The hot read, without FastAPI's routing, dependency solving and exception layers
    (about 60 us of the 67 us such a request cost in-process, against 8 us for the
    lookup and the encoding). The answer is the route's, byte for byte: the same
    ``near_get`` the tracker tries first (counted as one hit), the same encoder, the
    same headers. Anything else (another route or method, an id the route would
    refuse, a near-cache miss, before the lifespan ran) goes on to FastAPI, which
    validates, reads Redis or SQL and maps errors; the near cache only ever holds ids
    that passed the route."""
    if scope["method"] != "GET" or scope.get("root_path"):
        return False
    path: str = scope["path"]
    user_id = path[len(_PERSONALITY) :]
    if not path.startswith(_PERSONALITY) or not acceptable_user_id(user_id):
        return False
    min_version = plain_min_version(scope.get("query_string", b""))
    if min_version is None:
        return False
    service: _Service | None = getattr(scope["app"].state, "service", None)
    state = None if service is None else service.tracker.cache.near_get(user_id, min_version)
    if service is None or state is None:
        return False
    body = encode_personality(state, service.stats.current())
    length = (b"content-length", str(len(body)).encode())
    await send({"type": "http.response.start", "status": 200, "headers": [length, _JSON]})
    await send({"type": "http.response.body", "body": body})
    return True


def _service(request: Request) -> _Service:
    service: _Service = request.app.state.service
    return service


def _install_routes(app: FastAPI) -> None:
    # What each operation can answer (tests/integration/test_service_contract.py provokes
    # every status on every route and checks it is listed). A GET reads SQL, which may
    # be unavailable (503) or fail (500); every route can meet the body limit (413).
    read = responses(413, 422, 500, 503)

    @app.get("/personality/{user_id}", response_model=PersonalityView, responses=read)
    async def get_personality(
        user_id: UserId, request: Request, min_version: MinVersion = None
    ) -> Response:
        """The user's current personality (``min_version``: that version or newer), with
        the shared cache's totals."""
        service = _service(request)
        tracker = service.tracker
        state = await tracker.get_current_personality_state(user_id, min_version=min_version or 0)
        return _answer(state, service.stats)

    @app.put(
        "/personality/{user_id}/dimensions/{name}",
        response_model=PersonalityView,
        responses=responses(404, 409, 413, 415, 422, 500, 503, **{"200": _ETAG_DOC}),
    )
    async def put_dimension(
        user_id: UserId, name: str, update: DimensionUpdate, request: Request
    ) -> Response:
        """Commit one dimension as the next version; every worker's cache drops the old.
        The answer's ``version`` (also its ETag) is a token: a GET with
        ``?min_version=`` it, on any worker, answers this version or a newer one. In strict
        write mode an update Redis cannot make safe first is refused: 503, Retry-After."""
        service = _service(request)
        state = await service.tracker.update_personality_dimension(
            user_id, name, update.value, context=update.context, confidence=update.confidence
        )
        return _answer(state, service.stats, ETag=f'"{state.version}"')

    @app.get("/healthz", responses=responses(413))
    async def healthz() -> dict[str, str]:
        """The process is alive (liveness: never depends on Redis or SQL)."""
        return {"status": "ok"}

    @app.get("/readyz", responses=responses(413, **{"503": {"description": _NOT_READY}}))
    async def readyz(request: Request) -> JSONResponse:
        """Ready when this process can read, write and count as configured: Redis down is
        "degraded" in the available write mode (SQL answers), not ready in strict mode."""
        service = _service(request)
        sql_ok = await _sql_answers(service.tracker.store)
        redis_ok = await service.tracker.cache.ping()
        counting = service.tracker.cache.counting
        strict = service.write_mode == "strict"
        ready = sql_ok and counting and (redis_ok or not strict)
        status = "unavailable" if not ready else "ready" if redis_ok else "degraded"
        body = {"status": status, "sql": sql_ok, "redis": redis_ok, "counting": counting}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", response_class=Response, responses=responses(413))
    async def metrics(request: Request) -> Response:
        """This worker's (or, in multiprocess mode, all workers') Prometheus metrics."""
        service = _service(request)
        service.refresh_process()  # this worker's own; the others refresh on their tick
        payload = generate_latest(service.registry)
        return Response(payload, media_type=CONTENT_TYPE_LATEST)


async def _refresh_every(refresh: Callable[[], None], interval: float) -> None:
    """Keep this worker's process metrics current for scrapes another worker answers."""
    while True:
        await asyncio.sleep(interval)
        try:
            refresh()
        except OSError as exc:  # /proc unreadable: a gap in the metrics, not a dead task
            _log.warning("reading this worker's process metrics failed: %s", exc)


async def _sql_answers(store: PersonalityStore) -> bool:
    try:
        await asyncio.to_thread(store.ping)
    except StoreError:
        return False
    return True


def create_app(
    settings: Settings,
    *,
    catalogue: Catalogue | None = None,
    multiprocess_dir: str | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The ASGI app; its tracker is built at start-up, in the worker that serves it.
    ``catalogue``: the dimensions it serves and validates (default ``Catalogue.penny()``)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics, registry = for_worker(multiprocess_dir)
        refresh = worker_identity(multiprocess_dir, registry, __version__)
        cache = AsyncPersonalityCache.from_settings(settings, metrics=metrics)
        store = PersonalityStore(settings.database_url, catalogue=catalogue)
        tracker = AsyncPersonalityTracker(store, cache, **settings.tracker_options())
        stats = _Stats(cache.get_stats, monotonic)
        app.state.service = _Service(tracker, stats, registry, settings.write_mode, refresh)
        ticker = asyncio.create_task(_refresh_every(refresh, PROCESS_METRICS_INTERVAL))
        try:
            stats.current()  # the first read, awaited here so the first answer has it
            await stats.settle()
            yield
        finally:
            ticker.cancel()
            await stats.settle()
            tracker.close()
            await cache.aclose()
            store.close()
            if multiprocess_dir:
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]

    app = FastAPI(
        title="Penny personality service",
        version=__version__,
        description="Per-user personality state, cached in Redis and shared by every worker.",
        lifespan=lifespan,
        docs_url=None,  # install_pages serves /docs and /redoc from local assets
        redoc_url=None,
    )
    install_error_handlers(
        app,
        settings.redis_cooldown,
        log_interval=settings.error_log_interval,
        catalogue=catalogue,
    )
    app.add_middleware(_BodyLimitAndWorker)
    _install_routes(app)
    install_pages(app)
    return app


def app_from_env() -> FastAPI:
    """uvicorn's factory (``penny-cache serve``): settings from ``PENNY_*`` variables;
    ``PENNY_CATALOGUE=package.module:NAME`` serves an application's catalogue."""
    reference = os.environ.get("PENNY_CATALOGUE", "").strip()
    for line in Settings.unknown_variables(os.environ):
        _log.warning("%s", line)
    try:
        settings = Settings.from_env(os.environ)
    except ConfigurationError as exc:  # one line, not a traceback per worker
        print(f"penny-cache: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return create_app(
        settings,
        catalogue=load_catalogue(reference) if reference else None,
        multiprocess_dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None,
    )
