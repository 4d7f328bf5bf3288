"""NearCache: bounded, expiring by an injected clock, and refusing what invalidations forbid."""

from __future__ import annotations

from datetime import UTC, datetime

from penny_cache.policy.near import NearCache
from penny_cache.state import PersonalityState, apply_update, default_state
from tests.conftest import FakeClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def state_of(user: str, version: int) -> PersonalityState:
    state = default_state(user, T0)
    for _ in range(version):
        state = apply_update(state, "communication_formality", 0.6, 0.0, T0)
    return state


def test_entries_expire_by_the_injected_clock(clock: FakeClock) -> None:
    """An entry is served until its TTL passes on the injected clock, never after."""
    near = NearCache(10, ttl=5, monotonic=clock)
    near.put(state_of("a", 1), near.ticket())
    assert near.get("a", clock()) is not None
    clock.advance(4.9)
    assert near.get("a", clock()) is not None
    clock.advance(0.2)
    assert near.get("a", clock()) is None


def test_size_is_bounded() -> None:
    """The near cache never holds more than maxsize entries (LRU eviction)."""
    near = NearCache(3, ttl=60)
    for n in range(10):
        near.put(state_of(f"u{n}", 0), near.ticket())
    assert len(near) == 3


def test_invalidation_drops_older_and_refuses_their_late_fill(clock: FakeClock) -> None:
    """After an invalidation of version v, an entry below v is gone and cannot come back,
    even from a reader whose ticket predates the invalidation."""
    near = NearCache(10, ttl=60, monotonic=clock)
    ticket = near.ticket()
    near.put(state_of("a", 1), ticket)
    near.invalidate("a", 2)
    assert near.get("a", clock()) is None
    assert not near.put(state_of("a", 1), ticket)
    assert near.put(state_of("a", 2), ticket)


def test_own_newer_version_survives_its_own_message(clock: FakeClock) -> None:
    """The writer's message for v does not drop the v it already put (read-your-writes)."""
    near = NearCache(10, ttl=60, monotonic=clock)
    near.invalidate("a", 3)
    near.put(state_of("a", 3), near.ticket())
    near.invalidate("a", 3)
    cached = near.get("a", clock())
    assert cached is not None and cached.version == 3


def test_unversioned_invalidation_refuses_fills_from_before_it(clock: FakeClock) -> None:
    """invalidate(user, None) drops the entry; a fill read before it is refused, one read
    after it is accepted."""
    near = NearCache(10, ttl=60, monotonic=clock)
    before = near.ticket()
    near.invalidate("a", None)
    assert not near.put(state_of("a", 5), before)
    assert near.put(state_of("a", 5), near.ticket())


def test_flush_refuses_every_older_ticket(clock: FakeClock) -> None:
    """A flush empties the cache and no fill begun before it gets in."""
    near = NearCache(10, ttl=60, monotonic=clock)
    before = near.ticket()
    near.put(state_of("a", 1), before)
    near.flush()
    assert len(near) == 0
    assert not near.put(state_of("b", 1), before)
    assert near.flushes == 1


def test_older_version_never_replaces_newer(clock: FakeClock) -> None:
    """Two fills racing: whichever lands last, the newer version stays."""
    near = NearCache(10, ttl=60, monotonic=clock)
    ticket = near.ticket()
    near.put(state_of("a", 4), ticket)
    assert not near.put(state_of("a", 2), ticket)
    cached = near.get("a", clock())
    assert cached is not None and cached.version == 4


def test_floor_table_is_bounded_by_a_flush() -> None:
    """Floors cannot grow without bound: past the limit the cache flushes and starts over."""
    near = NearCache(1, ttl=60)
    for n in range(2000):
        near.invalidate(f"u{n}", 1)
    assert near.flushes >= 1
    assert len(near._floors) <= 1024
