"""Bad state in the shared counter hashes, on a real redis-server: contained to itself.

Anyone with the service's Redis credential may ``HSET`` a counters hash or ``SET`` over it;
what they write there must cost a skipped field or a failed flush (reported), never a
request, a scrape or a readiness answer that lies.
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from penny_cache.app.embedded import RedisServerProcess
from penny_cache.app.exporter import registry_for_redis, serve
from penny_cache.app.service import STATS_MAX_AGE, create_app
from penny_cache.cache import AsyncPersonalityCache, PersonalityCache
from penny_cache.config import Settings
from penny_cache.keys import KeySchema
from penny_cache.personality_state_cache import PersonalityStateCache
from tests.conftest import FakeClock

pytestmark = pytest.mark.integration

FORMALITY = "/personality/alice/dimensions/communication_formality"
# what an attacker (or a script gone wrong) writes; each is one field that does not parse
BAD_FIELDS: dict[Any, Any] = {
    "x|hits": "abc",  # not an integer
    "y|hits": "-5",  # negative
    "z|bogus": "1",  # not a counter
    "nopipe": "1",  # not <process>|<counter>
    "w|misses": "9" * 30,  # absurdly large
}


def _wait(condition: Callable[[], bool], what: str, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _scrape(base: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


@pytest.fixture
def exporter(own_redis: RedisServerProcess, namespace: str) -> Iterator[str]:
    registry, close = registry_for_redis(own_redis.url, namespace, "t", timeout=0.2)
    server = serve(registry, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    close()


def _app(url: str, sqlite_url: str, namespace: str, clock: FakeClock) -> TestClient:
    settings = Settings(
        redis_url=url, database_url=sqlite_url, namespace=namespace, stats_flush_interval=0.05
    )
    return TestClient(create_app(settings, monotonic=clock))


def test_a_bad_counter_field_fails_no_request_and_no_scrape(
    own_redis: RedisServerProcess,
    sqlite_url: str,
    namespace: str,
    clock: FakeClock,
    exporter: str,
) -> None:
    """Used to happen: ``HSET '{penny:stats:3}:v1:counters' 'x|hits' abc`` made summing the
    counters raise: as filed, every GET and PUT answered 500 (the PUT after committing);
    on the code this fix started from, the service's background read swallowed it, so
    the answers' cache block stayed at zeros, ``shared`` false, for ever (a warning per
    second per worker), and the exporter's /metrics answered 500. Now each field that
    does not parse is skipped and counted: requests answer 200 with the shared totals,
    the exporter says ``penny_cache_up 1`` with ``penny_cache_stats_fields_invalid 5``,
    /readyz is ready (the process still counts)."""
    shard = KeySchema(namespace).all_counters()[3]
    redis.Redis.from_url(own_redis.url).hset(shard, mapping=BAD_FIELDS)
    with _app(own_redis.url, sqlite_url, namespace, clock) as client:
        for n in range(1, 4):
            assert client.get("/personality/alice").status_code == 200
            put = client.put(FORMALITY, json={"value": 0.1 * n})
            assert put.status_code == 200, put.text
            assert put.json()["version"] == n
            clock.advance(STATS_MAX_AGE)
        _wait(lambda: client.get("/personality/alice").json()["cache"]["hits"] > 0, "hits")
        assert client.get("/personality/alice").json()["cache"]["shared"] is True
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["counting"] is True
    metrics = _scrape(exporter)
    assert metrics["penny_cache_up"] == 1.0
    assert metrics["penny_cache_stats_fields_invalid"] == len(BAD_FIELDS)
    assert metrics["penny_cache_requests_total"] >= 3


def test_both_library_faces_and_the_drop_in_skip_bad_fields(
    own_redis: RedisServerProcess, namespace: str
) -> None:
    """Used to happen: ``get_stats()`` raised ``ValueError`` from ``int('abc')`` on the
    sync and asyncio caches and the drop-in. Now each answers the shared totals of the
    fields that parse, with the bad ones counted."""
    shard = KeySchema(namespace).all_counters()[3]
    redis.Redis.from_url(own_redis.url).hset(shard, mapping=BAD_FIELDS | {"p|hits": "7"})
    with PersonalityCache.from_url(own_redis.url, namespace=namespace) as cache:
        stats = cache.get_stats()
        assert stats["shared"] is True and stats["hits"] == 7
        assert stats["stats_fields_invalid"] == len(BAD_FIELDS)

    async def read() -> dict[str, object]:
        async with AsyncPersonalityCache.from_url(own_redis.url, namespace=namespace) as cache:
            return await cache.get_stats()

    stats = asyncio.run(read())
    assert stats["shared"] is True and stats["hits"] == 7
    assert stats["stats_fields_invalid"] == len(BAD_FIELDS)
    drop_in = PersonalityStateCache(redis_url=own_redis.url, namespace=namespace)
    assert drop_in.get_stats()["hits"] == 7


def test_a_counters_key_of_another_type_is_repaired_and_keeps_everyone_ready(
    own_redis: RedisServerProcess,
    sqlite_url: str,
    namespace: str,
    clock: FakeClock,
    exporter: str,
) -> None:
    """Used to happen: a ``SET`` (or a LIST) over a counters hash made every read of the
    totals fail with WRONGTYPE; then (first fix) every process writing there was refused
    and went not ready, so one planted key per shard took the whole fleet out of
    rotation. Now requests answer 200 and /readyz stays ready: the process whose flush is
    refused unlinks the key that is not a hash (it holds no counts of ours), and its next
    flush remakes it; the exporter keeps answering (``penny_cache_up 1``) and counts the
    shards still of another type in ``penny_cache_stats_keys_invalid``."""
    keys = KeySchema(namespace).all_counters()
    raw = redis.Redis.from_url(own_redis.url)
    for key in keys[1:]:
        raw.set(key, "not a hash")
    raw.rpush(keys[0], "a list")
    with _app(own_redis.url, sqlite_url, namespace, clock) as client:
        assert client.get("/personality/alice").status_code == 200
        assert client.put(FORMALITY, json={"value": 0.3}).status_code == 200
        _wait(lambda: _scrape(exporter).get("penny_cache_requests_total", 0) >= 1, "counted")
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["counting"] is True
        worker = {
            s.name: s.value
            for f in text_string_to_metric_families(client.get("/metrics").text)
            for s in f.samples
        }
        assert worker["penny_cache_stats_flush_failures_total"] >= 1
        metrics = _scrape(exporter)
        assert metrics["penny_cache_up"] == 1.0
        assert metrics["penny_cache_stats_keys_invalid"] == len(keys) - 1
        assert sum(raw.type(key) == b"hash" for key in keys) == 1


def test_a_counters_key_of_another_type_on_the_library_faces(
    own_redis: RedisServerProcess, namespace: str
) -> None:
    """The sync cache's first flush is refused and says so (False), unlinks the key of
    another type and counts the repair; the next flush lands and the process never stops
    counting. ``get_stats`` answers from the shards that are hashes, the others counted."""
    keys = KeySchema(namespace).all_counters()
    raw = redis.Redis.from_url(own_redis.url)
    for key in keys:
        raw.set(key, "not a hash")
    with PersonalityCache.from_url(
        own_redis.url, namespace=namespace, stats_flush_interval=None
    ) as cache:
        assert cache.get("nobody") is None
        assert cache.flush_stats() is False
        assert cache.counting is True
        assert cache.flush_stats() is True
        stats = cache.get_stats()
        assert stats["shared"] is True and stats["stats_keys_invalid"] == len(keys) - 1
        assert stats["misses"] == 1
