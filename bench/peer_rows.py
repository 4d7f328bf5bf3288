"""The rows of ``bench_peers``: each read path, penny_cache's and its peers', on one user.

A row is a callable taking the key; network rows are timed one call per sample, in-process
rows as the mean of a batch (they take 0.05-2 us, below the clock's resolution per call).
Every peer is set up the way its documentation shows, on the same redis-server, holding
the same personality state, so the rows differ only in the library.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, cast

import cachebox
import cachetools
import redis
import redis.asyncio as aredis

from penny_cache import (
    AsyncPersonalityCache,
    PersonalityCache,
    PersonalityStore,
    PersonalityTracker,
)
from penny_cache.app.embedded import wait_until
from penny_cache.codec import decode_state
from penny_cache.state import PersonalityState

__all__ = ["AsyncRow", "Fixture", "Row", "async_rows", "fixture", "sync_rows"]

USER: Final = "bench-user"
NAMESPACE: Final = "bench-peers"


@dataclass(frozen=True)
class Row:
    name: str
    label: str
    call: Callable[[], object]
    batch: int  # calls per sample
    setup: Callable[[], object] | None = None  # untimed, before each sample (a miss)


@dataclass(frozen=True)
class AsyncRow:
    name: str
    label: str
    call: Callable[[], Awaitable[object]]
    batch: int


@dataclass
class Fixture:
    port: int
    store: PersonalityStore
    state: PersonalityState
    near: PersonalityCache  # near cache on, trusted
    far: PersonalityCache  # near cache off: the Redis tier
    tracker: PersonalityTracker
    raw: redis.Redis


class OriginalDictCache:
    """The original design, for reference: a per-process dict with a 5-minute TTL and
    hit/miss counts (what ``penny_cache`` replaced; see the origin report)."""

    def __init__(self, ttl: float = 300.0) -> None:
        self._ttl = ttl
        self._entries: dict[str, tuple[float, object]] = {}
        self.hits = self.misses = 0

    def set(self, key: str, value: object) -> None:
        self._entries[key] = (time.time(), value)

    def get(self, key: str) -> object | None:
        entry = self._entries.get(key)
        if entry is not None and time.time() - entry[0] < self._ttl:
            self.hits += 1
            return entry[1]
        self.misses += 1
        return None


@contextmanager
def fixture(port: int, workdir: Path) -> Iterator[Fixture]:
    """One user with committed updates, cached in Redis and in a trusted near cache."""
    url = f"redis://127.0.0.1:{port}/0"
    store = PersonalityStore(f"sqlite:///{workdir}/peers.db")
    near = PersonalityCache.from_url(url, namespace=NAMESPACE)
    far = PersonalityCache.from_url(url, namespace=NAMESPACE, near_cache=False)
    raw = redis.Redis(host="127.0.0.1", port=port)
    try:
        tracker = PersonalityTracker(store, near, outbox_interval=None)
        far_tracker = PersonalityTracker(store, far, outbox_interval=None)
        for value in (0.2, 0.4, 0.6):
            state = tracker.update_personality_dimension(USER, "communication_formality", value)
        far_tracker.get_current_personality_state(USER)  # binds the far cache's scope
        # a read starts the listener; trust follows its first PONG
        wait_until(lambda: near.get(USER) is not None and near.near_trusted, 10, "near hit")
        yield Fixture(port, store, state, near, far, tracker, raw)
    finally:
        raw.close()
        near.close()
        far.close()
        store.close()


def _floors(state: PersonalityState) -> list[Row]:
    box: cachebox.TTLCache[str, object] = cachebox.TTLCache(10_000, 600)
    tools: cachetools.TTLCache[str, object] = cachetools.TTLCache(10_000, 600)
    original = OriginalDictCache()
    box[USER] = tools[USER] = state
    original.set(USER, state)
    return [
        Row("cachebox", "cachebox.TTLCache.get (floor)", lambda: box.get(USER), 1000),
        Row("cachetools", "cachetools.TTLCache.get", lambda: tools.get(USER), 1000),
        Row("original", "original per-process dict + TTL", lambda: original.get(USER), 1000),
    ]


def _dogpile(fx: Fixture) -> tuple[Row, Row]:
    from dogpile.cache import make_region

    region = make_region().configure(
        "dogpile.cache.redis",
        expiration_time=300,
        arguments={
            "host": "127.0.0.1",
            "port": fx.port,
            "db": 0,
            "distributed_lock": True,
            "thread_local_lock": False,
        },
    )
    key = f"dogpile:{USER}"
    # A PersonalityState is immutable (read-only mappings): it does not pickle, so a
    # dogpile or cashews user caches its dict and rebuilds (validates) the state.
    region.set(key, fx.state.to_dict())

    def hit() -> object:
        return PersonalityState.from_dict(cast("dict[str, Any]", region.get(key)))

    def miss() -> object:
        return PersonalityState.from_dict(
            region.get_or_create(key, lambda: fx.store.load(USER).to_dict())
        )

    hit_row = Row("dogpile_hit", "dogpile.cache redis get", hit, 1)
    return hit_row, Row(
        "dogpile_miss", "dogpile.cache miss + SQL", miss, 1, lambda: region.delete(key)
    )


def sync_rows(fx: Fixture) -> list[Row]:
    """Every synchronous read path."""
    key = fx.far.keys.state(USER)
    raw_get = fx.raw.get
    far_tracker = PersonalityTracker(fx.store, fx.far, outbox_interval=None)
    dogpile_hit, dogpile_miss = _dogpile(fx)
    return [
        *_floors(fx.state),
        Row("near_hit", "penny_cache near hit (cache.get)", lambda: fx.near.get(USER), 1000),
        Row(
            "raw_get",
            "raw redis-py GET + decode (floor)",
            lambda: decode_state(cast("bytes", raw_get(key)), USER),
            1,
        ),
        Row("redis_hit", "penny_cache Redis hit (cache.get)", lambda: fx.far.get(USER), 1),
        dogpile_hit,
        Row("sql", "SQLAlchemy read (store.load)", lambda: fx.store.load(USER), 1),
        Row(
            "miss",
            "penny_cache miss + SQL (tracker)",
            lambda: far_tracker.get_current_personality_state(USER),
            1,
            lambda: fx.raw.delete(key),
        ),
        dogpile_miss,
    ]


def async_rows(fx: Fixture, loop_owner: list[Any]) -> list[AsyncRow]:
    """Every asyncio read path; clients are made inside the running loop."""
    url = f"redis://127.0.0.1:{fx.port}/0"
    key = fx.far.keys.state(USER)
    near = AsyncPersonalityCache.from_url(url, namespace=NAMESPACE)
    far = AsyncPersonalityCache.from_url(url, namespace=NAMESPACE, near_cache=False)
    for cache in (near, far):
        cache.bind_store(fx.store.identity)
    raw = aredis.Redis(host="127.0.0.1", port=fx.port)
    loop_owner.extend([near, far, raw])

    async def raw_get() -> object:
        return decode_state(await raw.get(key), USER)  # type: ignore[arg-type]

    return [
        AsyncRow("a_near_hit", "penny_cache async near hit", lambda: near.get(USER), 1000),
        AsyncRow("a_raw_get", "raw redis.asyncio GET + decode (floor)", raw_get, 1),
        AsyncRow("a_redis_hit", "penny_cache async Redis hit", lambda: far.get(USER), 1),
        *cashews_rows(fx),
    ]


def cashews_rows(fx: Fixture) -> list[AsyncRow]:
    from cashews import Cache

    rows = []
    for name, label, suffix in (
        ("cashews", "cashews redis get", ""),
        ("cashews_csc", "cashews redis + client-side cache", "?client_side=true"),
    ):
        cache = Cache()
        cache.setup(f"redis://127.0.0.1:{fx.port}/0{suffix}")
        rows.append(AsyncRow(name, label, _cashews_get(cache, fx.state), 1 if not suffix else 1000))
    return rows


def _cashews_get(cache: Any, state: PersonalityState) -> Callable[[], Awaitable[object]]:
    """cashews pickles what it is given: the state's dict, rebuilt into a state on read."""
    key = f"cashews:{USER}"
    primed: list[bool] = []

    async def get() -> object:
        if not primed:
            await cache.set(key, state.to_dict(), expire=300)
            primed.append(True)
        return PersonalityState.from_dict(await cache.get(key))

    return get


async def warm(rows: list[AsyncRow]) -> None:
    for row in rows:
        for _ in range(200):
            await row.call()
    await asyncio.sleep(0.2)  # client-side caches settle their tracking subscription
