"""The HTTP edge of issue #15 (item 4): what the service says before and around its
routes. A real uvicorn server (uvloop, httptools: the stack ``serve`` runs) on a real
redis-server and SQLite, and PostgreSQL for the 503, asked by one pooled ``httpx2``
client; ``penny-cache serve`` itself in a subprocess for the port findings.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import httpx2
import pytest
import uvicorn

from penny_cache.app.launcher import SERVER_STACK
from penny_cache.app.service import create_app
from penny_cache.config import Settings
from penny_cache.store.database import PersonalityStore

pytestmark = pytest.mark.integration

_DEADLINE = 20.0
FORMALITY = "/personality/alice/dimensions/communication_formality"
STYLE = "/personality/alice/dimensions/humor_style_preference"


def _settings(redis_url: str, database_url: str, namespace: str) -> Settings:
    return Settings(
        redis_url=redis_url,
        database_url=database_url,
        namespace=namespace,
        stats_flush_interval=0.05,
    )


def _wait_for(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + _DEADLINE
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _served(settings: Settings) -> Iterator[httpx2.Client]:
    """The app on a real uvicorn server in a thread; one keep-alive client to it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        create_app(settings),
        log_level="warning",
        loop=SERVER_STACK["loop"],
        http=SERVER_STACK["http"],
    )
    server = uvicorn.Server(config)

    def run() -> None:
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            runner.run(server.serve([sock]))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        _wait_for(lambda: server.started, "the server to start")
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with httpx2.Client(base_url=base, timeout=_DEADLINE) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(_DEADLINE)
        sock.close()


@pytest.fixture
def client(redis_url: str, sqlite_url: str, namespace: str) -> Iterator[httpx2.Client]:
    yield from _served(_settings(redis_url, sqlite_url, namespace))


def _history(database_url: str, user: str) -> list[Any]:
    store = PersonalityStore(database_url)
    try:
        return store.history(user, None, 30)
    finally:
        store.close()


# -- a path that is not UTF-8 ----------------------------------------------------------


def test_distinct_invalid_utf8_ids_no_longer_share_one_record(
    client: httpx2.Client, sqlite_url: str
) -> None:
    """Used to be: ``PUT /personality/%FF%FE/...`` committed to user "\\ufffd\\ufffd" and
    ``GET /personality/%FE%FF`` (and ``%EF%BF%BD%EF%BF%BD``) answered that record:
    Starlette decodes the path with replacement characters. Now: an id that is not
    UTF-8 is a 422 "user id is not valid UTF-8" before any route runs, U+FFFD written
    out is refused as a character, and nothing reaches SQL."""
    put = client.put("/personality/%FF%FE/dimensions/communication_formality", json={"value": 0.9})
    assert put.status_code == 422, put.text
    assert put.json() == {"detail": "user id is not valid UTF-8"}
    for path in ("/personality/%FE%FF", "/personality/%C3", "/personality/ok%80"):
        got = client.get(path)
        assert got.status_code == 422, (path, got.text)
        assert got.json() == {"detail": "user id is not valid UTF-8"}
    spelled = client.get("/personality/%EF%BF%BD%EF%BF%BD")
    assert spelled.status_code == 422
    assert "U+FFFD" in spelled.json()["detail"]
    bad_name = client.put("/personality/alice/dimensions/%FF", json={"value": 0.5})
    assert bad_name.json() == {"detail": "dimension name is not valid UTF-8"}
    assert _history(sqlite_url, "\ufffd\ufffd") == []
    assert _history(sqlite_url, "alice") == []
    fine = client.get("/personality/%C3%A9lodie")  # valid UTF-8 escapes still work
    assert fine.status_code == 200 and fine.json()["user_id"] == "\u00e9lodie"


