"""The fault-injection proxy does what the fault tests rely on.

Most tests run against an in-process echo server, so they need no Redis and run
everywhere; one test drives real redis-py clients through a private ``redis-server``.
Nothing sleeps hoping for the best: tests wait on conditions with deadlines, and the few
timed windows only ever assert that something did *not* happen for a while.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from penny_cache.app.embedded import RedisServerProcess, free_port
from tests.conftest import unavailable
from tests.faultproxy import FaultProxy, Mode

TIMEOUT = 5.0  # a deadline for things that should take milliseconds


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(30)  # never outlive a hung test by much
        with contextlib.suppress(OSError):
            while data := sock.recv(65536):
                sock.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = False
    block_on_close = True  # server_close() joins the handler threads


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = _EchoServer(("127.0.0.1", 0), _EchoHandler)
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="echo-server", daemon=True
    )
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)


@pytest.fixture
def proxy(echo_port: int, caplog: pytest.LogCaptureFixture) -> Iterator[FaultProxy]:
    """A proxy to the echo server; the test fails if the proxy logged an error."""
    with FaultProxy(echo_port) as started:
        yield started
    errors = [r for r in caplog.records if r.name == "tests.faultproxy" and r.levelname == "ERROR"]
    assert errors == []


def _connect(proxy: FaultProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise EOFError(f"connection closed after {len(buf)} of {size} bytes")
        buf += chunk
    return bytes(buf)


def _round_trip(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    return _recv_exactly(sock, len(payload))


def test_normal_forwards_bytes_both_ways_and_counts_connections(proxy: FaultProxy) -> None:
    """Bytes, small and large, come back intact; accepted and open connections are counted."""
    with _connect(proxy) as sock:
        assert _round_trip(sock, b"hello") == b"hello"
        big = bytes(range(256)) * 4096  # 1 MiB: many chunks, exercises backpressure
        sock.sendall(big)
        assert _recv_exactly(sock, len(big)) == big
        proxy.wait_open(1)
        with _connect(proxy) as other:
            assert _round_trip(other, b"second") == b"second"
            proxy.wait_open(2)
    proxy.wait_open(0)  # client close propagates through upstream and back
    assert proxy.connections == 2
    assert proxy.mode is Mode.NORMAL


def test_latency_delays_each_direction_of_an_existing_connection(proxy: FaultProxy) -> None:
    """latency(0.2) holds each chunk 0.2 s per direction, on already-open connections too."""
    with _connect(proxy) as sock:
        assert _round_trip(sock, b"warm") == b"warm"
        proxy.latency(0.2)
        assert (proxy.mode, proxy.delay) == (Mode.LATENCY, 0.2)
        start = time.monotonic()
        assert _round_trip(sock, b"slow") == b"slow"
        elapsed = time.monotonic() - start
        assert 0.4 <= elapsed < 2.0  # 0.2 s out + 0.2 s back
        proxy.normal()
        start = time.monotonic()
        assert _round_trip(sock, b"fast") == b"fast"
        assert time.monotonic() - start < 0.2


def test_latency_is_per_chunk_and_keeps_order(proxy: FaultProxy) -> None:
    """Chunks sent 50 ms apart each arrive ~latency later, in order, not one after another.

    A proxy that slept between reads would serialise the delays (>= 4 x 0.3 s each way);
    a link with latency, like a real long-haul link, does not limit throughput.
    """
    proxy.latency(0.3)
    parts = [b"one.", b"two.", b"three.", b"four."]
    with _connect(proxy) as sock:
        start = time.monotonic()
        for part in parts:
            sock.sendall(part)
            time.sleep(0.05)  # spacing, so that the proxy reads separate chunks
        received = _recv_exactly(sock, sum(map(len, parts)))
        elapsed = time.monotonic() - start
    assert received == b"".join(parts)
    assert 0.6 <= elapsed < 1.3  # last chunk: 0.15 s + 0.3 s + 0.3 s; serialised: >= 2.4 s


def test_blackhole_drops_bytes_keeps_connections_open_and_does_not_replay(
    proxy: FaultProxy,
) -> None:
    """In a black hole nothing answers and nothing closes; normal() resumes without replay."""
    with _connect(proxy) as old:
        assert _round_trip(old, b"before") == b"before"
        proxy.blackhole()
        old.sendall(b"lost")
        old.settimeout(0.3)
        with pytest.raises(TimeoutError):  # no answer, and no EOF (recv would return b"")
            old.recv(100)
        with _connect(proxy) as new:  # new connections are accepted, and hang too
            proxy.wait_open(2)
            new.sendall(b"also lost")
            new.settimeout(0.3)
            with pytest.raises(TimeoutError):
                new.recv(100)
            assert proxy.open_connections == 2
            assert proxy.connections == 2
            proxy.normal()
            assert _round_trip(new, b"new works") == b"new works"
        old.settimeout(TIMEOUT)
        # "lost" was dropped, not buffered: only what is sent now comes back
        assert _round_trip(old, b"after") == b"after"


def test_blackhole_holds_a_close_until_normal(proxy: FaultProxy) -> None:
    """A client closing inside a black hole stays open upstream until the hole closes.

    That is what a server behind a real black hole sees, and it keeps the open count
    honest: a test can see the stale connection and then see it go.
    """
    with _connect(proxy) as sock:
        assert _round_trip(sock, b"hi") == b"hi"
        proxy.blackhole()
    window = time.monotonic() + 0.2
    while time.monotonic() < window:  # asserting a non-event needs a window
        assert proxy.open_connections == 1
        time.sleep(0.02)
    proxy.normal()
    proxy.wait_open(0)


def test_reset_aborts_open_connections_with_rst_then_forwards_new_ones(
    proxy: FaultProxy,
) -> None:
    """reset() makes every open connection fail with ECONNRESET; new ones work normally."""
    proxy.latency(1.0)  # long enough that reset() surely comes first; it does not wait it out
    with _connect(proxy) as sock, _connect(proxy) as in_flight:
        proxy.wait_open(2)
        in_flight.sendall(b"in flight")  # held by the proxy's latency when reset hits
        proxy.reset()
        assert proxy.mode is Mode.NORMAL
        with pytest.raises(ConnectionResetError):
            sock.recv(100)
        with pytest.raises(ConnectionResetError):
            in_flight.recv(100)
    proxy.wait_open(0)
    with _connect(proxy) as fresh:
        assert _round_trip(fresh, b"fresh") == b"fresh"
    assert proxy.connections == 3


def test_refuse_resets_existing_and_new_connections_until_normal(proxy: FaultProxy) -> None:
    """In refuse mode every connection, old or new, is reset; normal() lets them through."""
    with _connect(proxy) as old:
        assert _round_trip(old, b"ok") == b"ok"
        proxy.refuse()
        with pytest.raises(ConnectionResetError):
            old.recv(100)
    for _ in range(3):
        # the kernel completes the handshake, the proxy then resets: depending on timing
        # connect() itself (its completion check) or the first recv() sees the RST
        with pytest.raises(ConnectionResetError), _connect(proxy) as refused:
            refused.recv(100)
    assert proxy.connections == 4
    proxy.wait_open(0)
    proxy.normal()
    with _connect(proxy) as sock:
        assert _round_trip(sock, b"back") == b"back"


def test_unreachable_upstream_closes_the_client_side() -> None:
    """With nothing listening upstream the client sees EOF, and the proxy keeps serving."""
    with FaultProxy(free_port(), connect_timeout=1.0) as proxy:
        for _ in range(2):
            with _connect(proxy) as sock:
                assert sock.recv(100) == b""
        proxy.wait_open(0)
        assert proxy.connections == 2


def test_mode_switches_are_thread_safe(proxy: FaultProxy) -> None:
    """Switching modes from many threads at once neither raises nor wedges the loop."""
    errors: list[BaseException] = []

    def flip() -> None:
        try:
            for _ in range(50):
                proxy.latency(0.001)
                proxy.blackhole()
                proxy.normal()
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=flip) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 4)
    assert errors == []
    proxy.normal()
    with _connect(proxy) as sock:
        assert _round_trip(sock, b"still fine") == b"still fine"


def test_stop_closes_everything_leaves_no_thread_and_is_idempotent() -> None:
    """stop() closes listener and connections, joins its thread, and may be repeated."""
    before = set(threading.enumerate())
    with socket.create_server(("127.0.0.1", 0)) as upstream:  # accepts in the kernel only
        proxy = FaultProxy(upstream.getsockname()[1]).start()
        assert len(set(threading.enumerate()) - before) == 1
        port = proxy.port
        with _connect(proxy) as sock:
            proxy.wait_open(1)
            proxy.stop()
            with contextlib.suppress(ConnectionResetError):  # EOF or RST: closed either way
                assert sock.recv(100) == b""
        proxy.stop()
        assert set(threading.enumerate()) - before == set()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
        proxy.normal()  # switching a stopped proxy is harmless


def test_redis_py_through_blackhole_reset_and_refuse() -> None:
    """Against a real redis-server, redis-py sees each fault the way the cache will.

    Blackhole: PING raises redis.TimeoutError after socket_timeout and the proxy still holds
    the connection; after normal() a new connection works. Reset: an in-flight command
    fails with a connection error. Refuse: new connections fail until normal().
    """
    try:
        server = RedisServerProcess().start()
    except (FileNotFoundError, RuntimeError, TimeoutError) as exc:
        unavailable(f"redis-server: {exc}")
        return
    no_retry = Retry(NoBackoff(), 0)  # redis-py retries by default; each fault must show
    try:
        with FaultProxy(server.port) as proxy:
            client = redis.Redis.from_url(
                proxy.url, socket_timeout=0.2, socket_connect_timeout=1.0, retry=no_retry
            )
            try:
                assert client.ping()
                proxy.blackhole()
                start = time.monotonic()
                with pytest.raises(redis.TimeoutError):
                    client.ping()
                assert 0.2 <= time.monotonic() - start < 2.0
                assert proxy.open_connections == 1  # never closed by the proxy
                proxy.normal()
                proxy.wait_open(0)  # the held close reaches redis, which hangs up
                assert client.ping()  # the pool reconnects: a new connection works
                assert proxy.connections == 2

                # one raw connection, to put a command in flight; redis-py leaves it untyped
                connection_class: Any = redis.Connection
                conn = connection_class(
                    port=proxy.port, socket_timeout=TIMEOUT, retry=Retry(NoBackoff(), 0)
                )
                try:
                    conn.connect()
                    proxy.latency(1.0)
                    conn.send_command("PING")
                    proxy.reset()  # while the PING is held by the proxy
                    with pytest.raises((redis.ConnectionError, ConnectionResetError)):
                        conn.read_response()
                finally:
                    conn.disconnect()

                proxy.refuse()
                refused = redis.Redis(port=proxy.port, socket_timeout=1.0, retry=no_retry)
                try:
                    with pytest.raises(redis.ConnectionError):
                        refused.ping()
                finally:
                    refused.close()
                proxy.normal()
                assert client.ping()
            finally:
                client.close()
    finally:
        server.stop()
