"""The service's read path is as lean as the library's: a near-cache GET makes no Redis
or SQL round trip, never waits for the shared totals, and is encoded once, in the
documented shape."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from penny_cache.app.schema import CacheBlock, PersonalityView, encode_personality
from penny_cache.app.service import STATS_MAX_AGE, create_app
from penny_cache.config import Settings
from penny_cache.state import apply_update, default_state
from tests.conftest import FakeClock, FakeUTCClock

pytestmark = pytest.mark.integration

_DEADLINE = 10.0


@pytest.fixture
def app(redis_url: str, sqlite_url: str, namespace: str, clock: FakeClock) -> FastAPI:
    settings = Settings(redis_url=redis_url, database_url=sqlite_url, namespace=namespace)
    return create_app(settings, monotonic=clock)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=True) as test_client:
        yield test_client


def _until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + _DEADLINE
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def _near_cached(client: TestClient, app: FastAPI, user: str) -> None:
    """GET ``user`` until this worker's near cache holds it (the listener must first
    prove its subscription before the near cache is trusted)."""
    cache = app.state.service.tracker.cache

    def held() -> bool:
        assert client.get(f"/personality/{user}").status_code == 200
        return cache.near_get(user) is not None

    _until(held, f"{user} in the near cache")


def test_a_near_hit_makes_no_redis_or_sql_round_trip(
    client: TestClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a user is in the near cache, GETs answer with the Redis operations, the SQL
    load and the shared-totals read all made to fail: none of them is on the path."""
    _near_cached(client, app, "alice")
    tracker = app.state.service.tracker
    calls: list[str] = []

    def refuse(name: str) -> Callable[..., Any]:
        def called(*_args: Any, **_kwargs: Any) -> Any:
            calls.append(name)
            raise AssertionError(f"{name} on a near hit")

        return called

    monkeypatch.setattr(tracker.cache, "run_op", refuse("redis"))
    monkeypatch.setattr(tracker.store, "load", refuse("sql"))
    monkeypatch.setattr(app.state.service.stats, "read", refuse("stats"))
    for _ in range(20):
        response = client.get("/personality/alice")
        assert response.status_code == 200
        assert response.json()["user_id"] == "alice"
    assert calls == []


def test_a_stuck_totals_read_never_holds_a_request(
    client: TestClient, app: FastAPI, clock: FakeClock
) -> None:
    """With the shared-totals read stuck (Redis slow), GETs after the reuse window still
    answer at once with the last totals; when the read finally returns, later answers
    carry it. Only one read is started per window, however many requests arrive."""
    stats = app.state.service.stats
    before = client.get("/personality/bob").json()["cache"]
    release = threading.Event()
    reads: list[int] = []
    fresh = {"hit_rate": 0.5, "hits": 7, "misses": 7, "shared": True}

    async def stuck() -> dict[str, Any]:
        import asyncio

        reads.append(1)
        await asyncio.to_thread(release.wait, _DEADLINE)
        return fresh

    stats.read = stuck
    clock.advance(STATS_MAX_AGE)
    try:
        for _ in range(5):
            answer = client.get("/personality/bob")
            assert answer.status_code == 200
            assert answer.json()["cache"] == before
        assert len(reads) == 1
    finally:
        release.set()
    expected = {"hit_rate": 0.5, "hit_rate_percent": "50.0%", "hits": 7, "misses": 7}
    _until(
        lambda: client.get("/personality/bob").json()["cache"] == {**expected, "shared": True},
        "the stuck read's totals in an answer",
    )


def test_the_encoded_answer_is_the_documented_shape(utc_clock: FakeUTCClock) -> None:
    """The msgspec-encoded body parses to exactly what the pydantic ``PersonalityView``
    (the OpenAPI ``response_model``) would have produced for the same state, numeric and
    categorical values alike."""
    state = default_state("zoë", utc_clock())
    state = apply_update(state, "humor_style_preference", "dry", 0.1, utc_clock())
    state = apply_update(state, "communication_formality", 0.8125, 0.05, utc_clock())
    block = CacheBlock(0.25, "25.0%", 1, 3, shared=True)
    body = encode_personality(state, block)
    reference = PersonalityView.model_validate(
        {
            "user_id": state.user_id,
            "version": state.version,
            "updated_at": state.updated_at,
            "dimensions": {
                name: {"value": dim.value, "confidence": dim.confidence}
                for name, dim in state.dimensions.items()
            },
            "overall_confidence": round(state.overall_confidence, 6),
            "vocabulary_count": None,
            "cache": {"hit_rate": 0.25, "hit_rate_percent": "25.0%", "hits": 1, "misses": 3,
                      "shared": True},
        }
    )  # fmt: skip
    assert json.loads(body) == json.loads(reference.model_dump_json())
    assert PersonalityView.model_validate_json(body) == reference


def test_openapi_still_documents_the_personality_answer(app: FastAPI) -> None:
    """Returning pre-encoded bytes does not lose the schema: both personality routes'
    200 answers are documented as ``PersonalityView``."""
    paths = app.openapi()["paths"]
    for path, method in (
        ("/personality/{user_id}", "get"),
        ("/personality/{user_id}/dimensions/{name}", "put"),
    ):
        ok = paths[path][method]["responses"]["200"]["content"]["application/json"]
        assert ok["schema"]["$ref"].endswith("/PersonalityView")


def test_a_near_hit_is_answered_before_fastapi_with_the_routes_bytes(
    client: TestClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A near hit is answered at the ASGI layer (the tracker's read, which the FastAPI
    route calls, is made to fail and is not reached), with the very body and headers the
    route gave for the same state and totals; a user not in the near cache still goes
    through the route."""
    routed = client.get("/personality/alice")
    _near_cached(client, app, "alice")
    tracker = app.state.service.tracker

    async def unreachable(user_id: str, **_options: object) -> Any:
        raise AssertionError(f"the route ran for {user_id}")

    monkeypatch.setattr(tracker, "get_current_personality_state", unreachable)
    fast = client.get("/personality/alice")
    assert fast.status_code == 200
    assert fast.content == routed.content
    assert dict(fast.headers) == dict(routed.headers)
    with pytest.raises(AssertionError, match="the route ran for bob"):
        client.get("/personality/bob")


@pytest.mark.parametrize(
    ("user_id", "accepted"),
    [
        ("alice", True),
        ("zoë 😀", True),
        ("u" * 64, True),
        ("u" * 65, False),
        ("a\n", False),
        ("a\x7f", False),
        ("a\x9f", False),
        ("\x00", False),
    ],
)
def test_the_fast_path_accepts_exactly_the_routes_user_ids(
    client: TestClient, user_id: str, accepted: bool
) -> None:
    """The fast path's user-id check agrees with the route's (1-64 characters, no
    control characters; Python's ``$`` would let a final newline through, so the check
    uses fullmatch), so it never answers an id the route refuses."""
    from urllib.parse import quote

    from penny_cache.app.service import _acceptable_user_id

    assert _acceptable_user_id(user_id) is accepted
    status = client.get("/personality/" + quote(user_id, safe="")).status_code
    assert (status == 200) is accepted, status
