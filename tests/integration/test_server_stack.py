"""The service's server stack is the fast one, checked by configuration, never by timing.

With uvicorn on the asyncio loop, a connection accepted from the socket uvicorn binds for
``--workers`` kept Nagle's algorithm on, and every keep-alive request waited ~40 ms for
the client's delayed ACK (docs/http.md, "Server stack"). These tests fail if a dependency or
launcher change brings that stack back.
"""

from __future__ import annotations

import asyncio
import http.client
import importlib.util
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from uvicorn.config import HTTP_PROTOCOLS
from uvicorn.importer import import_from_string

from penny_cache.app.exporter import _QuietHandler
from penny_cache.app.launcher import SERVER_STACK, server_options

pytestmark = pytest.mark.integration

_DEADLINE = 10.0


def test_the_service_extra_installs_uvloop_and_httptools() -> None:
    """uvloop and httptools are importable where the service is installed (the
    ``[service]`` extra pins them), so ``serve`` can name them."""
    assert importlib.util.find_spec("uvloop") is not None
    assert importlib.util.find_spec("httptools") is not None


def test_serve_configures_uvloop_and_httptools_explicitly() -> None:
    """The uvicorn Config that ``penny-cache serve`` builds (every start path runs it:
    ``make run``, the Dockerfile, compose, Kubernetes) uses uvloop's loop factory and the
    httptools protocol, never "auto" (which silently falls back to asyncio and h11)."""
    options = server_options("127.0.0.1", 8000, 2)
    assert options["loop"] == "uvloop" and options["http"] == "httptools"
    config = uvicorn.Config("penny_cache.app.service:app_from_env", **options)
    factory = config.get_loop_factory()
    assert factory is not None
    loop = factory()
    try:
        assert type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()
    assert isinstance(config.http, str)
    protocol = import_from_string(HTTP_PROTOCOLS[config.http])
    assert protocol.__name__ == "HttpToolsProtocol"


async def _constant(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


@pytest.fixture
def stack_server() -> Iterator[tuple[uvicorn.Server, int]]:
    """A uvicorn server on the launcher's stack, serving a socket bound the way uvicorn
    binds one for ``--workers`` (``socket.socket(family)``, proto 0)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    options = {k: v for k, v in server_options("127.0.0.1", 0, 1).items() if k != "factory"}
    del options["workers"]
    server = uvicorn.Server(uvicorn.Config(_constant, lifespan="off", **options))

    def run() -> None:
        with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
            runner.run(server.serve([sock]))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        _wait_for(lambda: server.started, "the server to start")
        yield server, sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(_DEADLINE)
        sock.close()


def _wait_for(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + _DEADLINE
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_accepted_connections_have_nagle_off(stack_server: tuple[uvicorn.Server, int]) -> None:
    """A keep-alive connection the configured server accepts from a proto-0 socket has
    TCP_NODELAY set, so a response written in two sends (headers, body) never waits for
    the client's delayed ACK: the cause of the 40 ms stall is absent, not just faster."""
    server, port = stack_server
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=_DEADLINE)
    try:
        for _ in range(2):  # two requests on one connection: it is kept alive
            conn.request("GET", "/")
            assert conn.getresponse().read() == b"{}"
        connections = server.server_state.connections
        assert len(connections) == 1
        (protocol,) = connections
        accepted = protocol.transport.get_extra_info("socket")
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        conn.close()


def test_the_exporter_handler_turns_nagle_off() -> None:
    """The exporter's stdlib HTTP handler sets TCP_NODELAY on every connection (and
    answers HTTP/1.0, closing each connection), so its scrapes cannot stall either."""
    assert _QuietHandler.disable_nagle_algorithm is True
    assert _QuietHandler.protocol_version == "HTTP/1.0"
    assert dict(SERVER_STACK) == {"loop": "uvloop", "http": "httptools"}
