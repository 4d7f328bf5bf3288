"""The bare FastAPI baselines of ``bench_http``, served on the service's server stack.

``python -m bench.http_bare --port P --workers N`` serves, through the very uvicorn
options ``penny-cache serve`` uses (``server_options``: uvloop, httptools), three routes
that do no penny_cache work:

- ``/const``: a constant JSON document (the service's answer for the benchmark's user,
  decoded once at start) returned as a dict, the way most FastAPI routes answer;
- ``/const-bytes``: the same document as pre-encoded bytes (the server stack's floor);
- ``/redis``: one redis-py (asyncio, hiredis) ``GET`` of those bytes + ``json.loads``.

``BENCH_BODY_FILE`` names the document, ``BENCH_REDIS_URL`` the Redis holding it at
``BENCH_REDIS_KEY``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI, Request, Response

__all__ = ["create_app", "main"]


def create_app() -> FastAPI:
    """The bare app (uvicorn's factory): the document from ``BENCH_BODY_FILE``."""
    body = Path(os.environ["BENCH_BODY_FILE"]).read_bytes()
    document: dict[str, Any] = json.loads(body)
    key = os.environ.get("BENCH_REDIS_KEY", "bench:bare")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = aioredis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
        app.state.redis = client
        try:
            yield
        finally:
            await client.aclose()

    app = FastAPI(lifespan=lifespan)

    @app.get("/const")
    async def const() -> dict[str, Any]:
        return document

    @app.get("/const-bytes")
    async def const_bytes() -> Response:
        return Response(body, media_type="application/json")

    @app.get("/redis")
    async def from_redis(request: Request) -> dict[str, Any]:
        raw = await request.app.state.redis.get(key)
        decoded: dict[str, Any] = json.loads(raw)
        return decoded

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    import uvicorn

    from penny_cache.app.launcher import server_options

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    options = server_options("127.0.0.1", args.port, args.workers)
    uvicorn.run("bench.http_bare:create_app", **options)


if __name__ == "__main__":
    main()
