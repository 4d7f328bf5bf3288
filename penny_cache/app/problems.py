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

from penny_cache.app.schema import Problem, ServerProblem, json_kind, refused_character
from penny_cache.catalogue import PENNY, Catalogue
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
    415: {
        "model": Problem,
        "description": "the body was sent without Content-Type: application/json",
    },
    422: {
        "model": Problem,
        "description": "a bad user id (not UTF-8, a refused character, too long), query "
        "parameter or body (not JSON, wrong types, out of range, unknown fields); nothing "
        "was written",
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
    catalogue: Catalogue | None = None,
) -> None:
    """``retry_after``: the Redis breaker's cooldown, for updates strict mode refused;
    ``log_interval``: at most one log line per kind of unavailability per interval;
    ``catalogue``: what a refused ``value`` is told the dimension accepts."""
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

    app.add_exception_handler(RequestValidationError, _malformed(catalogue or PENNY))
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


def _malformed(catalogue: Catalogue) -> Callable[[Request, Exception], Any]:
    """The 422 for what FastAPI's validation refused, in plain words: pydantic's own
    messages name its internals (a union's branches, a regex, "JSON decode error" at a
    character offset). Never echoes the input back: it may hold NaN or be huge."""

    async def handler(request: Request, exc: Exception) -> Response:
        errors = exc.errors() if isinstance(exc, RequestValidationError) else []
        body = exc.body if isinstance(exc, RequestValidationError) else None
        dimension = request.scope.get("path_params", {}).get("name")
        parts = [_described(error, body, catalogue, dimension) for error in errors]
        return problem(422, "; ".join(parts) or "invalid request")

    return handler


def _described(error: Any, body: Any, catalogue: Catalogue, dimension: object) -> str:
    kind, location = error.get("type"), tuple(error.get("loc", ()))
    if kind == "json_invalid" and isinstance(body, str):
        return _json_error(error, body)
    if location == ("body",) and kind in {"model_attributes_type", "dict_type"}:
        return 'body must be a JSON object, e.g. {"value": 0.5}'
    if location == ("body", "value") and kind == "value_error":
        return "body.value: " + _accepted_values(catalogue, dimension, error.get("input"))
    return _where(location) + _message(error)


def _json_error(error: Any, document: str) -> str:
    """ "Expecting ',' delimiter at line 1, column 9", as ``json.JSONDecodeError`` counts."""
    position = error["loc"][-1] if isinstance(error["loc"][-1], int) else 0
    line = document.count("\n", 0, position) + 1
    column = position - document.rfind("\n", 0, position)
    reason = error.get("ctx", {}).get("error", "unreadable")
    return f"body is not valid JSON: {reason} at line {line}, column {column}"


def _accepted_values(catalogue: Catalogue, dimension: object, given: object) -> str:
    """What the dimension takes, instead of pydantic's "should be a valid number; should
    be a valid integer; should be a valid string"."""
    spec = catalogue.specs.get(dimension) if isinstance(dimension, str) else None
    if spec is None:
        accepted = "a number (numeric dimensions) or one of the dimension's categories"
    elif spec.value_type == "continuous":
        accepted = f"{spec.name} takes a number in [{spec.minimum:g}, {spec.maximum:g}]"
    else:
        accepted = f"{spec.name} takes one of {', '.join(spec.options)}"
    return f"{accepted}, not {json_kind(given)}"


def _message(error: Any) -> str:
    """pydantic's message, without the pattern (a user id's is a page of ranges)."""
    if error.get("type") == "string_pattern_mismatch":
        found = refused_character(str(error.get("input", "")))
        return f"{found or 'a character'} is not allowed in a user id"
    return str(error.get("msg", "")).removeprefix("Value error, ")


async def _http_error(request: Request, exc: Exception) -> Response:
    """FastAPI answers 400 for a body its JSON parser gives up on (not UTF-8, a number
    past Python's 4300 digits, nesting past the recursion limit): the same kind of
    error as malformed JSON, which is 422, so it is 422 too."""
    if isinstance(exc, HTTPException) and exc.status_code == 400:
        return problem(422, BODY_UNREADABLE)
    assert isinstance(exc, HTTPException)
    return await http_exception_handler(request, exc)
