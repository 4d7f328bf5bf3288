"""HTTP version tokens and strict-mode refusals, on a real redis-server and SQLite.

Two apps (each with its own cache, near cache and listener, as two uvicorn workers)
share one Redis and one database; each is driven by a keep-alive client.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from penny_cache.app.embedded import RedisServerProcess
from penny_cache.app.service import create_app
from penny_cache.config import Settings

pytestmark = pytest.mark.integration

FORMALITY = "/personality/{user}/dimensions/communication_formality"


def _settings(url: str, sqlite_url: str, namespace: str, **extra: object) -> Settings:
    return Settings(
        redis_url=url,
        database_url=sqlite_url,
        namespace=namespace,
        stats_flush_interval=0.05,
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
def two_workers(
    redis_url: str, sqlite_url: str, namespace: str
) -> Iterator[tuple[TestClient, TestClient]]:
    settings = _settings(redis_url, sqlite_url, namespace)
    with (
        TestClient(create_app(settings)) as first,
        TestClient(create_app(settings)) as second,
    ):
        yield first, second


def test_a_get_with_the_puts_version_on_another_worker_always_sees_it(
    two_workers: tuple[TestClient, TestClient],
) -> None:
    """PUT on one worker answers the committed version in its body and as ETag "<v>";
    a GET on the other worker with ?min_version=<v>, its near cache warm with the
    previous version, answers that version or newer, every time (40 rounds)."""
    first, second = two_workers
    for round_ in range(40):
        user = f"u{round_ % 4}"
        second.get(f"/personality/{user}")  # warm: the old version in its caches
        second.get(f"/personality/{user}")
        put = first.put(FORMALITY.format(user=user), json={"value": (round_ % 10) / 10})
        assert put.status_code == 200, put.text
        version = put.json()["version"]
        assert put.headers["ETag"] == f'"{version}"'
        got = second.get(f"/personality/{user}", params={"min_version": version})
        assert got.status_code == 200, got.text
        assert got.json()["version"] >= version


def test_the_fast_path_answers_a_near_hit_only_when_new_enough(
    two_workers: tuple[TestClient, TestClient],
) -> None:
    """A min_version at or below the near-cached version is a near hit; one above it
    falls through to the route, which reads past the near cache (SQL answers)."""
    first, _ = two_workers
    first.put(FORMALITY.format(user="ann"), json={"value": 0.7})
    assert first.get("/personality/ann").json()["version"] == 1
    assert first.get("/personality/ann?min_version=1").json()["version"] == 1
    assert first.get("/personality/ann?min_version=0").json()["version"] == 1
    # a version nobody has committed yet: the route answers the newest there is
    assert first.get("/personality/ann?min_version=5").json()["version"] == 1


@pytest.mark.parametrize("bad", ["-1", "x", "1.5", ""])
def test_a_bad_min_version_is_a_422_with_a_plain_message(
    two_workers: tuple[TestClient, TestClient], bad: str
) -> None:
    """min_version must be a whole number >= 0: otherwise 422 whose detail names it."""
    first, _ = two_workers
    answer = first.get(f"/personality/ann?min_version={bad}")
    assert answer.status_code == 422, answer.text
    assert "min_version" in answer.json()["detail"]


def test_openapi_documents_min_version_and_the_etag(
    two_workers: tuple[TestClient, TestClient],
) -> None:
    """The schema states the min_version query parameter (integer >= 0) of the GET and
    the ETag header of the PUT's answer."""
    first, _ = two_workers
    paths = first.get("/openapi.json").json()["paths"]
    [parameter] = [
        p
        for p in paths["/personality/{user_id}"]["get"]["parameters"]
        if p["name"] == "min_version"
    ]
    assert parameter["in"] == "query" and not parameter.get("required", False)
    put = paths["/personality/{user_id}/dimensions/{name}"]["put"]
    assert "ETag" in put["responses"]["200"]["headers"]
    assert "strict" in put["responses"]["503"]["description"].lower()


def test_a_strict_update_redis_cannot_take_is_a_503_with_retry_after(
    own_redis: RedisServerProcess, sqlite_url: str, namespace: str
) -> None:
    """PENNY_WRITE_MODE=strict with Redis stopped: the PUT answers 503, Retry-After the
    breaker cooldown in whole seconds, and a body saying strict mode refused it; the
    version is unchanged (a GET, answered from SQL, still says 0)."""
    settings = _settings(
        own_redis.url, sqlite_url, namespace, write_mode="strict", redis_cooldown=2.5
    )
    with TestClient(create_app(settings)) as client:
        assert client.get("/personality/ann").json()["version"] == 0
        own_redis.stop()
        put = client.put(FORMALITY.format(user="ann"), json={"value": 0.9})
        assert put.status_code == 503, put.text
        assert put.headers["Retry-After"] == "3"
        assert "strict write mode refused" in put.json()["detail"]
        assert client.get("/personality/ann?min_version=0").json()["version"] == 0
