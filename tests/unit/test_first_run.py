"""``bench/first_run.py``'s parts (the timing itself is run by hand, not in ``make test``)."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest

from bench.first_run import clean_environ, first_ok, free_port, wait_for_200


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    httpd = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield int(httpd.server_address[1])
    httpd.shutdown()
    httpd.server_close()


def test_a_200_is_seen_and_nothing_else_counts(server: int) -> None:
    """The timer stops at a 200 from /healthz only: a 404 (main's ``/``) or a refused
    connection is "not yet"."""
    alive = threading.Event()
    alive.set()
    assert first_ok(server)
    assert not first_ok(server, "/")
    assert not first_ok(free_port())
    assert wait_for_200(server, time.monotonic() + 5, alive) is not None


def test_the_wait_ends_when_make_exits() -> None:
    """A ``make run`` that died ends the wait at once (no 200, no timeout spent)."""
    alive = threading.Event()  # cleared: make has exited
    started = time.monotonic()
    assert wait_for_200(free_port(), started + 60, alive) is None
    assert time.monotonic() - started < 5


def test_the_clone_runs_as_a_newcomer(monkeypatch: pytest.MonkeyPatch) -> None:
    """No PENNY_* of the caller's (embedded Redis, SQLite) and no active venv reach the
    clone's ``make run``; only the ports chosen for it."""
    monkeypatch.setenv("PENNY_REDIS_URL", "redis://elsewhere:6379/0")
    monkeypatch.setenv("VIRTUAL_ENV", "/somewhere/.venv")
    env = clean_environ(8123, 9123)
    assert {k for k in env if k.startswith("PENNY_")} == {"PENNY_HTTP_PORT", "PENNY_EXPORTER_PORT"}
    assert (env["PENNY_HTTP_PORT"], env["PENNY_EXPORTER_PORT"]) == ("8123", "9123")
    assert "VIRTUAL_ENV" not in env
