"""After a lost proof, a process answers reads from SQL, not from Redis or its near
cache, until what was acknowledged meanwhile has reached Redis (``policy.recovery``)."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest

from penny_cache.cache import PersonalityCache
from penny_cache.errors import CacheUnavailableError
from penny_cache.policy.near import NearCache
from penny_cache.policy.ops import CacheOp
from penny_cache.redis.backend import RedisBackend
from penny_cache.redis.breaker import CircuitBreaker
from penny_cache.redis.listener import InvalidationListener
from penny_cache.store.database import PersonalityStore
from penny_cache.tracker import PersonalityTracker
from tests.conftest import FakeClock
from tests.unit.test_cache_near import FakeListener

DIM = "communication_formality"


class _Wire:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def ping(self, token: str) -> None:
        self.sent.append(token)


def _pong(listener: InvalidationListener, clock: FakeClock) -> None:
    wire = _Wire()
    listener._send_ping(wire, clock())  # type: ignore[arg-type]
    listener._handle({"type": "pong", "data": wire.sent[-1].encode()})


def test_a_pong_after_a_lapse_restores_trust_only_once_recovered(clock: FakeClock) -> None:
    """The first proof needs no recovery (a process starting up lost nothing). A PONG
    that ends a lapse is refused until ``recover`` succeeds: used to restore trust at
    once, while updates acknowledged during the pause had not reached Redis."""
    outcomes = [False, True]
    calls: list[bool] = []

    def recover() -> bool:
        calls.append(outcomes[len(calls)])
        return calls[-1]

    listener = InvalidationListener(
        lambda: None,  # type: ignore[arg-type, return-value]
        "ch",
        NearCache(10, 60, monotonic=clock),
        max_staleness=0.5,
        monotonic=clock,
        recover=recover,
    )
    _pong(listener, clock)
    assert listener.proven and listener.trusted_until == pytest.approx(clock() + 0.5)
    assert calls == []
    clock.advance(1.5)  # Redis paused for longer than the bound: the proof lapsed
    _pong(listener, clock)
    assert calls == [False] and listener.trusted_until < clock()
    _pong(listener, clock)
    assert calls == [False, True] and listener.trusted_until > clock()


class _Switch(RedisBackend):
    """A fakeredis backend that can be made unreachable (its breaker opens)."""

    down = False

    def run(self, op: CacheOp) -> Any:
        if self.down:
            self._breaker.failure()
            raise CacheUnavailableError("down")
        return super().run(op)

    def probe(self, *, force: bool = False) -> bool:
        if self.down:
            return False
        self._breaker.success()
        return True


@pytest.fixture
def switch(fake_redis: fakeredis.FakeRedis, clock: FakeClock) -> _Switch:
    return _Switch(fake_redis, breaker=CircuitBreaker(1, 1.0, clock), monotonic=clock)


def test_after_the_breaker_opened_sql_answers_until_the_outbox_is_published(
    switch: _Switch, clock: FakeClock, sqlite_url: str, namespace: str
) -> None:
    """A reader whose breaker opened (Redis unreachable) reads SQL, not Redis, once Redis
    is back, until its recovery published the outbox: Redis held v1 while v2 was
    committed by a writer whose write-through never arrived."""
    listener = FakeListener()
    cache = PersonalityCache(
        switch,
        namespace=namespace,
        stats_flush_interval=None,
        near=NearCache(100, 10, monotonic=clock),
        listener=lambda *_hooks: listener,
        monotonic=clock,
    )
    store = PersonalityStore(sqlite_url)
    reader = PersonalityTracker(store, cache, outbox_interval=3600, outbox_grace=3600)
    reader.update_personality_dimension("ann", DIM, 0.6)  # v1 in Redis
    switch.down = True
    store.update_dimension("ann", DIM, 0.7)  # v2 committed; its write-through is lost
    assert reader.get_current_personality_state("ann").version == 2  # SQL: Redis is down
    assert not cache.redis_trusted()
    switch.down = False  # Redis is back, still holding v1
    assert reader.get_current_personality_state("ann").version == 2
    assert cache.get("ann") is None  # Redis is not trusted yet: a miss
    assert cache.recover()  # the outbox sweep publishes v2
    assert cache.redis_trusted()
    cached = cache.get("ann")
    assert cached is not None and cached.version == 2
    reader.close()


def test_a_recovery_that_cannot_publish_keeps_redis_untrusted(
    switch: _Switch, namespace: str, clock: FakeClock
) -> None:
    """Recovery fails while Redis is still unreachable; the process keeps reading SQL."""
    cache = PersonalityCache(switch, namespace=namespace, stats_flush_interval=None)
    switch.down = True
    assert cache.get("bob") is None
    assert not cache.redis_trusted()
    assert not cache.recover()
    switch.down = False
    assert cache.recover() and cache.redis_trusted()
