"""What the HTTP service answers when a request goes wrong, and what its OpenAPI document
says each operation may answer.

An answer says what happened to the request and no more: a driver's message can carry
the SQL statement, its bound parameters (a user's ``context``), a table name, a host or a
port, none of which a client may see. A 503 says which side is unavailable and when to
retry; any other failure is a 500 carrying a short random ``error_id`` that the server's
log line, with the full exception, also carries.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable
from typing import Any, Final

from fastapi import FastAPI, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from penny_cache.app.schema import Problem, ServerProblem
from penny_cache.errors import (
    CacheError,
    InvalidInputError,
    StoreConflictError,
    StoreError,
    StoreUnavailableError,
    UnknownDimensionError,
)
from penny_cache.observe.ratelog import RateLimitedLog

__all__ = [
    "BODY_UNREADABLE",
    "CACHE_REFUSED",
    "DATABASE_UNAVAILABLE",
    "MAX_BODY_BYTES",
    "STATUS_DOCS",
    "install_error_handlers",
    "problem",
    "responses",
]

MAX_BODY_BYTES: Final = 16 * 1024
DATABASE_UNAVAILABLE: Final = "the database is unavailable; retry after Retry-After seconds"
CACHE_REFUSED: Final = (
    "strict write mode refused the update: the cache could not make the old version "
    "unusable first; nothing was committed; retry after Retry-After seconds"
)
BODY_UNREADABLE: Final = (
    "body: not JSON this service can read (UTF-8 JSON, numbers of at most 4300 digits, "
    "nesting at most a few hundred levels deep)"
)
_ERROR_ID_BYTES: Final = 4  # 8 hex digits: enough to find one line in a day's logs

_log = logging.getLogger("penny_cache.app.service")

# Every status an operation can answer besides 200, and what it means. ``responses``
# picks from these per route; tests/integration/test_service_contract.py provokes each
# status on each route and checks the document lists it.
STATUS_DOCS: Final[dict[int, dict[str, Any]]] = {
    404: {"model": Problem, "description": "an unknown dimension"},
    409: {"model": Problem, "description": "the update lost its version race too often"},
    413: {
        "model": Problem,
        "description": f"a request body over {MAX_BODY_BYTES} bytes (declared or counted)",
    },
    422: {
        "model": Problem,
        "description": "a bad user id, query parameter or body (not JSON, wrong types, "
        "out of range, unknown fields); nothing was written",
    },
    500: {
        "model": ServerProblem,
        "description": "an unexpected failure; the server's log line carries the same error_id",
    },
    503: {
        "model": Problem,
        "description": "the database is unavailable, or (PENNY_WRITE_MODE=strict) Redis "
        "could not make the old version unusable first: nothing was committed; retry "
        "after Retry-After seconds",
    },
}


def responses(*statuses: int, **extra: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route: the given statuses' documents, plus ``extra``
    (keyed by status as text, e.g. ``**{"200": ...}``)."""
    found: dict[int | str, dict[str, Any]] = {code: STATUS_DOCS[code] for code in statuses}
    found.update({int(code): doc for code, doc in extra.items()})
    return found


def problem(
    status: int,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    error_id: str | None = None,
) -> JSONResponse:
    """A ``Problem`` body (a ``ServerProblem`` with ``error_id``)."""
    body = {"detail": detail} if error_id is None else {"detail": detail, "error_id": error_id}
    return JSONResponse(body, status_code=status, headers=headers)


def _where(location: Any) -> str:
    """``("body", "value")`` as ``"body.value: "``."""
    path = ".".join(str(part) for part in location)
    return f"{path}: " if path else ""


def _route(request: Request) -> str:
    """The route's template (``/personality/{user_id}``): never the path, which holds
    the user id."""
    route = request.scope.get("route")
    return str(getattr(route, "path", "?"))


def install_error_handlers(
    app: FastAPI,
    retry_after: float,
    *,
    log_interval: float = 60.0,
    monotonic: Callable[[], float] = time.monotonic,
) -> None:
    """``retry_after``: the Redis breaker's cooldown, for updates strict mode refused;
    ``log_interval``: at most one log line per kind of unavailability per interval."""
    outages = RateLimitedLog(_log, log_interval, monotonic)
    cache_seconds = str(max(1, math.ceil(retry_after)))

    async def store_down(_: Request, exc: Exception) -> Response:
        outages.warning("sql", f"answering 503: {exc}")
        return problem(503, DATABASE_UNAVAILABLE, headers={"Retry-After": "1"})

    async def cache_refused(_: Request, exc: Exception) -> Response:
        # only strict write mode lets Redis trouble reach a caller: the update was refused
        outages.warning("redis", f"answering 503: {exc}")
        return problem(503, CACHE_REFUSED, headers={"Retry-After": cache_seconds})

    async def failed(request: Request, exc: Exception) -> Response:
        error_id = secrets.token_hex(_ERROR_ID_BYTES)
        _log.error(
            "error_id=%s: %s %s failed", error_id, request.method, _route(request), exc_info=exc
        )
        return problem(500, "internal error; quote error_id when reporting it", error_id=error_id)

    app.add_exception_handler(RequestValidationError, _malformed)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(UnknownDimensionError, _status_of(404))
    app.add_exception_handler(InvalidInputError, _status_of(422))
    app.add_exception_handler(StoreConflictError, _status_of(409))
    app.add_exception_handler(StoreUnavailableError, store_down)
    app.add_exception_handler(StoreError, failed)
    app.add_exception_handler(CacheError, cache_refused)
    app.add_exception_handler(Exception, failed)


def _status_of(status: int) -> Callable[[Request, Exception], Any]:
    """A handler answering ``status`` with the exception's own message: ours, written
    for the caller (what was wrong with their input), never a driver's."""

    async def handler(_: Request, exc: Exception) -> Response:
        return problem(status, str(exc))

    return handler


async def _malformed(_: Request, exc: Exception) -> Response:
    # Never echo the input back: it may hold NaN (not JSON) or be huge.
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    parts = [_where(error.get("loc", ())) + _message(error) for error in errors]
    return problem(422, "; ".join(parts) or "invalid request")


def _message(error: Any) -> str:
    """pydantic's message, without the pattern (a user id's is a page of ranges)."""
    if error.get("type") == "string_pattern_mismatch":
        return "holds a character it may not (control or format characters, noncharacters, U+FFFD)"
    return str(error.get("msg", "")).removeprefix("Value error, ")


async def _http_error(request: Request, exc: Exception) -> Response:
    """FastAPI answers 400 for a body its JSON parser gives up on (not UTF-8, a number
    past Python's 4300 digits, nesting past the recursion limit): the same kind of
    error as malformed JSON, which is 422, so it is 422 too."""
    if isinstance(exc, HTTPException) and exc.status_code == 400:
        return problem(422, BODY_UNREADABLE)
    assert isinstance(exc, HTTPException)
    return await http_exception_handler(request, exc)