# -- 4xx bodies in plain words -----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"value": 0.5 "x": 1}', "Expecting ',' delimiter at line 1, column 15"),
        (b'{"value"\n: ,}', "Expecting value at line 2, column 3"),
        (b'{"value": 0.5', "Expecting ',' delimiter at line 1, column 14"),
    ],
)
def test_malformed_json_says_where(
    client: httpx2.Client, sqlite_url: str, raw: bytes, expected: str
) -> None:
    """Used to be: ``"body.9: JSON decode error"`` (a character offset and pydantic's
    words). Now: "body is not valid JSON: <reason> at line L, column C", counted as
    Python's json module counts, and nothing is written."""
    response = client.put(FORMALITY, content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json() == {"detail": f"body is not valid JSON: {expected}"}
    assert _history(sqlite_url, "alice") == []


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "json"]
)
def test_a_body_without_a_json_content_type_is_415(
    client: httpx2.Client, sqlite_url: str, content_type: str | None
) -> None:
    """Used to be: a body sent as text/plain (or form-encoded) answered 422 "Input should
    be a valid dictionary", and one with no Content-Type at all the same. Now: 415 "send
    Content-Type: application/json"; nothing is written; ``application/json;
    charset=utf-8`` and ``application/merge-patch+json`` are still taken."""
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = client.put(FORMALITY, content=b'{"value": 0.5}', headers=headers)
    assert response.status_code == 415, response.text
    assert response.json() == {"detail": "send Content-Type: application/json"}
    assert _history(sqlite_url, "alice") == []
    for accepted in ("application/json; charset=utf-8", "application/merge-patch+json"):
        ok = client.put(FORMALITY, content=b'{"value": 0.5}', headers={"Content-Type": accepted})
        assert ok.status_code == 200, (accepted, ok.text)


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (FORMALITY, True, "communication_formality takes a number in [0, 1], not true"),
        (FORMALITY, None, "communication_formality takes a number in [0, 1], not null"),
        (FORMALITY, [0.5], "communication_formality takes a number in [0, 1], not an array"),
        (
            STYLE,
            {"a": 1},
            "humor_style_preference takes one of dry, playful, roasting, dad_jokes, "
            "tech_humor, balanced, not an object",
        ),
    ],
)
def test_a_value_of_the_wrong_json_type_names_what_the_dimension_takes(
    client: httpx2.Client, sqlite_url: str, path: str, value: object, expected: str
) -> None:
    """Used to be: ``{"value": true}`` answered pydantic's union error ("Input should be
    a valid number; Input should be a valid integer; Input should be a valid string").
    Now: one sentence saying what this dimension takes (its range, or its categories)
    and what was sent, and nothing is written."""
    response = client.put(path, json={"value": value})
    assert response.status_code == 422, response.text
    assert response.json() == {"detail": f"body.value: {expected}"}
    assert "Input should" not in response.text
    assert _history(sqlite_url, "alice") == []


@pytest.mark.parametrize(
    ("quoted", "named"),
    [
        ("a%07b", "U+0007, a control character,"),
        ("a%E2%80%8Bb", "U+200B, a format character,"),
        ("%EF%BB%BFbob", "U+FEFF, a format character,"),
        ("x%EF%B7%90", "U+FDD0, a noncharacter,"),
    ],
)
def test_a_refused_character_in_the_id_is_named_by_its_code_point(
    client: httpx2.Client, quoted: str, named: str
) -> None:
    """Used to be: a control or format character in the id answered the raw regex (a page
    of ranges), later a list of every kind refused. Now: the answer names the first
    refused character by code point and kind, and quotes neither the id nor a pattern."""
    for response in (
        client.get(f"/personality/{quoted}"),
        client.put(f"/personality/{quoted}/dimensions/communication_formality", json={"value": 1}),
    ):
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert detail == f"path.user_id: {named} is not allowed in a user id"
        assert "[^" not in detail and "\\u" not in detail


def test_a_503_names_the_database_once_and_no_host_or_port(redis_url: str, namespace: str) -> None:
    """Used to be: a 503 repeated itself ("the database is unavailable: ... unavailable")
    and quoted the driver's host and port. Now, over a real server: one sentence, once,
    with Retry-After, and no host, port or database name, on a read and on a write."""
    url = "postgresql+psycopg://nobody@127.0.0.1:1/nowhere?connect_timeout=1"
    for client in _served(_settings(redis_url, url, namespace)):
        answers = [client.get("/personality/alice"), client.put(FORMALITY, json={"value": 0.5})]
    for answer in answers:
        assert answer.status_code == 503, answer.text
        detail = answer.json()["detail"]
        assert detail == "the database is unavailable; retry after Retry-After seconds"
        assert detail.count("unavailable") == 1
        assert answer.headers["Retry-After"] == "1"
        for leak in ("127.0.0.1", "nobody", "nowhere", "psycopg", "port"):
            assert leak not in answer.text


# -- pages for people --------------------------------------------------------------------


