"""The Penny personality HTTP service (FastAPI): the only module that knows HTTP.

Each uvicorn worker process builds its own tracker (async cache + SQL store) at start, so
workers share state only through Redis: one cache, one hit rate, one invalidation
channel. Errors are mapped here, once: bad input is a 4xx naming what is wrong, an
unreachable database a 503; Redis trouble never reaches a response (SQL answers).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Final

from fastapi import FastAPI, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from penny_cache import AsyncPersonalityCache, AsyncPersonalityTracker, __version__
from penny_cache.catalogue import Catalogue, load_catalogue
from penny_cache.config import Settings
from penny_cache.errors import (
    InvalidInputError,
    StoreConflictError,
    StoreError,
    UnknownDimensionError,
)
from penny_cache.observe.metrics import for_worker
from penny_cache.state import PersonalityState
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import MAX_CONTEXT_CHARS

__all__ = ["MAX_BODY_BYTES", "STATS_MAX_AGE", "app_from_env", "create_app"]

MAX_BODY_BYTES: Final = 16 * 1024
STATS_MAX_AGE: Final = 1.0  # seconds a worker reuses the shared totals (one Redis round trip)


# What the API accepts as a user id, stated in the OpenAPI schema: no control characters
# and at most 64 characters (so at most 256 UTF-8 bytes, the library's limit).
UserId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=64,
        pattern=r"^[^\x00-\x1f\x7f-\x9f]+$",
        description="the user's id: 1-64 characters, no control characters",
    ),
]


class DimensionUpdate(BaseModel):
    """The body of ``PUT .../dimensions/{name}``."""

    model_config = ConfigDict(extra="forbid")
    value: StrictFloat | StrictInt | StrictStr = Field(
        description="a number in the dimension's range ([0, 1] for Penny's) for a "
        "continuous dimension, else one of its options"
    )
    confidence: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = Field(
        default=None, description="the new confidence; omitted: unchanged"
    )
    context: Annotated[str, Field(max_length=MAX_CONTEXT_CHARS)] | None = Field(
        default=None, description="what triggered the change (kept in the history)"
    )


class DimensionView(BaseModel):
    value: float | str
    confidence: float


class CacheView(BaseModel):
    """The shared cache's totals across every process on the namespace."""

    hit_rate: float = Field(description="hits / (hits + misses), 0..1")
    hit_rate_percent: str = Field(description='the same as text, e.g. "90.0%"')
    hits: int
    misses: int
    shared: bool = Field(description="False: Redis unreadable, this process's counts only")


class PersonalityView(BaseModel):
    user_id: str
    version: int
    updated_at: datetime
    dimensions: dict[str, DimensionView]
    overall_confidence: float
    vocabulary_count: int | None = Field(
        description="not tracked by the personality record: always null (kept for the "
        "original endpoint's shape)"
    )
    cache: CacheView


class Problem(BaseModel):
    detail: str


@dataclass(slots=True)
class _Stats:
    """The shared totals, read at most once per ``STATS_MAX_AGE`` per worker."""

    read: Callable[[], Awaitable[dict[str, Any]]]
    monotonic: Callable[[], float]
    value: CacheView | None = None
    read_at: float = 0.0

    async def view(self) -> CacheView:
        now = self.monotonic()
        if self.value is None or now - self.read_at >= STATS_MAX_AGE:
            stats = await self.read()
            self.value = CacheView(
                hit_rate=stats["hit_rate"],
                hit_rate_percent=f"{stats['hit_rate']:.1%}",
                hits=stats["hits"],
                misses=stats["misses"],
                shared=stats["shared"],
            )
            self.read_at = now
        return self.value


@dataclass(slots=True)
class _Service:
    tracker: AsyncPersonalityTracker
    stats: _Stats
    registry: CollectorRegistry


def _view(state: PersonalityState, cache: CacheView) -> PersonalityView:
    return PersonalityView(
        user_id=state.user_id,
        version=state.version,
        updated_at=state.updated_at,
        dimensions={
            name: DimensionView(value=dim.value, confidence=dim.confidence)
            for name, dim in state.dimensions.items()
        },
        overall_confidence=round(state.overall_confidence, 6),
        vocabulary_count=None,
        cache=cache,
    )


def _problem(status: int, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers or None)


