"""The exporter's HTTP side: a registry wired to Redis, and the WSGI server that serves it.

The collector itself (what is exported, read at scrape time) is
``penny_cache.observe.exporter``; this module only connects it to the configured Redis
and to HTTP (``penny-cache exporter``), with the standard library's WSGI server: the
exporter needs no ``[service]`` extra.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from penny_cache.app.exporter_page import LANDING_PAGE, Sampler, read_totals, series_json
from penny_cache.config import Settings
from penny_cache.keys import KeySchema
from penny_cache.observe.counters import shared_totals
from penny_cache.observe.exporter import RedisCountersCollector
from penny_cache.wiring import sync_backend

__all__ = ["exporter_app", "registry_for_redis", "registry_for_settings", "serve"]


def registry_for_redis(
    redis_url: str, namespace: str, version: str, *, timeout: float = 0.1
) -> tuple[CollectorRegistry, Callable[[], None]]:
    """A registry holding the collector for ``namespace`` on ``redis_url``, and its close."""
    settings = Settings(redis_url=redis_url, namespace=namespace, redis_timeout=timeout)
    return registry_for_settings(settings, version)


def registry_for_settings(
    settings: Settings, version: str
) -> tuple[CollectorRegistry, Callable[[], None]]:
    """As ``registry_for_redis``, on the configured topology (standalone, Sentinel, Cluster)."""
    backend = sync_backend(settings)
    keys = KeySchema(settings.namespace)
    registry = CollectorRegistry()
    registry.register(
        RedisCountersCollector(lambda: shared_totals(backend, keys), settings.namespace, version)
    )
    return registry, backend.close


_ROUTES: Final = ("/", "/metrics", "/healthz", "/series.json")


def exporter_app(
    registry: CollectorRegistry, sampler: Sampler | None = None
) -> Callable[..., Iterable[bytes]]:
    """A WSGI app on the routes in ``_ROUTES`` and no others: a 404 elsewhere reads
    nothing (a browser's ``/favicon.ico`` used to get the full metrics, and cost a read
    of Redis). ``/`` is the live page of ``penny_cache.app.exporter_page`` when a
    ``sampler`` keeps its history; ``/healthz`` says the process answers (Redis is
    ``penny_cache_up``)."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path == "/metrics":
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        if path == "/":
            start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
            return [LANDING_PAGE.encode()]
        if path == "/healthz":
            return _json(start_response, b'{"status": "ok"}')
        if path == "/series.json" and sampler is not None:
            return _json(start_response, series_json(sampler))
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [f"not found; this exporter serves {', '.join(_ROUTES)}\n".encode()]

    return app


def _json(start_response: Callable[..., Any], body: bytes) -> Iterable[bytes]:
    headers = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
    start_response("200 OK", headers)
    return [body]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    sampler: Sampler | None = None

    def server_close(self) -> None:
        """The page's sampler stops with the server (it reads Redis every few seconds)."""
        if self.sampler is not None:
            self.sampler.stop()
        super().server_close()


class _QuietHandler(WSGIRequestHandler):
    # HTTP/1.0 (wsgiref's default): every response closes its connection, which pushes
    # out the last segment, so a keep-alive client never waits on a delayed ACK. wsgiref
    # writes headers and body separately; TCP_NODELAY keeps that true if this handler
    # ever speaks HTTP/1.1 keep-alive (the stall the service had, see docs/http.md).
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every 15 s would drown the log; errors still surface as responses."""


def serve(
    registry: CollectorRegistry, host: str, port: int, *, sample_every: float = 5.0
) -> WSGIServer:
    """An HTTP server for the exporter (call ``serve_forever``; ``port=0`` picks one),
    with the landing page's sampler reading ``registry`` every ``sample_every`` seconds
    until ``server_close``."""
    sampler = Sampler(lambda: read_totals(registry), sample_every)
    server = make_server(
        host, port, exporter_app(registry, sampler), _ThreadingServer, handler_class=_QuietHandler
    )
    assert isinstance(server, _ThreadingServer)
    server.sampler = sampler
    sampler.start()
    return server
