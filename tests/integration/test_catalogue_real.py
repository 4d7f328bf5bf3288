"""An application's catalogue on a real redis-server: entries written under another
catalogue decode (or are a counted miss, never a crash), and the HTTP API follows the
catalogue it was given."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from penny_cache.app.service import app_from_env, create_app
from penny_cache.cache import PersonalityCache
from penny_cache.catalogue import Catalogue, DimensionSpec
from penny_cache.config import Settings
from penny_cache.state import PersonalityState
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import PersonalityTracker

pytestmark = pytest.mark.integration

SASSY = Catalogue.penny().with_dimensions(
    DimensionSpec.continuous("sass_level", 0.5, learning_rate=0.2),
    DimensionSpec.categorical("humor_frequency", "sometimes", ("rarely", "sometimes", "often")),
)


class CountingStore(PersonalityStore):
    """A real store that counts SQL loads."""

    loads = 0

    def load(self, user_id: str) -> PersonalityState:
        self.loads += 1
        return super().load(user_id)


@pytest.fixture
def caches(redis_url: str, namespace: str) -> Iterator[tuple[PersonalityCache, PersonalityCache]]:
    """Two caches on one Redis, as two processes would hold (no near cache: every read
    goes to Redis, so what is asserted is what Redis holds)."""
    options: dict[str, Any] = {"namespace": namespace, "near_cache": False}
    with (
        PersonalityCache.from_url(redis_url, **options) as first,
        PersonalityCache.from_url(redis_url, **options) as second,
    ):
        yield first, second


def test_entries_of_the_old_catalogue_are_hits_under_the_new(
    sqlite_url: str, caches: tuple[PersonalityCache, PersonalityCache]
) -> None:
    """A Penny-catalogue process caches alice; a process on SASSY (same database, same
    Redis) reads her entry as a hit without touching SQL, the new dimensions at their
    defaults; its update of sass_level is then seen by the old process, whose view keeps
    only its own dimensions while the entry keeps sass_level for the new one."""
    old_cache, new_cache = caches
    old = PersonalityTracker(PersonalityStore(sqlite_url), old_cache, outbox_interval=None)
    old.update_personality_dimension("alice", "communication_formality", 0.8, 0.1)
    store = CountingStore(sqlite_url, catalogue=SASSY)
    new = PersonalityTracker(store, new_cache, outbox_interval=None)
    seen = new.get_current_personality_state("alice")
    assert store.loads == 0 and new_cache.local_stats()["hits"] == 1
    assert seen.dimensions["communication_formality"].value == 0.8
    assert seen.dimensions["sass_level"].value == 0.5
    new.update_personality_dimension("alice", "sass_level", 0.9)
    old_view = old.get_current_personality_state("alice")
    assert old_view.version == 2 and "sass_level" not in old_view.dimensions
    old.update_personality_dimension("alice", "communication_formality", 0.3)
    again = new.get_current_personality_state("alice")  # written through by the old process
    assert (again.version, again.dimensions["sass_level"].value) == (3, 0.9)
    assert store.loads == 0
    for tracker in (old, new):
        tracker.close()
        tracker.store.close()


def test_an_undecodable_entry_is_a_counted_miss(
    sqlite_url: str, redis_url: str, caches: tuple[PersonalityCache, PersonalityCache]
) -> None:
    """An entry no catalogue can read (a value of the wrong kind for a Penny dimension) is a
    miss counted as a decode error, answered from SQL: never an exception."""
    cache = caches[0]
    store = CountingStore(sqlite_url, catalogue=SASSY)
    tracker = PersonalityTracker(store, cache, outbox_interval=None)
    tracker.update_personality_dimension("erin", "sass_level", 0.7)
    bad = b'{"schema":1,"version":1,"user":"erin","state":{"user_id":"erin","version":1,'
    bad += b'"updated_at":"2026-01-01T00:00:00Z","dimensions":{"communication_formality":'
    bad += b'{"value":"loud","confidence":0.3,"learning_rate":0.1,"value_type":"continuous",'
    bad += b'"last_updated":"2026-01-01T00:00:00Z"}}}}'
    redis.Redis.from_url(redis_url).set(cache.keys.state("erin"), bad)
    state = tracker.get_current_personality_state("erin")
    assert state.dimensions["sass_level"].value == 0.7
    assert store.loads == 1 and cache.local_stats()["decode_errors"] == 1
    tracker.close()
    store.close()


@pytest.fixture
def client(redis_url: str, sqlite_url: str, namespace: str) -> Iterator[TestClient]:
    settings = Settings(redis_url=redis_url, database_url=sqlite_url, namespace=namespace)
    with TestClient(create_app(settings, catalogue=SASSY)) as test_client:
        yield test_client


def test_http_api_follows_the_catalogue(client: TestClient, sqlite_url: str) -> None:
    """With create_app(catalogue=SASSY): GET lists sass_level and humor_frequency, PUT
    commits them (history included), an option SASSY does not declare is a 422 and a
    dimension it does not declare a 404."""
    body = client.get("/personality/dave").json()
    assert list(body["dimensions"]) == list(SASSY)
    put = client.put("/personality/dave/dimensions/sass_level", json={"value": 0.9})
    assert put.status_code == 200, put.text
    assert put.json()["dimensions"]["sass_level"]["value"] == 0.9
    put = client.put("/personality/dave/dimensions/humor_frequency", json={"value": "often"})
    assert put.status_code == 200, put.text
    assert client.get("/personality/dave").json()["dimensions"]["humor_frequency"]["value"] == (
        "often"
    )
    bad = client.put("/personality/dave/dimensions/humor_frequency", json={"value": "always"})
    assert bad.status_code == 422 and "rarely, sometimes, often" in bad.json()["detail"]
    unknown = client.put("/personality/dave/dimensions/volume", json={"value": 0.1})
    assert unknown.status_code == 404
    with PersonalityStore(sqlite_url, catalogue=SASSY) as store:
        assert [r.dimension for r in store.history("dave")] == ["sass_level", "humor_frequency"]


def test_http_api_of_penny_refuses_an_undeclared_dimension(
    redis_url: str, sqlite_url: str, namespace: str
) -> None:
    """The default service (Penny's catalogue) answers 404 for sass_level."""
    settings = Settings(redis_url=redis_url, database_url=sqlite_url, namespace=namespace)
    with TestClient(create_app(settings)) as client:
        put = client.put("/personality/dave/dimensions/sass_level", json={"value": 0.9})
        assert put.status_code == 404 and "sass_level" in put.json()["detail"]


def test_service_reads_the_catalogue_named_by_penny_catalogue(
    redis_url: str, sqlite_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """penny-cache serve's factory serves the catalogue PENNY_CATALOGUE names."""
    monkeypatch.setenv("PENNY_REDIS_URL", redis_url)
    monkeypatch.setenv("PENNY_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("PENNY_NAMESPACE", namespace)
    monkeypatch.setenv("PENNY_CATALOGUE", f"{__name__}:SASSY")
    with TestClient(app_from_env()) as client:
        put = client.put("/personality/eve/dimensions/sass_level", json={"value": 0.1})
        assert put.status_code == 200, put.text
