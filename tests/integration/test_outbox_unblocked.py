"""Issue #16, item 5: rows whose replay keeps failing cannot block the outbox (real
redis-server, SQLite and PostgreSQL, both faces)."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any, Final

import pytest
import redis
from prometheus_client import CollectorRegistry

from penny_cache.cache import AsyncPersonalityCache, PersonalityCache
from penny_cache.config import Settings
from penny_cache.errors import CacheError
from penny_cache.keys import encode_user_id
from penny_cache.observe.metrics import ProcessMetrics
from penny_cache.policy.ops import CacheOp, WritePublish
from penny_cache.redis.backend import RedisBackend
from penny_cache.store.database import PersonalityStore
from penny_cache.store.outbox import OutboxSweeper
from penny_cache.tracker import AsyncPersonalityTracker, PersonalityTracker
from penny_cache.wiring import async_backend

pytestmark = pytest.mark.integration

DIM: Final = "communication_formality"
FAILING: Final = 150
REPLAYS_PER_PASS: Final = 100  # SweepLimits.replays
# the stated bound: grace + (1 + ceil(F / 100)) sweep intervals for F rows failing
PASSES_BOUND: Final = 1 + math.ceil(FAILING / REPLAYS_PER_PASS)


class _RefusingBackend(RedisBackend):
    """A real Redis that fails every write-through of the chosen users, as a key nobody
    can repair would, every time (the entries helper makes wrong-type keys repair
    themselves, so a LIST is not a failure that lasts)."""

    def __init__(self, client: Any, refused: set[str]) -> None:
        super().__init__(client)
        self._refused = {encode_user_id(user) for user in refused}

    def run(self, op: CacheOp) -> Any:
        if isinstance(op, WritePublish) and op.encoded_user in self._refused:
            raise CacheError("redis error: ResponseError: refused for this test")
        return super().run(op)


def _commit_behind_failures(store: PersonalityStore) -> set[str]:
    """150 committed versions whose writers died (no write-through), then one more, the
    newest row: the users of the 150."""
    bad = {f"bad-{n:03d}" for n in range(FAILING)}
    for user in sorted(bad):
        store.update_dimension(user, DIM, 0.5)
    store.update_dimension("good", DIM, 0.9)
    return bad


def _passes_until_published(sweeper: OutboxSweeper, published: Any) -> int:
    """Sweep (no grace: every row is due) until ``published()``; the passes it took."""
    for passes in range(1, 10):
        sweeper.sweep(grace=0.0)
        if published():
            return passes
    raise AssertionError("the good row was never published")


def test_rows_failing_every_time_do_not_block_a_later_row_sync(
    redis_url: str, database_url: str, namespace: str
) -> None:
    """What used to happen: a sweep replayed the 100 oldest rows only, so 150 rows whose
    replay fails every time were the whole of every pass and the good row behind them,
    a version whose writer died, was never published (SQL at 1, Redis at 0 forever).
    Now each failing row backs off and passes page past it: the good row is published
    within 1 + ceil(150/100) passes, the failures and skipped rows are counted (sweeper
    fields and /metrics), and the failing rows stay in the outbox for later retries."""
    store = PersonalityStore(database_url)
    bad = _commit_behind_failures(store)
    registry = CollectorRegistry()
    backend = _RefusingBackend(redis.Redis.from_url(redis_url), bad)
    cache = PersonalityCache(
        backend, namespace=namespace, stats_flush_interval=None, metrics=ProcessMetrics(registry)
    )
    tracker = PersonalityTracker(store, cache, outbox_interval=3600, outbox_grace=0.0)
    try:
        tracker.get_current_personality_state("someone-else")  # binds the store scope
        sweeper = tracker.outbox
        assert sweeper is not None
        started = time.perf_counter()
        passes = _passes_until_published(sweeper, lambda: _redis_version(cache, "good") == 1)
        took = time.perf_counter() - started
        print(f"\n[outbox, {FAILING} failing rows] good row after {passes} passes, {took:.3f} s")
        assert passes <= PASSES_BOUND
        assert sweeper.failures >= FAILING and sweeper.backing_off == FAILING
        sweeper.sweep(grace=0.0)  # every failing row is in backoff: passed over
        assert sweeper.skipped >= FAILING
        assert {user for user, _v in store.outbox_due(0.0, limit=1000)} == bad
        failures = registry.get_sample_value("penny_cache_outbox_failures_total")
        assert failures is not None and failures >= FAILING
        assert registry.get_sample_value("penny_cache_outbox_backoff_rows") == FAILING
        assert (registry.get_sample_value("penny_cache_outbox_skipped_total") or 0) >= FAILING
    finally:
        tracker.close()
        cache.close()
        store.close()


def test_rows_failing_every_time_do_not_block_a_later_row_async(
    redis_url: str, database_url: str, namespace: str
) -> None:
    """The asyncio face's sweeper (it publishes through the cache's sync backend) pages
    past the same 150 failing rows: the good row is published within the same bound."""
    store = PersonalityStore(database_url)
    bad = _commit_behind_failures(store)
    settings = Settings(redis_url=redis_url, namespace=namespace)
    refusing = _RefusingBackend(redis.Redis.from_url(redis_url), bad)
    cache = AsyncPersonalityCache(
        async_backend(settings), refusing, namespace=namespace, stats_flush_interval=None
    )
    tracker = AsyncPersonalityTracker(store, cache, outbox_interval=3600, outbox_grace=0.0)

    async def scenario() -> int:
        await tracker.get_current_personality_state("someone-else")  # binds the scope
        sweeper = tracker.outbox
        assert sweeper is not None

        async def published() -> bool:
            state = await cache.get("good")
            return state is not None and state.version == 1

        for passes in range(1, 10):
            await asyncio.to_thread(sweeper.sweep, 0.0)
            if await published():
                return passes
        raise AssertionError("the good row was never published")

    try:
        passes = asyncio.run(scenario())
        assert passes <= PASSES_BOUND
    finally:
        tracker.close()
        asyncio.run(cache.aclose())
        store.close()


def test_the_sweeper_thread_publishes_the_good_row_within_the_bound(
    redis_url: str, sqlite_url: str, namespace: str
) -> None:
    """End to end with the sweeper's own thread (interval 0.1 s, grace 0.2 s): the good
    row behind 150 failing rows reaches Redis within grace + (1 + ceil(150/100))
    intervals plus a margin for the passes themselves (measured, printed)."""
    interval, grace = 0.1, 0.2
    store = PersonalityStore(sqlite_url)
    bad = _commit_behind_failures(store)
    backend = _RefusingBackend(redis.Redis.from_url(redis_url), bad)
    cache = PersonalityCache(backend, namespace=namespace, stats_flush_interval=None)
    tracker = PersonalityTracker(store, cache, outbox_interval=interval, outbox_grace=grace)
    try:
        started = time.monotonic()
        tracker.get_current_personality_state("someone-else")  # binds; starts the sweeper
        deadline = started + 15.0
        while _redis_version(cache, "good") != 1:
            assert time.monotonic() < deadline, "the good row was not published in 15 s"
            time.sleep(0.01)
        took = time.monotonic() - started
        bound = grace + PASSES_BOUND * interval + 1.5  # margin: the passes' SQL on 2 cores
        print(f"\n[outbox thread] good row published after {took:.2f} s (bound {bound:.2f} s)")
        assert took < bound
    finally:
        tracker.close()
        cache.close()
        store.close()


def test_wrong_type_keys_do_not_block_a_later_row(
    redis_url: str, database_url: str, namespace: str
) -> None:
    """The finding as reported: 150 users whose state key is a LIST (whoever holds the
    service's Redis credential can do it) used to block every later outbox row. Whether
    or not such a key repairs itself, the good row behind them is published within the
    bound."""
    store = PersonalityStore(database_url)
    bad = _commit_behind_failures(store)
    client = redis.Redis.from_url(redis_url)
    cache = PersonalityCache(RedisBackend(client), namespace=namespace, stats_flush_interval=None)
    tracker = PersonalityTracker(store, cache, outbox_interval=3600, outbox_grace=0.0)
    try:
        tracker.get_current_personality_state("someone-else")  # binds the store scope
        for user in bad:
            client.rpush(cache.keys.state(user), "not", "an", "entry")
        sweeper = tracker.outbox
        assert sweeper is not None
        passes = _passes_until_published(sweeper, lambda: _redis_version(cache, "good") == 1)
        assert passes <= PASSES_BOUND
    finally:
        tracker.close()
        cache.close()
        store.close()


def _redis_version(cache: PersonalityCache, user: str) -> int | None:
    state = cache.get(user)
    return None if state is None else state.version