class _Links(HTMLParser):
    """Every ``href`` and ``src`` of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in {"href", "src"} and v]


def _links(page: str) -> list[str]:
    parser = _Links()
    parser.feed(page)
    return parser.urls


def test_docs_load_only_assets_the_service_serves(client: httpx2.Client) -> None:
    """Used to be: /docs loaded Swagger UI's script and stylesheet from cdn.jsdelivr.net
    and its icon from fastapi.tiangolo.com: blank offline. Now: /docs and /redoc name
    only local URLs (no scheme, no host; the page's script names only the local OpenAPI
    document), each of which answers 200 with a fitting type, Swagger UI 5 (which reads
    OpenAPI 3.1) included."""
    for page in ("/docs", "/redoc"):
        response = client.get(page)
        assert response.status_code == 200
        urls = _links(response.text)
        assert urls, page
        for url in urls:
            assert url.startswith("/") and not url.startswith("//"), (page, url)
            asset = client.get(url)
            assert asset.status_code == 200, (page, url)
            assert asset.content, url
        assert "cdn." not in response.text and "googleapis" not in response.text
    assert "url: '/openapi.json'" in client.get("/docs").text
    bundle = client.get("/static/docs/swagger-ui-bundle.js")
    assert "javascript" in bundle.headers["content-type"]
    assert re.search(r'"5\.\d+\.\d+"', bundle.text)
    assert client.get("/openapi.json").json()["openapi"].startswith("3.1")


@pytest.mark.parametrize("page", ["docs", "redoc"])
def test_docs_render_in_a_browser_that_reaches_no_other_host(
    client: httpx2.Client, page: str
) -> None:
    """Used to be: offline, /docs was a blank page (its script never loaded). Now:
    headless Chromium, resolving no host but 127.0.0.1, renders the API's operations
    (Swagger UI's ``opblock`` elements; ReDoc's operation paths), with no "Unable to
    render" error."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no chromium (Debian's chromium package)")
    done = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--virtual-time-budget=8000",
            "--dump-dom",
            f"{client.base_url}/{page}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    dom = done.stdout
    assert "/personality/{user_id}/dimensions/{name}" in dom, done.stderr[-2000:]
    assert "Unable to render" not in dom
    if page == "docs":
        assert len(re.findall(r'class="opblock ', dom)) >= 5


def test_the_root_is_a_landing_page_whose_links_answer(client: httpx2.Client) -> None:
    """Used to be: ``GET /`` (the URL ``make run`` prints) answered 404. Now: 200, an
    HTML page that says what the service is and links /docs, /healthz, /readyz and
    /metrics, each of which answers 200."""
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "personality" in response.text.lower() and "Redis" in response.text
    links = {str(response.url.join(url).path) for url in _links(response.text)}
    assert {"/docs", "/healthz", "/readyz", "/metrics"} <= links
    for link in sorted(links):
        assert client.get(link).status_code == 200, link


# -- the command line ---------------------------------------------------------------------


def _cli_env(redis_url: str, sqlite_url: str, namespace: str) -> dict[str, str]:
    return {
        **os.environ,
        "PENNY_REDIS_URL": redis_url,
        "PENNY_DATABASE_URL": sqlite_url,
        "PENNY_NAMESPACE": namespace,
    }


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_a_busy_port_is_one_line(
    redis_url: str, sqlite_url: str, namespace: str, workers: str
) -> None:
    """Used to be: ``serve`` on a taken port printed uvicorn's "[Errno 98] Address already
    in use" (with --workers above 1, naming no port) after starting up, or an OSError
    traceback. Now: one line on stderr naming the port, exit status 1, before any
    worker starts."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["serve", "--host", "127.0.0.1", "--port", str(port), "--workers", workers]
        done = subprocess.run(
            [sys.executable, "-m", "penny_cache.app.cli", *args],
            env=_cli_env(redis_url, sqlite_url, namespace),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert lines == [
        f"penny-cache: port {port} is already in use on 127.0.0.1: stop its listener or pass --port"
    ]
    assert "Traceback" not in done.stdout + done.stderr


def test_serve_says_it_listens_on_every_interface(
    redis_url: str, sqlite_url: str, namespace: str
) -> None:
    """Used to be: ``serve`` listened on 0.0.0.0 by default and printed only the URL.
    Now: a start line says which address it listens on and that 0.0.0.0 is every
    interface (with the flag for this machine only), and the service answers there."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "penny_cache.app.cli",
            "serve",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=_cli_env(redis_url, sqlite_url, namespace),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(3)]
        expected = f"0.0.0.0:{port}, every interface (--host 127.0.0.1: this machine only)"
        assert f"listening on     {expected}\n" in lines
        _wait_for(lambda: _answers(port), "the service to answer")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(_DEADLINE)


def _answers(port: int) -> bool:
    try:
        return httpx2.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx2.HTTPError:
        return False