def _install_error_handlers(app: FastAPI) -> None:
    async def unknown_dimension(_: Request, exc: Exception) -> Response:
        return _problem(404, str(exc))

    async def invalid(_: Request, exc: Exception) -> Response:
        return _problem(422, str(exc))

    async def conflict(_: Request, exc: Exception) -> Response:
        return _problem(409, str(exc))

    async def store_down(_: Request, exc: Exception) -> Response:
        return _problem(503, f"the database is unavailable: {exc}", **{"Retry-After": "1"})

    async def malformed(_: Request, exc: Exception) -> Response:
        # Never echo the input back: it may hold NaN (not JSON) or be huge.
        errors = exc.errors() if isinstance(exc, RequestValidationError) else []
        parts = [_where(error.get("loc", ())) + str(error.get("msg", "")) for error in errors]
        return _problem(422, "; ".join(parts) or "invalid request")

    app.add_exception_handler(RequestValidationError, malformed)
    app.add_exception_handler(UnknownDimensionError, unknown_dimension)
    app.add_exception_handler(InvalidInputError, invalid)
    app.add_exception_handler(StoreConflictError, conflict)
    app.add_exception_handler(StoreError, store_down)


def _where(location: Any) -> str:
    """``("body", "value")`` as ``"body.value: "``."""
    path = ".".join(str(part) for part in location)
    return f"{path}: " if path else ""


class _BodyLimitAndWorker:
    """ASGI middleware: refuse bodies over ``MAX_BODY_BYTES`` (413) whether or not they
    declare a Content-Length (a chunked body is counted as it arrives, buffered, and
    replayed to the app), and name the worker on every response."""

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

        buffered = await self._read_limited(scope, receive)
        if buffered is None:
            detail = f"request bodies are limited to {MAX_BODY_BYTES} bytes"
            await _problem(413, detail)(scope, receive, named)
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


def _service(request: Request) -> _Service:
    service: _Service = request.app.state.service
    return service


def _install_routes(app: FastAPI) -> None:
    errors: dict[int | str, dict[str, Any]] = {
        404: {"model": Problem},
        422: {"model": Problem},
        503: {"model": Problem},
    }

    @app.get("/personality/{user_id}", responses=errors)
    async def get_personality(user_id: UserId, request: Request) -> PersonalityView:
        """The user's current personality, with the shared cache's totals."""
        service = _service(request)
        state = await service.tracker.get_current_personality_state(user_id)
        return _view(state, await service.stats.view())

    @app.put("/personality/{user_id}/dimensions/{name}", responses={**errors, 409: errors[404]})
    async def put_dimension(
        user_id: UserId, name: str, update: DimensionUpdate, request: Request
    ) -> PersonalityView:
        """Commit one dimension as the next version; every worker's cache drops the old."""
        service = _service(request)
        state = await service.tracker.update_personality_dimension(
            user_id, name, update.value, context=update.context, confidence=update.confidence
        )
        return _view(state, await service.stats.view())

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is alive (liveness: never depends on Redis or SQL)."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "the database is unreachable"}})
    async def readyz(request: Request) -> JSONResponse:
        """Ready when SQL answers; Redis down is "degraded" (reads go to SQL), not dead."""
        service = _service(request)
        sql_ok = await _sql_answers(service.tracker.store)
        redis_ok = await service.tracker.cache.ping()
        status = "ready" if sql_ok and redis_ok else "degraded" if sql_ok else "unavailable"
        body = {"status": status, "sql": sql_ok, "redis": redis_ok}
        return JSONResponse(body, status_code=200 if sql_ok else 503)

    @app.get("/metrics", response_class=Response)
    async def metrics(request: Request) -> Response:
        """This worker's (or, in multiprocess mode, all workers') Prometheus metrics."""
        payload = generate_latest(_service(request).registry)
        return Response(payload, media_type=CONTENT_TYPE_LATEST)


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
        cache = AsyncPersonalityCache.from_settings(settings, metrics=metrics)
        store = PersonalityStore(settings.database_url, catalogue=catalogue)
        tracker = AsyncPersonalityTracker(
            store,
            cache,
            outbox_interval=settings.outbox_interval,
            outbox_grace=settings.outbox_grace,
            serve_stale=settings.serve_stale,
        )
        app.state.service = _Service(tracker, _Stats(cache.get_stats, monotonic), registry)
        try:
            yield
        finally:
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
    )
    _install_error_handlers(app)
    app.add_middleware(_BodyLimitAndWorker)
    _install_routes(app)
    return app


def app_from_env() -> FastAPI:
    """uvicorn's factory (``penny-cache serve``): settings from ``PENNY_*`` variables;
    ``PENNY_CATALOGUE=package.module:NAME`` serves an application's catalogue."""
    reference = os.environ.get("PENNY_CATALOGUE", "").strip()
    return create_app(
        Settings.from_env(os.environ),
        catalogue=load_catalogue(reference) if reference else None,
        multiprocess_dir=os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None,
    )
