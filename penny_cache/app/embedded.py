"""A Redis for newcomers, demos and tests: a private ``redis-server``, else fakeredis.

``make run`` must work on a fresh machine with no Redis configured, and several worker
processes must really share one cache, so this starts a real server on a free loopback
port when the binary exists, and fakeredis' TCP server otherwise. Whatever it starts
it stops. Tests use ``RedisServerProcess`` to kill, pause and restart their own server
without touching anybody else's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["EmbeddedRedis", "RedisServerProcess", "embedded_redis", "free_port"]


def free_port() -> int:
    """A loopback port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")  # RESP: fakeredis ignores inline commands
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    """Poll ``predicate`` until true or raise ``TimeoutError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


class RedisServerProcess:
    """A private ``redis-server`` on loopback, with the faults tests need."""

    def __init__(self, port: int | None = None, *extra_args: str) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed")
        self.binary = binary
        self.port = port or free_port()
        self.extra_args = extra_args
        self._dir = tempfile.mkdtemp(prefix="penny-redis-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServerProcess:
        """Start (or restart after ``kill``) on the same port, empty, and wait for PING."""
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", self._dir, *self.extra_args]
        log = Path(self._dir, "redis.log").open("ab")  # noqa: SIM115 - owned by the process
        # its own session: a Ctrl-C in the terminal reaches the owner, which stops the
        # server last (after the processes that still write their final counters)
        self._proc = subprocess.Popen(  # noqa: S603
            args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        wait_until(self._ready, timeout, f"redis-server :{self.port}")
        return self

    def _ready(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            log = Path(self._dir, "redis.log").read_text(errors="replace")[-500:]
            raise RuntimeError(f"redis-server exited with {self._proc.returncode}: {log}")
        return _answers_ping(self.port)

    def version(self) -> str:
        out = subprocess.run([self.binary, "--version"], capture_output=True, check=True)  # noqa: S603
        return out.stdout.decode().split()[2].removeprefix("v=")

    def kill(self) -> None:
        """SIGKILL: the server dies with all its data, as in a crash."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=10)
            self._proc = None

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing answers."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Terminate and remove the data directory."""
        if self._proc is not None:
            self.resume()
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
            self._proc = None
        shutil.rmtree(self._dir, ignore_errors=True)


@dataclass(frozen=True)
class EmbeddedRedis:
    """Where the embedded Redis listens and what it is."""

    url: str
    description: str
    # fakeredis answers in Python, often slower than the 0.1 s default deadline allows
    timeout: float = 0.1


def _fakeredis_server() -> tuple[EmbeddedRedis, Any]:
    from fakeredis import TcpFakeServer

    port = free_port()
    server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
    thread = threading.Thread(target=server.serve_forever, name="fakeredis", daemon=True)
    thread.start()
    wait_until(lambda: _answers_ping(port), 10.0, "fakeredis TCP server")
    about = f"fakeredis TCP server on 127.0.0.1:{port} (redis-server not installed)"
    return EmbeddedRedis(f"redis://127.0.0.1:{port}/0", about, timeout=1.0), server


@contextlib.contextmanager
def embedded_redis() -> Iterator[EmbeddedRedis]:
    """A private Redis for the lifetime of the ``with`` block."""
    if shutil.which("redis-server") and not os.environ.get("PENNY_EMBEDDED_FAKEREDIS"):
        server = RedisServerProcess().start()
        try:
            about = f"embedded redis-server {server.version()} on 127.0.0.1:{server.port}"
            yield EmbeddedRedis(server.url, about)
        finally:
            server.stop()
        return
    embedded, fake = _fakeredis_server()
    try:
        yield embedded
    finally:
        fake.shutdown()
        fake.server_close()
