"""The HTTP service in-process (FastAPI TestClient) on a real redis-server and SQLite."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from penny_cache.app.embedded import RedisServerProcess
from penny_cache.app.service import MAX_BODY_BYTES, STATS_MAX_AGE, app_from_env, create_app
from penny_cache.config import Settings
from penny_cache.state import CATALOGUE
from penny_cache.store.database import PersonalityStore
from tests.conftest import FakeClock

pytestmark = pytest.mark.integration

FORMALITY = "/personality/alice/dimensions/communication_formality"


def _settings(redis_url: str, sqlite_url: str, namespace: str) -> Settings:
    return Settings(
        redis_url=redis_url,
        database_url=sqlite_url,
        namespace=namespace,
        stats_flush_interval=0.05,
    )


@pytest.fixture
def client(redis_url: str, sqlite_url: str, namespace: str) -> Iterator[TestClient]:
    app = create_app(_settings(redis_url, sqlite_url, namespace))
    with TestClient(app, raise_server_exceptions=True) as test_client:
        yield test_client


def _history_rows(sqlite_url: str, user_id: str) -> int:
    store = PersonalityStore(sqlite_url)
    try:
        return len(store.history(user_id, None, 30))
    finally:
        store.close()


def test_get_returns_state_and_shared_cache_stats(client: TestClient) -> None:
    """GET answers the original shape: every dimension with value and confidence, overall
    confidence, version, and a cache object whose counts grow with the requests made."""
    first = client.get("/personality/alice")
    assert first.status_code == 200
    body = first.json()
    assert body["user_id"] == "alice" and body["version"] == 0
    assert set(body["dimensions"]) == set(CATALOGUE)
    assert body["dimensions"]["communication_formality"] == {"value": 0.5, "confidence": 0.3}
    assert body["overall_confidence"] == pytest.approx(0.3)
    assert set(body["cache"]) == {"hit_rate", "hit_rate_percent", "hits", "misses", "shared"}
    assert body["cache"]["shared"] is True
    assert first.headers["X-Penny-Worker"].isdigit()


def test_put_commits_and_the_next_get_sees_it(client: TestClient, sqlite_url: str) -> None:
    """PUT commits the next version with the given value and confidence, returns it, and a
    later GET (served by the cache) returns that version, not the one cached before."""
    assert client.get("/personality/alice").json()["version"] == 0
    put = client.put(FORMALITY, json={"value": 0.9, "confidence": 0.75, "context": "test"})
    assert put.status_code == 200, put.text
    assert put.json()["version"] == 1
    assert put.json()["dimensions"]["communication_formality"] == {
        "value": 0.9,
        "confidence": 0.75,
    }
    again = client.get("/personality/alice").json()
    assert again["version"] == 1
    assert again["dimensions"]["communication_formality"]["value"] == 0.9
    assert _history_rows(sqlite_url, "alice") == 1


def test_put_without_confidence_keeps_it_and_accepts_categories(client: TestClient) -> None:
    """A categorical dimension takes one of its options; an omitted confidence is kept."""
    put = client.put("/personality/bob/dimensions/humor_style_preference", json={"value": "dry"})
    assert put.status_code == 200, put.text
    assert put.json()["dimensions"]["humor_style_preference"] == {"value": "dry", "confidence": 0.3}


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/personality/alice/dimensions/charisma", {"value": 0.5}, 404, "charisma"),
        (FORMALITY, {"value": 1.5}, 422, "[0, 1]"),
        (FORMALITY, {"value": "formal"}, 422, "[0, 1]"),
        (FORMALITY, {"value": True}, 422, "value"),
        (FORMALITY, {"value": 0.5, "confidence": -0.1}, 422, "confidence"),
        (FORMALITY, {"value": 0.5, "extra": 1}, 422, "extra"),
        (FORMALITY, {}, 422, "value"),
        ("/personality/alice/dimensions/humor_style_preference", {"value": "loud"}, 422, "one of"),
        ("/personality/a%0Ab/dimensions/communication_formality", {"value": 0.5}, 422, "user_id"),
    ],
)
def test_bad_input_is_a_clear_4xx_and_writes_nothing(
    client: TestClient, sqlite_url: str, path: str, body: dict[str, object], status: int, words: str
) -> None:
    """Unknown dimensions, out-of-range or mistyped values, unknown fields and bad user ids
    answer a 4xx whose message names the problem, and no version is committed."""
    response = client.put(path, json=body)
    assert response.status_code == status, response.text
    assert words in response.text
    assert _history_rows(sqlite_url, "alice") == 0


def test_malformed_json_and_nonfinite_numbers_are_422(client: TestClient, sqlite_url: str) -> None:
    """A body that is not JSON, or carries NaN/Infinity, is refused with 422, not a 500."""
    for raw in (b"{not json", b'{"value": NaN}', b'{"value": 0.5, "confidence": Infinity}'):
        response = client.put(FORMALITY, content=raw, headers={"Content-Type": "application/json"})
        assert response.status_code == 422, (raw, response.text)
    assert _history_rows(sqlite_url, "alice") == 0


def test_oversized_body_is_413(client: TestClient, sqlite_url: str) -> None:
    """A body over the limit is refused before it is parsed, whether it declares its
    length or arrives chunked (no Content-Length), names its worker, and writes nothing."""
    huge = b'{"value": 0.5, "context": "' + b"x" * MAX_BODY_BYTES + b'"}'
    response = client.put(FORMALITY, content=huge, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.headers["X-Penny-Worker"].isdigit()

    def chunks() -> Iterator[bytes]:
        yield b'{"value": 0.5, "context": "'
        for _ in range(64):
            yield b" " * 1024
        yield b'"}'

    chunked = client.put(FORMALITY, content=chunks(), headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413
    json_type = {"Content-Type": "application/json"}
    small = client.put(FORMALITY, content=iter([b'{"value": ', b"0.25}"]), headers=json_type)
    assert small.status_code == 200, small.text
    assert _history_rows(sqlite_url, "alice") == 1


def test_bad_user_id_on_get_is_422(client: TestClient) -> None:
    """A user id the cache cannot key (too long) is a 422 naming the user id."""
    response = client.get("/personality/" + "u" * 300)
    assert response.status_code == 422
    assert "user_id" in response.json()["detail"]


def test_health_readiness_metrics_and_openapi(client: TestClient) -> None:
    """/healthz is ok, /readyz reports SQL and Redis up, /metrics serves the per-process
    histograms after a request, and the OpenAPI schema lists both personality routes."""
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {
        "status": "ready",
        "sql": True,
        "redis": True,
        "counting": True,
    }
    client.get("/personality/carol")
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert 'penny_cache_operation_duration_seconds_count{operation="miss"} 1.0' in metrics.text
    paths = client.get("/openapi.json").json()["paths"]
    assert "/personality/{user_id}" in paths
    assert "put" in paths["/personality/{user_id}/dimensions/{name}"]


def _cache_block_until(
    client: TestClient, path: str, done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """GET ``path`` until its cache block satisfies ``done`` (a request starts the
    background reread of the totals; a later one shows it), or fail at the deadline."""
    deadline = time.monotonic() + 10
    while True:
        response = client.get(path)
        assert response.status_code == 200
        block: dict[str, Any] = response.json()["cache"]
        if done(block):
            return block
        assert time.monotonic() < deadline, f"the cache block stayed {block}"
        time.sleep(0.005)


def test_redis_down_is_degraded_not_dead(sqlite_url: str, namespace: str, clock: FakeClock) -> None:
    """With Redis gone, reads and writes still answer from SQL and /readyz says
    "degraded" with 200, so an orchestrator keeps the worker in rotation; once the
    stats' reuse window has passed, the background reread makes the cache object say
    it is not shared."""
    server = RedisServerProcess().start()
    app = create_app(_settings(server.url, sqlite_url, namespace), monotonic=clock)
    try:
        with TestClient(app) as client:
            assert client.get("/personality/dave").status_code == 200
            server.kill()
            assert client.put(FORMALITY, json={"value": 0.2}).json()["version"] == 1
            assert client.get("/personality/alice").json()["version"] == 1
            ready = client.get("/readyz")
            assert ready.status_code == 200
            assert ready.json() == {
                "status": "degraded",
                "sql": True,
                "redis": False,
                "counting": True,
            }
            clock.advance(STATS_MAX_AGE)
            _cache_block_until(client, "/personality/alice", lambda block: not block["shared"])
    finally:
        server.stop()


def test_stats_are_reused_for_a_second_then_reread(
    redis_url: str, sqlite_url: str, namespace: str, clock: FakeClock
) -> None:
    """A worker reads the shared totals at most once per STATS_MAX_AGE: within the window
    the cache object is unchanged, after it (one background read later) the counts
    include the requests since."""
    app = create_app(_settings(redis_url, sqlite_url, namespace), monotonic=clock)
    with TestClient(app) as client:
        first = client.get("/personality/frank").json()["cache"]
        for _ in range(3):
            assert client.get("/personality/frank").json()["cache"] == first
        app.state.service.tracker.cache.flush_stats()
        clock.advance(STATS_MAX_AGE)
        counted = first["hits"] + first["misses"]
        _cache_block_until(
            client, "/personality/frank", lambda block: block["hits"] + block["misses"] > counted
        )


def test_sql_down_is_503_and_not_ready(redis_url: str, namespace: str) -> None:
    """An unreachable database answers 503 with Retry-After on reads and /readyz."""
    url = "postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1"
    app = create_app(_settings(redis_url, url, namespace))
    with TestClient(app) as client:
        response = client.get("/personality/erin")
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert client.get("/readyz").status_code == 503


def test_readyz_is_not_ready_in_strict_mode_without_redis(sqlite_url: str, namespace: str) -> None:
    """Used to happen: /readyz said ready (200, "degraded") with Redis gone whatever the
    write mode, though in ``PENNY_WRITE_MODE=strict`` every update is then refused. Now
    a strict worker without Redis is not ready (503), and ready again once Redis is."""
    server = RedisServerProcess().start()
    settings = Settings(
        redis_url=server.url,
        database_url=sqlite_url,
        namespace=namespace,
        write_mode="strict",
        redis_cooldown=0.1,
    )
    try:
        with TestClient(create_app(settings)) as client:
            assert client.get("/readyz").status_code == 200
            server.kill()
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["redis"] is False and ready.json()["sql"] is True
            server.start()
            deadline = time.monotonic() + 10
            while client.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "never ready again"
                time.sleep(0.02)
    finally:
        server.stop()


def test_the_app_factory_refuses_bad_settings_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """uvicorn's factory (what each ``serve`` worker runs) used to raise the
    ``ConfigurationError`` as a traceback per worker; now it prints one line naming the
    variable and exits 2, and a misspelt ``PENNY_*`` name is warned about."""
    monkeypatch.setenv("PENNY_DATABASE_URL", " ")
    monkeypatch.setenv("PENNY_CACH_TTL", "5")
    with pytest.raises(SystemExit) as exited:
        app_from_env()
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [lines[-1]] and "PENNY_DATABASE_URL is set but empty" in lines[-1]
    assert "did you mean PENNY_CACHE_TTL?" in caplog.text
